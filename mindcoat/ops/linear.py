"""Fully connected layer ``y = x W^T + b`` over the last axis.

MindSpore's Dense is a MatMul followed by a separate BiasAdd pass over the whole output; on the
CPU those passes were ~10% of a CoaT forward, and the bias gradient (BiasAddGrad) ~10% of a
training step. On the CPU, float32 therefore goes through ``csrc/linear.cc`` (the oneDNN matmul
MindSpore itself uses, with the bias fused in); its backward is MindSpore's MatMul for x and W and
a deterministic column sum (``csrc/transformer.cc``) for the bias. Elsewhere, or with
``MINDCOAT_NATIVE=1`` / ``MINDCOAT_NATIVE_LINEAR=1``, exactly what ``nn.Dense`` computes.
"""
import mindspore as ms
from mindspore import nn, ops

from .build import build
from .dispatch import AtParseTime, fast_path


def linear_native(x, weight, bias):
    """nn.Dense's computation: (..., K) x (N, K)^T + (N,) -> (..., N)."""
    shape = x.shape
    y = ops.BiasAdd()(ops.MatMul(transpose_b=True)(x.reshape(-1, shape[-1]), weight), bias)
    return y.reshape(shape[:-1] + (weight.shape[0],))


def _out_shape(x, w, b):
    return list(x[:-1]) + [w[0]]


def _bias_shape(dy):
    return [dy[-1]]


def _dtype(first, *_):
    return first


class _LinearKernel(nn.Cell):
    """The compiled forward; its gradients as a Cell ``bprop`` (see depthwise._DwKernel)."""

    def __init__(self, lib, sum_lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':LinearFwd', _out_shape, _dtype, func_type='aot')
        self.matmul = ops.MatMul()
        self.matmul_ta = ops.MatMul(transpose_a=True)
        self.grad_b = ops.Custom(sum_lib + ':ColSum', _bias_shape, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        dy = dout.reshape(-1, dout.shape[-1])
        dx = self.matmul(dy, weight).reshape(x.shape)
        dw = self.matmul_ta(dy, x.reshape(-1, x.shape[-1]))
        return dx, dw, self.grad_b(dout)


def _kernel(_):
    lib = fast_path('linear layers', 'MINDCOAT_NATIVE_LINEAR', 'linear.cc')
    sum_lib = build('transformer.cc') if lib else None
    if not sum_lib:
        return None
    if lib not in _KERNELS:
        _KERNELS[lib] = _LinearKernel(lib, sum_lib)
    return _KERNELS[lib]


class _Dispatch(nn.Cell):
    """linear(x, weight, bias) -> x weight^T + bias."""

    kernel = AtParseTime(_kernel)  # None: native path

    def construct(self, x, weight, bias):
        if self.kernel is not None and x.dtype == ms.float32 and weight.dtype == ms.float32:
            return self.kernel(x, weight, bias)
        return linear_native(x, weight, bias)


_KERNELS = {}
linear = _Dispatch()
