"""Patch embedding convolution (kernel == stride): on the CPU as a matmul over patches.

MindSpore 2.10's CPU Conv2D takes 1-3 s per batch-16 call for CoaT's 4x4/s4 and 2x2/s2 patch
embeddings; the same numbers come from reshaping the non-overlapping patches into rows and one
matmul (~10 ms). Elsewhere the native Conv2D stays.
"""
from mindspore import nn, ops

from .dispatch import AtParseTime, fast_path
from .linear import linear


class _PatchConv(nn.Cell):
    def _use_matmul(self):
        return fast_path('patch') is not None

    use_matmul = AtParseTime(_use_matmul)

    def construct(self, x, weight, bias):
        """x (B, Cin, H, W), weight (Cout, Cin, p, p), bias (Cout,) -> (B, H/p * W/p, Cout)."""
        _, cin, h, w = x.shape
        if weight.dtype != x.dtype:  # mixed precision: this shared cell is outside amp's casts
            weight, bias = weight.astype(x.dtype), bias.astype(x.dtype)
        cout, p = weight.shape[0], weight.shape[2]
        if self.use_matmul:
            rows = x.reshape(-1, cin, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
            rows = rows.reshape(-1, (h // p) * (w // p), cin * p * p)
            return linear(rows, weight.reshape(cout, cin * p * p), bias)
        y = ops.conv2d(x, weight, bias, p)
        # only the grid is static (the batch may be dynamic in an exported graph)
        return y.reshape(-1, cout, (h // p) * (w // p)).transpose(0, 2, 1)


patch_conv = _PatchConv()
