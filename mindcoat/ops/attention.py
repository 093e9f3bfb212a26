"""CoaT's factorized attention, scale * q (softmax_N(k)^T v) + crpe, from the fused projection.

On MindSpore's CPU backend the reference formulation spends most of its time outside the math:
splitting qkv, transposing q, k and v into heads, a softmax over the token axis (after another
transpose), batch matmuls with broadcasting, and transposing back. The compiled kernel
(``csrc/transformer.cc``) works on the token layout (B, N, 3C) directly, one task per (batch,
head). Elsewhere (or with ``MINDCOAT_NATIVE=1`` / ``MINDCOAT_NATIVE_ATTENTION=1``) the reference.

``factor_attention_crpe`` computes the relative position encoding and the attention together:
with both CPU kernels, one backward writes both gradients of qkv into one tensor (no split of
qkv, no concatenation of its parts, no sum of the two gradients as separate passes).
"""
import mindspore as ms
from mindspore import nn, ops

from .depthwise import conv_rel_pos_enc, crpe_kernel, usable
from .dispatch import EXPORT_FORM, AtParseTime, all_f32, check, kernel_cells, known


class _SoftmaxFloat32(nn.Cell):
    """Softmax over the last axis in float32, as PyTorch's autocast runs it. Flagged float32 once;
    amp never reaches this module-level cell: graph mode casts its input at the call, PyNative
    runs it in float32."""

    def construct(self, x):
        return ops.softmax(x, axis=-1)


_softmax_float32 = _SoftmaxFloat32().to_float(ms.float32)


def factor_attention_native(qkv, crpe, num_heads):
    """Reference: ``qkv`` (B, N, 3C) -> (B, N, C), heads of C // num_heads channels."""
    b, n, c3 = qkv.shape
    c = c3 // 3
    ch = c // num_heads
    q, k, v = ops.split(qkv, c, axis=2)
    # softmax over tokens, taken on the last axis: k as (B, heads, Ch, N)
    k_t = k.reshape(b, n, num_heads, ch).transpose(0, 2, 3, 1)
    k_soft = _softmax_float32(k_t).astype(k.dtype)
    q = q.reshape(b, n, num_heads, ch).transpose(0, 2, 1, 3)
    v = v.reshape(b, n, num_heads, ch).transpose(0, 2, 1, 3)
    factor_att = ops.matmul(q, ops.matmul(k_soft, v))
    return ch ** -0.5 * factor_att.transpose(0, 2, 1, 3).reshape(b, n, c) + crpe


def factor_attention_export(qkv, crpe, num_heads):
    """``factor_attention_native`` with the batch axis of every reshape left open (-1), so that
    an exported file takes any batch."""
    _, n, c3 = qkv.shape
    c = c3 // 3
    ch = c // num_heads
    q, k, v = ops.split(qkv, c, axis=2)
    k_t = k.reshape(-1, n, num_heads, ch).transpose(0, 2, 3, 1)
    k_soft = _softmax_float32(k_t).astype(k.dtype)
    q = q.reshape(-1, n, num_heads, ch).transpose(0, 2, 1, 3)
    v = v.reshape(-1, n, num_heads, ch).transpose(0, 2, 1, 3)
    factor_att = ops.matmul(q, ops.matmul(k_soft, v))
    return ch ** -0.5 * factor_att.transpose(0, 2, 1, 3).reshape(-1, n, c) + crpe


MAX_HEAD_WIDTH = 64  # the kernel's widest head (CoaT's: 512 channels / 8 heads)


