"""Fully connected layer ``y = x W^T + b`` over the last axis, optionally followed by a residual
add (``r + x W^T + b``) or by exact GELU; and a transformer MLP, fc2(GELU(fc1(x))), for training.

MindSpore's Dense is a MatMul followed by a separate BiasAdd pass over the whole output; on the
CPU those passes, and the bias gradient (BiasAddGrad), are a noticeable share of a CoaT forward
and training step. On the CPU, float32 therefore goes through ``csrc/linear.cc``: the oneDNN matmul
MindSpore itself uses, with the bias, and the residual add or GELU, applied to each output tile
while it is in cache. The backward runs the same library's matmul on strided views of the stored
tensors (no transposed copies, faster than MindSpore's MatMul on CoaT's shapes) for x and
W, and a deterministic column sum (``csrc/transformer.cc``) for the bias. Elsewhere, or with
``MINDCOAT_NATIVE=1`` / ``MINDCOAT_NATIVE_LINEAR=1``, MatMul + BiasAdd as in ``nn.Dense`` (+ the
add / ``Gelu``).
"""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import EXPORT_FORM, AtParseTime, all_f32, check, kernel_cells, known
from .gelu import Gelu


def linear_native(x, weight, bias):
    """nn.Dense's computation: (..., K) x (N, K)^T + (N,) -> (..., N)."""
    if weight.dtype != x.dtype:  # amp O2/O3: this shared cell is outside amp's parameter casts
        weight, bias = weight.astype(x.dtype), bias.astype(x.dtype)
    shape = x.shape
    y = ops.BiasAdd()(ops.MatMul(transpose_b=True)(x.reshape(-1, shape[-1]), weight), bias)
    return y.reshape(shape[:-1] + (weight.shape[0],))


def linear_export(x, weight, bias):
    """``linear_native`` with the leading axis of the result left open: a Reshape to the traced
    batch size would fix the batch of an exported file."""
    shape = x.shape
    y = ops.BiasAdd()(ops.MatMul(transpose_b=True)(x.reshape(-1, shape[-1]), weight), bias)
    return y.reshape((-1,) + shape[1:-1] + (weight.shape[0],))


def _out_shape(x, w, b):
    """LinearFwd / LinearGeluFwd (x (..., K), w (N, K), b (N,)) -> (..., N)."""
    check(len(x) >= 1 and len(w) == 2 and len(b) == 1,
          f'linear takes x (..., K), weight (N, K), bias (N,); got {tuple(x)}, {tuple(w)}, '
          f'{tuple(b)}')
    if known(x[-1], *w, *b):
        check(x[-1] == w[1] and b[0] == w[0], f'linear: x {tuple(x)}, weight {tuple(w)}, bias '
              f'{tuple(b)} do not fit')
    return list(x[:-1]) + [w[0]]


def _residual_shape(x, w, b, r):
    """LinearResFwd (x, w, b, r) -> r, which must have the output's shape."""
    out = _out_shape(x, w, b)
    if known(*out, *r):
        check(list(r) == out, f'a residual of shape {tuple(r)} for an output {tuple(out)}')
    return r


def _bias_shape(dy):
    check(len(dy) >= 1, 'the bias gradient needs a channel axis')
    return [dy[-1]]


def _grad_x_shape(dy, w):
    """LinearGradX (dy (..., N), w (N, K)) -> dx (..., K)."""
    check(len(dy) >= 1 and len(w) == 2, 'the input gradient takes dy (..., N) and weight (N, K)')
    if known(dy[-1], w[0]):
        check(dy[-1] == w[0], f'a gradient {tuple(dy)} for a weight {tuple(w)}')
    return list(dy[:-1]) + [w[1]]


def _grad_w_shape(dy, x):
    """LinearGradW (dy (..., N), x (..., K)) -> dW (N, K)."""
    check(len(dy) >= 1 and len(dy) == len(x), 'the weight gradient takes dy (..., N) and x '
          '(..., K) with the same leading axes')
    if known(*dy[:-1], *x[:-1]):
        check(list(dy[:-1]) == list(x[:-1]), f'a gradient {tuple(dy)} for an input {tuple(x)}')
    return [dy[-1], x[-1]]


