"""LayerNorm over the last axis. On the CPU, float32 goes through a compiled kernel
(``csrc/transformer.cc``; MindSpore 2.10's CPU LayerNorm took ~4x longer and CoaT has one per
half-block); elsewhere MindSpore's ``ops.LayerNorm``."""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import AtParseTime, all_f32, check, kernel_cells


def _check(x, gamma, beta, eps):
    check(len(x) >= 1 and list(gamma) == [x[-1]] and list(beta) == [x[-1]] and list(eps) == [1],
          f'LayerNorm of {tuple(x)} with gamma {tuple(gamma)}, beta {tuple(beta)}')


def _f32(*dtypes):
    check(all_f32(*dtypes), 'the LayerNorm kernel takes float32')
    return dtypes[0]


def _shape(x, gamma, beta, eps):
    _check(x, gamma, beta, eps)
    return x


def _grad_shape(x, dy, gamma, eps):
    _check(x, gamma, gamma, eps)
    check(list(dy) == list(x), 'the gradient must be shaped like the input')
    return x, (2 * gamma[0],)


def _grad_dtype(*dtypes):
    return _f32(*dtypes), dtypes[0]


class _LayerNormKernel(nn.Cell):
    """The compiled forward; gradients (x, gamma, beta) as a Cell ``bprop``."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':LayerNormFwd', _shape, _f32, func_type='aot')
        self.grad = ops.Custom(lib + ':LayerNormBwd', _grad_shape, _grad_dtype, func_type='aot')

    def construct(self, x, gamma, beta, eps):
        return self.forward(x, gamma, beta, eps)

    def bprop(self, x, gamma, beta, eps, out, dout):
        dx, dgb = self.grad(x, dout, gamma, eps)
        c = gamma.shape[0]
        return dx, dgb[:c], dgb[c:], ops.zeros_like(eps)


def _kernel(_):
    return kernel_cells('layernorm', _LayerNormKernel)


class LayerNormOp(nn.Cell):
    """``LayerNormOp(eps)(x, gamma, beta)`` == ``ops.LayerNorm(-1, -1, eps)(x, gamma, beta)[0]``.
    Holds no parameters."""

    def __init__(self, eps):
        super().__init__()
        self.eps = float(eps)
        self.native = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    kernel = AtParseTime(_kernel)  # None: native path

    def construct(self, x, gamma, beta):
        if self.kernel is not None and x.dtype == ms.float32 and gamma.dtype == ms.float32 \
                and beta.dtype == ms.float32:
            return self.kernel(x, gamma, beta, ops.full((1,), self.eps, dtype=ms.float32))
        return self.native(x, gamma, beta)[0]
