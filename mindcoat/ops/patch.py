"""Patch embedding convolution (kernel == stride): on the CPU as a matmul over patches.

MindSpore 2.10's CPU Conv2D takes 1-3 s per batch-16 call for CoaT's 4x4/s4 and 2x2/s2 patch
embeddings; the same numbers come from reshaping the non-overlapping patches into rows and one
matmul (~10 ms). Elsewhere the native Conv2D stays.
"""
from mindspore import nn, ops

from .dispatch import EXPORT_FORM, AtParseTime, fast_path
from .linear import linear


class _PatchConv(nn.Cell):
    def _use_matmul(self):
        return fast_path('patch') is not None

    use_matmul = AtParseTime(_use_matmul)
    export_form = EXPORT_FORM

    def construct(self, x, weight, bias, grid=None):
        """Patch embedding -> (B, H/p * W/p, Cout), weight (Cout, Cin, p, p), bias (Cout,).
        ``x`` is an image (B, Cin, H, W), or, with ``grid=(H, W)``, the previous stage's tokens
        (B, 1 + H*W, Cin) whose class token is dropped."""
        if weight.dtype != x.dtype:  # mixed precision: this shared cell is outside amp's casts
            weight, bias = weight.astype(x.dtype), bias.astype(x.dtype)
        cout, p = weight.shape[0], weight.shape[2]
        if grid is not None:
            h, w = grid
            if self.use_matmul:
                # channels-last rows ordered (py, px, Cin): one copy of the tokens whose inner
                # run is a whole token, and the (small) weight permuted to match
                cin = x.shape[2]
                rows = x[:, 1:].reshape(-1, h // p, p, w // p, p, cin).transpose(0, 1, 3, 2, 4, 5)
                rows = rows.reshape(-1, (h // p) * (w // p), p * p * cin)
                return linear(rows, weight.transpose(0, 2, 3, 1).reshape(cout, -1), bias)
            x = tokens_to_image_export(x, h, w) if self.export_form else tokens_to_image(x, h, w)
        _, cin, h, w = x.shape
        if self.use_matmul:
            rows = x.reshape(-1, cin, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
            rows = rows.reshape(-1, (h // p) * (w // p), cin * p * p)
            return linear(rows, weight.reshape(cout, cin * p * p), bias)
        y = ops.conv2d(x, weight, bias, p)
        # only the grid is static (the batch may be dynamic in an exported graph)
        return y.reshape(-1, cout, (h // p) * (w // p)).transpose(0, 2, 1)


def tokens_to_image(tokens, h, w):
    """(B, 1 + H*W, C) tokens, class token first -> the (B, C, H, W) image of the others."""
    b, n, c = tokens.shape
    return ops.split(tokens, (1, n - 1), axis=1)[1].transpose(0, 2, 1).reshape(b, c, h, w)


def tokens_to_image_export(tokens, h, w):
    """``tokens_to_image`` with the batch axis left open (no batch size in an exported file)."""
    _, n, c = tokens.shape
    return ops.split(tokens, (1, n - 1), axis=1)[1].transpose(0, 2, 1).reshape(-1, c, h, w)


class _ClassToken(nn.Cell):
    """with_class_token(cls_token (1, 1, C), tokens (B, N, C)) -> (B, 1 + N, C), the class token
    first. The export form broadcasts it by adding it to a (B, 1, 1) zero cut from the tokens:
    BroadcastTo would be exported with the traced batch size in its shape."""

    export_form = EXPORT_FORM

    def construct(self, cls_token, tokens):
        if self.export_form:
            return ops.cat((tokens[:, :1, :1] * 0.0 + cls_token, tokens), axis=1)
        b, _, c = tokens.shape
        return ops.cat((ops.broadcast_to(cls_token, (b, 1, c)), tokens), axis=1)


patch_conv = _PatchConv()
with_class_token = _ClassToken()