def _grad_x_mul_shape(dy, w, m):
    """LinearGradXMul (dy (..., N), w (N, K), m (..., K)) -> dx (..., K), shaped like m."""
    out = _grad_x_shape(dy, w)
    if known(*out, *m):
        check(list(m) == out, f'a multiplier of shape {tuple(m)} for a gradient {tuple(out)}')
    return m


def _pair(x):
    """GeluFwdGrad (x) -> (GELU(x), its slope), both shaped like x."""
    return x, x


def _dtype_pair(x):
    return _dtype(x), x


def _same_shape(x, dy):
    check(list(x) == list(dy), 'the gradient must be shaped like the input')
    return x


def _dtype(first, *others):
    check(all_f32(first, *others), 'the linear kernel takes float32')
    return first


class _LinearKernel(nn.Cell):
    """The compiled forward; its gradients as a Cell ``bprop`` (see depthwise._DwKernel)."""

    def __init__(self, lib, sum_lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':LinearFwd', _out_shape, _dtype, func_type='aot')
        self.grad_x = ops.Custom(lib + ':LinearGradX', _grad_x_shape, _dtype, func_type='aot')
        self.grad_w = ops.Custom(lib + ':LinearGradW', _grad_w_shape, _dtype, func_type='aot')
        self.col_sum = ops.Custom(sum_lib + ':ColSum', _bias_shape, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward(x, weight, bias)

    def grads(self, x, weight, dout):
        """d x, d W, d b of x W^T + b for the cotangent ``dout``."""
        return self.grad_x(dout, weight), self.grad_w(dout, x), self.col_sum(dout)

    def bprop(self, x, weight, bias, out, dout):
        return self.grads(x, weight, dout)


class _LinearResidualKernel(_LinearKernel):
    def __init__(self, lib, sum_lib):
        super().__init__(lib, sum_lib)
        self.forward_res = ops.Custom(lib + ':LinearResFwd', _residual_shape, _dtype,
                                      func_type='aot')

    def construct(self, x, weight, bias, residual):
        return self.forward_res(x, weight, bias, residual)

    def bprop(self, x, weight, bias, residual, out, dout):
        return self.grads(x, weight, dout) + (dout,)


class _LinearGeluKernel(_LinearKernel):
    """GELU fused into the GEMM. Meant for inference; its backward recomputes the pre-activation
    (one more GEMM), so the training graphs use the unfused pair instead."""

    def __init__(self, lib, sum_lib):
        super().__init__(lib, sum_lib)
        self.forward_gelu = ops.Custom(lib + ':LinearGeluFwd', _out_shape, _dtype,
                                       func_type='aot')
        self.gelu_grad = ops.Custom(sum_lib + ':GeluBwd', _same_shape, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward_gelu(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        dh = self.gelu_grad(self.forward(x, weight, bias), dout)
        return self.grads(x, weight, dh)


class _MlpKernel(nn.Cell):
    """fc2(GELU(fc1(x))) for training. Besides the output, the forward returns GELU's output and
    its slope at fc1's output: the backward needs those two, not fc1's output, and multiplies
    by the slope inside the product for fc2's input gradient (LinearGradXMul) instead of a
    separate GELU backward pass over the hidden layer."""

    def __init__(self, lib, sum_lib, fc1, fc2):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2
        self.gelu = ops.Custom(sum_lib + ':GeluFwdGrad', _pair, _dtype_pair, func_type='aot')
        self.grad_x_mul = ops.Custom(lib + ':LinearGradXMul', _grad_x_mul_shape, _dtype,
                                     func_type='aot')

    def construct(self, x, w1, b1, w2, b2):
        hidden, slope = self.gelu(self.fc1.forward(x, w1, b1))
        return self.fc2.forward(hidden, w2, b2), hidden, slope

    def grads(self, x, w1, w2, out, dout):
        """d x, d w1, d b1, d w2, d b2 for the cotangent of the output, dout[0]."""
        _, hidden, slope = out
        dh = self.grad_x_mul(dout[0], w2, slope)
        return self.fc1.grads(x, w1, dh) + (self.fc2.grad_w(dout[0], hidden),
                                            self.fc2.col_sum(dout[0]))

    def bprop(self, x, w1, b1, w2, b2, out, dout):
        return self.grads(x, w1, w2, out, dout)


class _MlpResidualKernel(_MlpKernel):
    """residual + fc2(GELU(fc1(x))), the add inside fc2's product."""

    def construct(self, x, w1, b1, w2, b2, residual):
        hidden, slope = self.gelu(self.fc1.forward(x, w1, b1))
        return self.fc2.forward_res(hidden, w2, b2, residual), hidden, slope

    def bprop(self, x, w1, b1, w2, b2, residual, out, dout):
        return self.grads(x, w1, w2, out, dout) + (dout[0],)


def _kernels():
    """{'plain', 'residual', 'gelu', 'mlp', 'mlp_residual'} kernels when the CPU fast path
    applies, else None."""
    return kernel_cells('linear', _make_kernels)


def _make_kernels(lib, sum_lib):
    """``sum_lib``: transformer.cc, for the bias gradient's column sum and GELU."""
    plain, residual = _LinearKernel(lib, sum_lib), _LinearResidualKernel(lib, sum_lib)
    return {'plain': plain, 'residual': residual, 'gelu': _LinearGeluKernel(lib, sum_lib),
            'mlp': _MlpKernel(lib, sum_lib, plain, residual),
            'mlp_residual': _MlpResidualKernel(lib, sum_lib, plain, residual)}


def _f32(*tensors):
    ok = True
    for t in tensors:
        ok = ok and t.dtype == ms.float32
    return ok


class _Dispatch(nn.Cell):
    """linear(x, weight, bias) -> x weight^T + bias."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('plain'))  # None: native path
    export_form = EXPORT_FORM

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight, bias):
            return self.kernel(x, weight, bias)
        if self.export_form:
            return linear_export(x, weight, bias)
        return linear_native(x, weight, bias)


class _ResidualDispatch(nn.Cell):
    """linear_residual(x, weight, bias, residual) -> residual + x weight^T + bias."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('residual'))

    def construct(self, x, weight, bias, residual):
        # the kernel adds a residual shaped like the output (no broadcasting)
        if self.kernel is not None and _f32(x, weight, bias, residual) \
                and residual.shape == x.shape[:-1] + (weight.shape[0],):
            return self.kernel(x, weight, bias, residual)
        return residual + linear(x, weight, bias)


class _GeluDispatch(nn.Cell):
    """linear_gelu(x, weight, bias) -> GELU(x weight^T + bias), exact GELU."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('gelu'))

    def __init__(self):
        super().__init__()
        self.gelu = Gelu()

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight, bias):
            return self.kernel(x, weight, bias)
        return self.gelu(linear(x, weight, bias))


def _mlp_kernel(dispatch, name):
    """The fused MLP when the fast paths of both the linear layers and GELU apply, else None
    (``MINDCOAT_NATIVE_GELU=1`` gives native GELU between the two layers)."""
    return None if dispatch.gelu.kernel is None else (_kernels() or {}).get(name)


class _MlpDispatch(nn.Cell):
    """mlp(x, w1, b1, w2, b2[, residual]) -> [residual +] fc2(GELU(fc1(x))), exact GELU; for
    training graphs (inference: linear_gelu, then linear or linear_residual)."""

    kernel = AtParseTime(lambda self: _mlp_kernel(self, 'mlp'))
    kernel_residual = AtParseTime(lambda self: _mlp_kernel(self, 'mlp_residual'))

    def __init__(self):
        super().__init__()
        self.gelu = Gelu()

    def construct(self, x, w1, b1, w2, b2, residual=None):
        if self.kernel is not None and _f32(x, w1, b1, w2, b2):
            if residual is None:
                return self.kernel(x, w1, b1, w2, b2)[0]
            if _f32(residual) and residual.shape == x.shape[:-1] + (w2.shape[0],):
                return self.kernel_residual(x, w1, b1, w2, b2, residual)[0]
        hidden = self.gelu(linear(x, w1, b1))
        if residual is None:
            return linear(hidden, w2, b2)
        return linear_residual(hidden, w2, b2, residual)


linear = _Dispatch()
linear_residual = _ResidualDispatch()
linear_gelu = _GeluDispatch()
mlp = _MlpDispatch()
