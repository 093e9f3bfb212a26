"""CoaT's cross-scale sums: ``x + sum_i resize(s_i)``, the other scales' tokens bilinearly resized
(align_corners=False) to x's grid, their class tokens added as they are.

The reference path splits off each class token, transposes to NCHW, interpolates, transposes back
and concatenates: on MindSpore's CPU backend six of those per parallel block cost ~8% of a CoaT
Tiny forward and ~0.4 GB of peak memory. On the CPU, float32 instead goes through one compiled
kernel on the token layout (``csrc/resize.cc``), with the exact adjoint as its backward.
Elsewhere, or with ``MINDCOAT_NATIVE=1`` / ``MINDCOAT_NATIVE_RESIZE=1``, the reference. The
export form (``dispatch.export_ops``) resizes by two matrix products, because MindSpore 2.10's
ONNX exporter cannot convert ResizeBilinearV2.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .dispatch import EXPORT_FORM, AtParseTime, all_f32, check, check_tokens, kernel_cells, known


def resize_tokens_native(x, h, w, out_h, out_w):
    """Bilinear resize (align_corners=False) of the image tokens; the class token is kept."""
    b, n, c = x.shape
    cls_tok, img = ops.split(x, (1, n - 1), axis=1)
    img = img.transpose(0, 2, 1).reshape(b, c, h, w)
    img = ops.interpolate(img, size=(out_h, out_w), mode='bilinear', align_corners=False)
    return ops.cat((cls_tok, img.reshape(b, c, out_h * out_w).transpose(0, 2, 1)), axis=1)


def cross_scale_sum_native(x, size, a, size_a, b, size_b):
    """Reference for ``cross_scale_sum``."""
    (h, w), (ha, wa), (hb, wb) = size, size_a, size_b
    return x + resize_tokens_native(a, ha, wa, h, w) + resize_tokens_native(b, hb, wb, h, w)


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) float32: row o holds the weights bilinear resizing (align_corners=False,
    no antialiasing, as ``ops.interpolate`` and PyTorch) gives the inputs of output o."""
    m = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m


@ops.constexpr
def _bilinear_weights(n_in, n_out):
    """``bilinear_matrix`` as a constant of the graph (grid sizes are static)."""
    return ms.Tensor(bilinear_matrix(n_in, n_out))


def resize_tokens_export(x, h, w, out_h, out_w):
    """``resize_tokens_native`` as two products with constant matrices, along the width on the
    (B, H, W, C) view of the image tokens, then along the height: no transposes, no batch size
    in any shape."""
    c = x.shape[2]
    cls_tok, img = ops.split(x, (1, h * w), axis=1)
    img = ops.matmul(_bilinear_weights(w, out_w), img.reshape(-1, h, w, c))
    img = ops.matmul(_bilinear_weights(h, out_h), img.reshape(-1, h, out_w * c))
    return ops.cat((cls_tok, img.reshape(-1, out_h * out_w, c)), axis=1)


def cross_scale_sum_export(x, size, a, size_a, b, size_b):
    """``cross_scale_sum_native`` through ``resize_tokens_export``."""
    (h, w), (ha, wa), (hb, wb) = size, size_a, size_b
    return x + resize_tokens_export(a, ha, wa, h, w) + resize_tokens_export(b, hb, wb, h, w)


def _f32(first, *others):
    check(all_f32(first, *others), 'the resize kernel takes float32')
    return first


def _check_tokens(x, hw, like=None):
    """x (B, 1 + H*W, C) on the grid hw (H, W); batch and channels those of ``like``."""
    check_tokens(x, hw)
    if like is not None and known(*x, *like):
        check(x[0] == like[0] and x[2] == like[2], f'{tuple(x)} does not match {tuple(like)}')


def _sum_shape(x, hw, *sources):
    """ResizeSumFwd (x, hw, s_1, hw_1, ...) -> like x."""
    _check_tokens(x, hw)
    for s, hw_s in zip(sources[::2], sources[1::2]):
        _check_tokens(s, hw_s, like=x)
    return x


def _grad_shape(dout, hw, hw_src):
    _check_tokens(dout, hw)
    check(len(hw_src) == 2 and known(*hw_src) and min(hw_src) >= 1, 'a non-empty source grid')
    return [dout[0], 1 + hw_src[0] * hw_src[1], dout[2]]


class _ResizeSumKernel(nn.Cell):
    """The compiled forward; the adjoint resizes as its ``bprop``. ``hw*`` are tensors whose
    shape is a grid (only their shapes are read)."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':ResizeSumFwd', _sum_shape, _f32, func_type='aot')
        self.grad = ops.Custom(lib + ':ResizeBwd', _grad_shape, _f32, func_type='aot')

    def construct(self, x, hw, a, hw_a, b, hw_b):
        return self.forward(x, hw, a, hw_a, b, hw_b)

    def bprop(self, x, hw, a, hw_a, b, hw_b, out, dout):
        return (dout, ops.zeros_like(hw), self.grad(dout, hw, hw_a), ops.zeros_like(hw_a),
                self.grad(dout, hw, hw_b), ops.zeros_like(hw_b))


def _kernel(_):
    return kernel_cells('resize', _ResizeSumKernel)


class _Dispatch(nn.Cell):
    """cross_scale_sum(x, (h, w), a, (ha, wa), b, (hb, wb)) -> x + a and b resized to (h, w);
    all three in token layout (B, 1 + rows*cols, C)."""

    kernel = AtParseTime(_kernel)  # None: native path
    export_form = EXPORT_FORM

    def construct(self, x, size, a, size_a, b, size_b):
        if self.kernel is not None and x.dtype == ms.float32 and a.dtype == ms.float32 \
                and b.dtype == ms.float32:
            return self.kernel(x, ops.zeros(size, ms.float32), a, ops.zeros(size_a, ms.float32),
                               b, ops.zeros(size_b, ms.float32))  # grids as shapes only
        if self.export_form:
            return cross_scale_sum_export(x, size, a, size_a, b, size_b)
        return cross_scale_sum_native(x, size, a, size_a, b, size_b)


cross_scale_sum = _Dispatch()
