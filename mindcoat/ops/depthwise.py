"""Depthwise 'same' convolution on channels-last (token-layout) feature maps.

CoaT runs depthwise convolutions on token sequences (B, H*W, C). Working channels-last lets the
model skip the NCHW transposes around every position encoding. ``depthwise_nhwc`` takes several
channel groups at once, each with its own odd kernel size, which is exactly what the
convolutional relative position encoding needs (3x3 / 5x5 / 7x7 over consecutive head groups).

On the CPU, MindSpore's grouped Conv2D has no depthwise fast path (20-60x slower than PyTorch), so
float32 inputs there go through a compiled OpenMP kernel (``csrc/depthwise.cc``) wrapped in
``ops.Custom`` with its own backward. Everything else (Ascend, GPU, other dtypes, no compiler,
``MINDCOAT_NATIVE=1`` or ``MINDCOAT_NATIVE_DWCONV=1``) uses ``depthwise_nhwc_native``. Both give the same numbers.
"""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import AtParseTime, fast_path


def depthwise_nhwc_native(x, weights, biases):
    """Reference path through MindSpore's own grouped Conv2D (used on every backend but the CPU
    fast path). ``x``: (B, H, W, C); ``weights[i]``: (C_i, 1, k_i, k_i); ``biases[i]``: (C_i,)."""
    feat = x.transpose(0, 3, 1, 2)
    sizes = [w.shape[0] for w in weights]
    chunks = ops.split(feat, sizes, axis=1) if len(sizes) > 1 else (feat,)
    outs = []
    for chunk, w, b in zip(chunks, weights, biases):
        k = w.shape[-1]
        outs.append(ops.conv2d(chunk, w, b, 1, 'pad', k // 2, 1, w.shape[0]))
    out = ops.cat(outs, axis=1) if len(outs) > 1 else outs[0]
    return out.transpose(0, 2, 3, 1)


# ---- the compiled CPU kernel -------------------------------------------------------------------

def _same_as_first(first, *_):
    return first


def _grad_w_shape(x, dy, *weights):
    # all weight gradients and the bias gradient, flattened into one buffer
    return (sum(w[0] * w[2] * w[3] for w in weights) + x[3],)


class _DwKernel(nn.Cell):
    """The compiled forward with its backward as a Cell ``bprop``. (A ``bprop`` given to
    ``ops.Custom`` itself is not safe: in one graph, different Custom ops got each other's.)"""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':DwFwd', _same_as_first, _same_as_first, func_type='aot')
        self.grad_x = ops.Custom(lib + ':DwBwdX', _same_as_first, _same_as_first, func_type='aot')
        self.grad_w = ops.Custom(lib + ':DwBwdW', _grad_w_shape, _same_as_first, func_type='aot')

    def construct(self, x, weights, biases):
        return self.forward(x, *weights, *biases)

    def bprop(self, x, weights, biases, out, dout):
        dx = self.grad_x(dout, *weights)  # the same convolution with flipped kernels
        flat = self.grad_w(x, dout, *weights)  # [dw_1, ..., dw_n, db]
        dws = ()
        start = 0
        for w in weights:
            size = w.shape[0] * w.shape[2] * w.shape[3]
            dws = dws + (flat[start:start + size].reshape(w.shape),)
            start = start + size
        dbs = ()
        for w in weights:
            dbs = dbs + (flat[start:start + w.shape[0]],)
            start = start + w.shape[0]
        return dx, dws, dbs


class _Dispatch(nn.Cell):
    """Runs the compiled kernel when the CPU fast path applies, else the native path."""

    def _kernel(self):
        lib = fast_path('depthwise convolution', 'MINDCOAT_NATIVE_DWCONV', 'depthwise.cc')
        if not lib:
            return None
        if lib not in _KERNELS:
            _KERNELS[lib] = _DwKernel(lib)
        return _KERNELS[lib]

    kernel = AtParseTime(_kernel)  # a _DwKernel, or None for the native path

    def construct(self, x, weights, biases):
        if self.kernel is not None and x.dtype == ms.float32 and weights[0].dtype == ms.float32:
            return self.kernel(x, weights, biases)
        return depthwise_nhwc_native(x, weights, biases)


def depthwise_path():
    """'custom' or 'native': the path ``depthwise_nhwc`` takes (for float32) on this device."""
    return 'native' if _DISPATCH.kernel is None else 'custom'


_KERNELS = {}
_DISPATCH = _Dispatch()
depthwise_nhwc = _DISPATCH
