"""Exact (erf) GELU. On the CPU, float32 goes through a vectorised kernel
(``csrc/transformer.cc``): the backend's scalar erf made GELU the largest cost of CoaT's MLPs.
Elsewhere ``nn.GELU``."""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import AtParseTime, all_f32, check, kernel_cells


def _same(x, *others):
    """GeluFwd (x) and GeluBwd (x, dy): shaped like x (the gradient too)."""
    check(all(list(o) == list(x) for o in others), 'the gradient must be shaped like the input')
    return x


def _f32(*dtypes):
    check(all_f32(*dtypes), 'the GELU kernel takes float32')
    return dtypes[0]


class _GeluKernel(nn.Cell):
    """The compiled forward; its gradient as a Cell ``bprop`` (see depthwise._DwKernel)."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':GeluFwd', _same, _f32, func_type='aot')
        self.grad = ops.Custom(lib + ':GeluBwd', _same, _f32, func_type='aot')

    def construct(self, x):
        return self.forward(x)

    def bprop(self, x, out, dout):
        return (self.grad(x, dout),)


class Gelu(nn.Cell):
    """Drop-in for ``nn.GELU(approximate=False)``; no parameters."""

    def __init__(self):
        super().__init__()
        self.native = nn.GELU(approximate=False)

    kernel = AtParseTime(lambda self: kernel_cells('gelu', _GeluKernel))  # None: native path

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x)
        return self.native(x)

