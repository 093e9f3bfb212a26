"""Fully connected layer ``y = x W^T + b`` over the last axis, optionally followed by a residual
add (``r + x W^T + b``) or by exact GELU.

MindSpore's Dense is a MatMul followed by a separate BiasAdd pass over the whole output; on the
CPU those passes were ~10% of a CoaT forward, and the bias gradient (BiasAddGrad) ~10% of a
training step. On the CPU, float32 therefore goes through ``csrc/linear.cc``: the oneDNN matmul
MindSpore itself uses, with the bias, and the residual add or GELU, applied to each output tile
while it is in cache. The backward is MindSpore's MatMul for x and W and a deterministic column
sum (``csrc/transformer.cc``) for the bias. Elsewhere, or with ``MINDCOAT_NATIVE=1`` /
``MINDCOAT_NATIVE_LINEAR=1``, MatMul + BiasAdd as in ``nn.Dense`` (+ the add / ``Gelu``).
"""
import mindspore as ms
from mindspore import nn, ops

from .build import build
from .dispatch import AtParseTime, kernel_cells
from .gelu import Gelu

_MATMUL = ops.MatMul()
_MATMUL_TA = ops.MatMul(transpose_a=True)


def linear_native(x, weight, bias):
    """nn.Dense's computation: (..., K) x (N, K)^T + (N,) -> (..., N)."""
    shape = x.shape
    y = ops.BiasAdd()(ops.MatMul(transpose_b=True)(x.reshape(-1, shape[-1]), weight), bias)
    return y.reshape(shape[:-1] + (weight.shape[0],))


def _out_shape(x, w, *_):
    return list(x[:-1]) + [w[0]]


def _bias_shape(dy):
    return [dy[-1]]


def _dtype(first, *_):
    return first


def _last(*shapes):
    return shapes[-1]


def _grads(x, weight, dout, col_sum):
    """d x, d W, d b of x W^T + b for the cotangent ``dout``."""
    dy = dout.reshape(-1, dout.shape[-1])
    dx = _MATMUL(dy, weight).reshape(x.shape)
    return dx, _MATMUL_TA(dy, x.reshape(-1, x.shape[-1])), col_sum(dout)


class _LinearKernel(nn.Cell):
    """The compiled forward; its gradients as a Cell ``bprop`` (see depthwise._DwKernel)."""

    def __init__(self, lib, sum_lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':LinearFwd', _out_shape, _dtype, func_type='aot')
        self.col_sum = ops.Custom(sum_lib + ':ColSum', _bias_shape, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        return _grads(x, weight, dout, self.col_sum)


class _LinearResidualKernel(_LinearKernel):
    def __init__(self, lib, sum_lib):
        super().__init__(lib, sum_lib)
        self.forward_res = ops.Custom(lib + ':LinearResFwd', _last, _dtype, func_type='aot')

    def construct(self, x, weight, bias, residual):
        return self.forward_res(x, weight, bias, residual)

    def bprop(self, x, weight, bias, residual, out, dout):
        return _grads(x, weight, dout, self.col_sum) + (dout,)


class _LinearGeluKernel(_LinearKernel):
    """GELU fused into the GEMM. Meant for inference; its backward recomputes the pre-activation
    (one more GEMM), so the training graphs use the unfused pair instead."""

    def __init__(self, lib, sum_lib):
        super().__init__(lib, sum_lib)
        self.forward_gelu = ops.Custom(lib + ':LinearGeluFwd', _out_shape, _dtype,
                                       func_type='aot')
        self.gelu_grad = ops.Custom(sum_lib + ':GeluBwd', _dtype, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward_gelu(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        dh = self.gelu_grad(self.forward(x, weight, bias), dout)
        return _grads(x, weight, dh, self.col_sum)


def _kernels():
    """{'plain', 'residual', 'gelu'} kernels when the CPU fast path applies, else None."""
    return kernel_cells('linear layers', 'MINDCOAT_NATIVE_LINEAR', 'linear.cc', _make_kernels)


def _make_kernels(lib):
    sum_lib = build('transformer.cc')  # the bias gradient's column sum; None: native path
    if not sum_lib:
        return None
    return {'plain': _LinearKernel(lib, sum_lib), 'residual': _LinearResidualKernel(lib, sum_lib),
            'gelu': _LinearGeluKernel(lib, sum_lib)}


def _f32(*tensors):
    ok = True
    for t in tensors:
        ok = ok and t.dtype == ms.float32
    return ok


class _Dispatch(nn.Cell):
    """linear(x, weight, bias) -> x weight^T + bias."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('plain'))  # None: native path

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight):
            return self.kernel(x, weight, bias)
        return linear_native(x, weight, bias)


class _ResidualDispatch(nn.Cell):
    """linear_residual(x, weight, bias, residual) -> residual + x weight^T + bias."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('residual'))

    def construct(self, x, weight, bias, residual):
        if self.kernel is not None and _f32(x, weight, residual):
            return self.kernel(x, weight, bias, residual)
        return residual + linear(x, weight, bias)


class _GeluDispatch(nn.Cell):
    """linear_gelu(x, weight, bias) -> GELU(x weight^T + bias), exact GELU."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('gelu'))

    def __init__(self):
        super().__init__()
        self.gelu = Gelu()

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight):
            return self.kernel(x, weight, bias)
        return self.gelu(linear(x, weight, bias))


linear = _Dispatch()
linear_residual = _ResidualDispatch()
linear_gelu = _GeluDispatch()
