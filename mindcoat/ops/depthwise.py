"""Depthwise 'same' convolution on channels-last (token-layout) feature maps.

CoaT runs depthwise convolutions on token sequences (B, H*W, C). Working channels-last lets the
model skip the NCHW transposes around every position encoding. ``depthwise_nhwc`` takes several
channel groups at once, each with its own odd kernel size, which is exactly what the
convolutional relative position encoding needs (3x3 / 5x5 / 7x7 over consecutive head groups).

On the CPU, MindSpore's grouped Conv2D has no depthwise fast path (20-60x slower than PyTorch), so
float32 inputs there go through a compiled OpenMP kernel (``csrc/depthwise.cc``) wrapped in
``ops.Custom`` with its own backward. Everything else (Ascend, GPU, other dtypes, no compiler,
``MINDCOAT_NATIVE_DWCONV=1``) uses ``depthwise_nhwc_native``. Both give the same numbers.
"""
import logging
import os

import mindspore as ms
from mindspore import nn, ops

from .build import build

logger = logging.getLogger(__name__)

MAX_GROUPS = 4


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


def _make_ops(lib, n):
    """The forward Custom op for ``n`` channel groups, with a bprop made of two more Custom ops.
    The graph compiler cannot take a bprop with *args, hence one explicit signature per ``n``."""
    grad_x = ops.Custom(lib + ':DwBwdX', _same_as_first, _same_as_first, func_type='aot')
    grad_w = ops.Custom(lib + ':DwBwdW', _grad_w_shape, _same_as_first, func_type='aot')

    def grads(x, weights, dout):
        dx = grad_x(dout, *weights)
        flat = grad_w(x, dout, *weights)  # [dw_1, ..., dw_n, db]
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
        return (dx,) + dws + dbs

    def bprop1(x, w1, b1, out, dout):
        return grads(x, (w1,), dout)

    def bprop2(x, w1, w2, b1, b2, out, dout):
        return grads(x, (w1, w2), dout)

    def bprop3(x, w1, w2, w3, b1, b2, b3, out, dout):
        return grads(x, (w1, w2, w3), dout)

    def bprop4(x, w1, w2, w3, w4, b1, b2, b3, b4, out, dout):
        return grads(x, (w1, w2, w3, w4), dout)

    bprop = (bprop1, bprop2, bprop3, bprop4)[n - 1]
    return ops.Custom(lib + ':DwFwd', _same_as_first, _same_as_first, func_type='aot', bprop=bprop)


class _AtParseTime:
    """A plain descriptor (not a property): MindSpore's graph parser reads it through getattr, so
    its Python body runs when the graph is built (after the device has been chosen). A property's
    body would instead be compiled as graph code, where get_context, the build and logging are
    not allowed."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls=None):
        return self if obj is None else self.fn(obj)


class _Dispatch(nn.Cell):
    """Picks the kernel once per device target and logs the choice once."""

    def __init__(self):
        super().__init__()
        self._decided = {}
        self._ops = ()

    def _decide(self):
        target = ms.get_context('device_target')
        if target in self._decided:
            return self._decided[target]
        reason = None
        if os.environ.get('MINDCOAT_NATIVE_DWCONV', '0') not in ('', '0'):
            reason = 'MINDCOAT_NATIVE_DWCONV is set'
        elif target != 'CPU':
            reason = f'device is {target}'
        else:
            lib = build('depthwise.cc')
            if lib is None:
                reason = 'the C++ kernel could not be built'
            elif not self._ops:
                self._ops = tuple(_make_ops(lib, n) for n in range(1, MAX_GROUPS + 1))
        ops_ = self._ops if reason is None else ()
        logger.info('mindcoat: depthwise convolution uses %s', 'the compiled CPU kernel'
                    if ops_ else f"MindSpore's native Conv2D ({reason})")
        self._decided[target] = ops_
        return ops_

    # the compiled ops for 1..MAX_GROUPS channel groups, or () when the native path is used
    kernels = _AtParseTime(_decide)

    def construct(self, x, weights, biases):
        if len(self.kernels) >= len(weights) and x.dtype == ms.float32 \
                and weights[0].dtype == ms.float32:
            return self.kernels[len(weights) - 1](x, *weights, *biases)
        return depthwise_nhwc_native(x, weights, biases)


def depthwise_path():
    """'custom' or 'native': the path ``depthwise_nhwc`` takes (for float32) on this device."""
    return 'custom' if _DISPATCH.kernels else 'native'


_DISPATCH = _Dispatch()
depthwise_nhwc = _DISPATCH
