"""Stochastic depth: a residual branch scaled per sample (``keep``: (B, 1, 1), each 0 or
1 / (1 - p)), and its residual add ``x + keep[b] * branch``.

MindSpore's broadcasting Mul needs the factor broadcast to the branch's shape first (see
``scale_samples``), so the add took a broadcast, a multiply and an add: ~7 activation-sized
passes, ~3% of a CoaT training step with the recipe's drop path. On the CPU, float32 takes
one pass forward and one backward (``csrc/transformer.cc``: ScaledAdd, RowScale). It is part
of the linear layers' fast path (``MINDCOAT_NATIVE_LINEAR=1`` turns it off too): every such
branch ends in a linear layer.
"""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import AtParseTime, all_f32, check, kernel_cells, known


class _ScaleSamples(nn.Cell):
    """x (B, ...) times a per-sample factor (B, 1, ...), with a backward that keeps only the
    factor. The factor is broadcast to x's shape before the multiply: in MindSpore 2.10's CPU
    training graphs a broadcasting Mul held ~8 activation-sized buffers per use (+1.4 GB for
    coat_lite_small with drop path). The factor is a constant of the backward."""

    def construct(self, x, factor):
        return x * ops.broadcast_to(factor, x.shape)

    def bprop(self, x, factor, out, dout):
        return dout * ops.broadcast_to(factor, x.shape), ops.zeros_like(factor)


scale_samples = _ScaleSamples()


def scaled_add_native(x, branch, keep):
    return x + scale_samples(branch, keep)


def _keep_fits(x, keep):
    check(len(keep) >= 1 and len(x) >= 1, 'stochastic depth takes x (B, ...) and keep (B, 1, ...)')
    if known(x[0], *keep):
        check(keep[0] == x[0] and all(d == 1 for d in keep[1:]),
              f'a per-sample factor {tuple(keep)} for a branch {tuple(x)}')


def _add_shape(x, branch, keep):
    """ScaledAdd (x, branch, keep) -> x's shape."""
    if known(*x, *branch):
        check(list(x) == list(branch), f'a branch {tuple(branch)} added to {tuple(x)}')
    _keep_fits(x, keep)
    return x


def _scale_shape(dy, keep):
    """RowScale (dy, keep) -> dy's shape."""
    _keep_fits(dy, keep)
    return dy


def _dtype(first, *others):
    check(all_f32(first, *others), 'the stochastic depth kernel takes float32')
    return first


class _ScaledAddKernel(nn.Cell):
    """The compiled forward; its gradient as a Cell ``bprop`` (dx = dout, no kernel). Built on
    the linear layers' libraries, of which it needs transformer.cc's only."""

    def __init__(self, _linear_lib, transformer_lib):
        super().__init__()
        self.forward = ops.Custom(transformer_lib + ':ScaledAdd', _add_shape, _dtype,
                                  func_type='aot')
        self.scale = ops.Custom(transformer_lib + ':RowScale', _scale_shape, _dtype,
                                func_type='aot')

    def construct(self, x, branch, keep):
        return self.forward(x, branch, keep)

    def bprop(self, x, branch, keep, out, dout):
        return dout, self.scale(dout, keep), ops.zeros_like(keep)


class _ScaledAdd(nn.Cell):
    """scaled_add(x, branch, keep) -> x + keep[b] * branch."""

    kernel = AtParseTime(lambda self: kernel_cells('linear', _ScaledAddKernel))

    def construct(self, x, branch, keep):
        if self.kernel is not None and x.dtype == ms.float32 and branch.dtype == ms.float32 \
                and keep.dtype == ms.float32 and x.shape == branch.shape:
            return self.kernel(x, branch, keep)
        return scaled_add_native(x, branch, keep)


scaled_add = _ScaledAdd()
