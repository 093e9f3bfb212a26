"""Runs every compiled CPU kernel forward and backward on fixed inputs and saves the results to
an .npz (tests/test_kernels.py compares runs made with different thread counts, and with
oneDNN held to AVX2).

    python tests/kernel_outputs.py OUT.npz
"""
import sys

import mindspore as ms
import numpy as np

from mindcoat.ops import Gelu, LayerNormOp, conv2d_relu, conv_rel_pos_enc, cross_scale_sum, \
    depthwise_tokens, factor_attention, factor_attention_crpe, linear, linear_gelu, \
    linear_residual, mlp

H, W, C = 14, 12, 152
GRIDS = ((H, W), (H // 2, W // 2), (H * 2, W * 2))


def _cases(rng):
    def t(*shape):
        return ms.Tensor(rng.normal(size=shape).astype(np.float32))

    tokens, qkv = t(3, 1 + H * W, C), t(3, 1 + H * W, 3 * C)
    rows = t(16, 130, C)  # 2080 rows: enough for the linear kernels' transposed-W input gradient
    w3, w5, b3, b5 = t(C // 2, 1, 3, 3), t(C // 2, 1, 5, 5), t(C // 2), t(C // 2)
    gelu, norm = Gelu(), LayerNormOp(1e-6)
    return {
        'depthwise': (lambda x, a, b: depthwise_tokens(x, H, W, (a,), (b,), True),
                      (tokens, t(C, 1, 3, 3), t(C))),
        'crpe': (lambda x, a, b, c, d: conv_rel_pos_enc(x, H, W, (a, b), (c, d)),
                 (qkv, w3, w5, b3, b5)),
        'attention': (lambda x, c: factor_attention(x, c, 8), (qkv, tokens)),
        'attention_crpe': (lambda x, a, b, c, d: factor_attention_crpe(x, H, W, (a, b), (c, d), 8),
                           (qkv, w3, w5, b3, b5)),
        'cross_scale': (lambda x, a, b: cross_scale_sum(x, GRIDS[0], a, GRIDS[1], b, GRIDS[2]),
                        (tokens, t(3, 1 + H * W // 4, C), t(3, 1 + H * W * 4, C))),
        'linear': (linear, (rows, t(4 * C, C), t(4 * C))),
        'linear_gelu': (linear_gelu, (rows, t(4 * C, C), t(4 * C))),
        'linear_residual': (lambda x, a, b, r: linear_residual(x, a, b, r),
                            (rows, t(C, C), t(C), t(16, 130, C))),
        'linear_mlp': (mlp, (rows, t(4 * C, C), t(4 * C), t(C, 4 * C), t(C))),
        'linear_few_rows': (linear, (tokens, t(4 * C, C), t(4 * C))),
        'conv2d_relu': (conv2d_relu, (t(2, 9, 7, 48), t(32, 48, 3, 3), t(32))),
        'gelu': (gelu, (tokens,)),
        'layer_norm': (norm, (tokens, t(C), t(C))),
    }


def main(path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(0)
    results = {}
    for name, (fn, args) in _cases(rng).items():
        y, vjp = ms.vjp(fn, *args)
        # a cotangent that differs per element and does not depend on y's rounding
        grads = vjp(ms.Tensor(np.sin(np.arange(y.size, dtype=np.float32)).reshape(y.shape)))
        results[name] = y.asnumpy()
        for i, g in enumerate(grads):
            results[f'{name}_grad{i}'] = g.asnumpy()
    np.savez(path, **results)


if __name__ == '__main__':
    main(sys.argv[1])
