"""Depthwise 'same' convolution on channels-last (token-layout) feature maps.

CoaT runs depthwise convolutions on token sequences (B, H*W, C). Working channels-last lets the
model skip the NCHW transposes around every position encoding. ``depthwise_nhwc`` takes several
channel groups at once, each with its own odd kernel size, which is exactly what the
convolutional relative position encoding needs (3x3 / 5x5 / 7x7 over consecutive head groups).
"""
from mindspore import ops


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


depthwise_nhwc = depthwise_nhwc_native