def _check(qkv, other, heads):
    """qkv (B, N, 3C), other (B, N, C) (crpe or the output gradient), heads (num_heads,)."""
    check(len(qkv) == 3 and len(other) == 3 and len(heads) == 1,
          'factorized attention takes qkv (B, N, 3C), (B, N, C) and the head count')
    if known(*qkv, *other, *heads):
        c = qkv[2] // 3
        check(qkv[2] == 3 * c and heads[0] >= 1 and c % heads[0] == 0,
              f'{qkv[2]} qkv channels do not split into 3 x {heads[0]} heads')
        check(c // heads[0] <= MAX_HEAD_WIDTH, f'heads wider than {MAX_HEAD_WIDTH} channels')
        check(list(other) == [qkv[0], qkv[1], c], f'{tuple(other)} does not match qkv {tuple(qkv)}')


def _out_shape(qkv, crpe, heads):
    _check(qkv, crpe, heads)
    return crpe


def _grad_shape(qkv, dout, heads):
    _check(qkv, dout, heads)
    return qkv


def _dtype(first, *others):
    check(all_f32(first, *others), 'the attention kernel takes float32')
    return first


class _FactorAttKernel(nn.Cell):
    """The compiled forward; gradient as a Cell ``bprop`` (d crpe is dout itself)."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':FactorAttFwd', _out_shape, _dtype, func_type='aot')
        self.forward_q = ops.Custom(lib + ':FactorAttQFwd', _out_shape, _dtype, func_type='aot')
        self.grad = ops.Custom(lib + ':FactorAttBwd', _grad_shape, _dtype, func_type='aot')

    def construct(self, qkv, crpe, heads):
        return self.forward(qkv, crpe, heads)

    def bprop(self, qkv, crpe, heads, out, dout):
        return self.grad(qkv, dout, heads), dout, ops.zeros_like(heads)


def _kernel(_):
    return kernel_cells('attention', _FactorAttKernel)


class _Dispatch(nn.Cell):
    """factor_attention(qkv, crpe, num_heads) -> (B, N, C)."""

    kernel = AtParseTime(_kernel)  # None: native path
    export_form = EXPORT_FORM

    def construct(self, qkv, crpe, num_heads):
        # the kernel takes heads of up to 64 channels (CoaT's widest)
        if self.kernel is not None and qkv.dtype == ms.float32 and crpe.dtype == ms.float32 \
                and qkv.shape[2] // 3 // num_heads <= MAX_HEAD_WIDTH:
            return self.kernel(qkv, crpe, ops.zeros((num_heads,), ms.float32))  # shape only
        if self.export_form:
            return factor_attention_export(qkv, crpe, num_heads)
        return factor_attention_native(qkv, crpe, num_heads)


factor_attention = _Dispatch()


class _AttentionCrpeKernel(nn.Cell):
    """The encoding's convolution e = conv(v) + b, then the attention, which adds q * e; returns
    (output, e): the backward takes e from the forward instead of convolving again. One backward:
    the encoding's gradient is added into the attention's d qkv by CrpeBwdXKept (d crpe is
    dout[0] itself)."""

    def __init__(self, attention, crpe):
        super().__init__()
        self.attention = attention
        self.crpe = crpe

    def construct(self, qkv, hw, weights, biases, heads):
        e = self.crpe.conv(qkv, hw, *weights, *biases)
        return self.attention.forward_q(qkv, e, heads), e

    def bprop(self, qkv, hw, weights, biases, heads, out, dout):
        dqkv, dws, dbs = self.crpe.grads_kept(qkv, out[1], hw, weights, dout[0],
                                              self.attention.grad(qkv, dout[0], heads))
        return dqkv, ops.zeros_like(hw), dws, dbs, ops.zeros_like(heads)


_fused = {}  # (attention kernel, crpe kernel) -> their _AttentionCrpeKernel


def _fused_kernel(_):
    """The fused cell when both CPU kernels apply, else None."""
    attention, crpe = _kernel(None), crpe_kernel()
    if attention is None or crpe is None:
        return None
    if (attention, crpe) not in _fused:
        _fused[(attention, crpe)] = _AttentionCrpeKernel(attention, crpe)
    return _fused[(attention, crpe)]


class _CrpeDispatch(nn.Cell):
    """factor_attention_crpe(qkv, h, w, weights, biases, num_heads) ->
    factor_attention(qkv, conv_rel_pos_enc(qkv, h, w, weights, biases), num_heads)."""

    kernel = AtParseTime(_fused_kernel)  # None: the two separately

    def construct(self, qkv, h, w, weights, biases, num_heads):
        if self.kernel is not None and usable(qkv, weights, biases) \
                and qkv.shape[2] // 3 // num_heads <= MAX_HEAD_WIDTH:
            out, _ = self.kernel(qkv, ops.zeros((h, w), ms.float32), weights, biases,
                                 ops.zeros((num_heads,), ms.float32))  # shapes only
            return out
        return factor_attention(qkv, conv_rel_pos_enc(qkv, h, w, weights, biases), num_heads)


factor_attention_crpe = _CrpeDispatch()
