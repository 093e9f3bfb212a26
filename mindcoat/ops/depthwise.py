"""Depthwise 'same' convolution on channels-last feature maps and on CoaT's token layout.

CoaT runs depthwise convolutions on token sequences (B, 1 + H*W, C). ``depthwise_tokens`` works
on that layout directly (no splitting off the class token, no NCHW transposes);
``depthwise_nhwc`` on (B, H, W, C). Both take several channel groups at once, each with its own
odd kernel size: the convolutional relative position encoding (3x3 / 5x5 / 7x7 over consecutive
head groups) is one call.

On the CPU, MindSpore's grouped Conv2D has no depthwise fast path (far slower than PyTorch's), so
float32 inputs there go through a compiled OpenMP kernel (``csrc/depthwise.cc``) wrapped in
``ops.Custom`` with its own backward. Everything else (Ascend, GPU, other dtypes, no compiler,
``MINDCOAT_NATIVE=1`` or ``MINDCOAT_NATIVE_DWCONV=1``) uses the ``*_native`` functions, which
give the same numbers.
"""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import EXPORT_FORM, AtParseTime, all_f32, check, check_tokens, kernel_cells, \
    known


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


def depthwise_tokens_native(x, h, w, weights, biases, residual=False):
    """Reference for ``depthwise_tokens`` through ``depthwise_nhwc_native``."""
    b, n, c = x.shape
    cls_tok, img = ops.split(x, (1, n - 1), axis=1)
    conv = depthwise_nhwc_native(img.reshape(b, h, w, c), weights, biases).reshape(b, n - 1, c)
    if residual:
        return ops.cat((cls_tok, conv + img), axis=1)
    return ops.cat((ops.zeros_like(cls_tok), conv), axis=1)


def depthwise_tokens_export(x, h, w, weights, biases, residual=False):
    """``depthwise_tokens_native`` with no batch size in any shape: reshapes leave the batch axis
    open and the class token's zero row is the token times 0 (a zeros_like would be stored as a
    constant of the traced batch's shape)."""
    _, n, c = x.shape
    cls_tok, img = ops.split(x, (1, n - 1), axis=1)
    conv = depthwise_nhwc_native(img.reshape(-1, h, w, c), weights, biases).reshape(-1, n - 1, c)
    if residual:
        return ops.cat((cls_tok, conv + img), axis=1)
    return ops.cat((cls_tok * 0.0, conv), axis=1)


# ---- the compiled CPU kernel -------------------------------------------------------------------

# ---- shape and dtype rules of the Custom ops: what the kernels accept, checked when the graph
# is compiled (a kernel refusing its inputs at run time would fail the whole graph)

def _f32(first, *others):
    check(all_f32(first, *others), 'depthwise kernels take float32 only')
    return first


def _check_weights(channels, weights, biases=None):
    for w in weights:
        check(len(w) == 4 and w[1] == 1 and w[2] == w[3] and w[2] % 2 == 1,
              f'a depthwise kernel must be (C_g, 1, k, k) with k odd, got {tuple(w)}')
    sizes = [w[0] for w in weights]
    if known(channels, *sizes):
        check(sum(sizes) == channels, f'the kernels cover {sum(sizes)} channels, the input has '
              f'{channels}')
    for w, b in zip(weights, biases or ()):
        check(list(b) == [w[0]], f'a bias of shape {tuple(b)} for {w[0]} channels')


def _check_tokens(x, hw, channels=None):
    check_tokens(x, hw)
    if channels is not None and known(x[2]):
        check(x[2] == channels, f'{x[2]} channels where {channels} are needed')


def _nhwc_shape(x, *params):
    """DwFwd (x, w_1..w_n, b_1..b_n) -> y like x."""
    n = len(params) // 2
    check(len(x) == 4, 'depthwise_nhwc takes (B, H, W, C)')
    _check_weights(x[3], params[:n], params[n:])
    return x


def _nhwc_grad_x_shape(dy, *weights):
    check(len(dy) == 4, 'depthwise_nhwc takes (B, H, W, C)')
    _check_weights(dy[3], weights)
    return dy


def _grad_w_shape(x, dy, *weights):
    # all weight gradients and the bias gradient, flattened into one buffer
    check(len(x) == 4 and list(x) == list(dy), 'the gradient must be shaped like the input')
    _check_weights(x[3], weights)
    return (sum(w[0] * w[2] * w[3] for w in weights) + x[3],)


def _split_grads(flat, weights):
    """[dw_1, ..., dw_n, db] -> ((dw_1, ...), (db_1, ...)) in the weights' shapes."""
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
    return dws, dbs


class _DwKernel(nn.Cell):
    """The compiled forward on (B, H, W, C), its backward as a Cell ``bprop``. (A ``bprop`` given
    to ``ops.Custom`` itself is not safe: in one graph, different Custom ops got each other's.)"""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':DwFwd', _nhwc_shape, _f32, func_type='aot')
        self.grad_x = ops.Custom(lib + ':DwBwdX', _nhwc_grad_x_shape, _f32, func_type='aot')
        self.grad_w = ops.Custom(lib + ':DwBwdW', _grad_w_shape, _f32, func_type='aot')

    def construct(self, x, weights, biases):
        return self.forward(x, *weights, *biases)

    def bprop(self, x, weights, biases, out, dout):
        dx = self.grad_x(dout, *weights)  # the same convolution with flipped kernels
        dws, dbs = _split_grads(self.grad_w(x, dout, *weights), weights)
        return dx, dws, dbs


def _tokens_shape(x, hw, *params):
    """DwFwd / DwResFwd on tokens (x, hw, w_1..w_n, b_1..b_n) -> y like x."""
    n = len(params) // 2
    _check_tokens(x, hw)
    _check_weights(x[2], params[:n], params[n:])
    return x


def _tokens_grad_x_shape(dy, hw, *weights):
    _check_tokens(dy, hw)
    _check_weights(dy[2], weights)
    return dy


def _grad_w_shape_tokens(x, dy, hw, *weights):
    _check_tokens(x, hw)
    check(list(x) == list(dy), 'the gradient must be shaped like the input')
    _check_weights(x[2], weights)
    return (sum(w[0] * w[2] * w[3] for w in weights) + x[2],)


class _DwTokensKernel(nn.Cell):
    """The compiled forward on tokens (B, 1 + H*W, C); ``hw`` is a tensor of shape (H, W) that
    tells the kernel the grid. ``residual``: y = x + conv(x) with the class token passed on."""

    def __init__(self, lib, residual):
        super().__init__()
        fwd, bwd = ('DwResFwd', 'DwResBwdX') if residual else ('DwFwd', 'DwBwdX')
        self.forward = ops.Custom(f'{lib}:{fwd}', _tokens_shape, _f32, func_type='aot')
        self.grad_x = ops.Custom(f'{lib}:{bwd}', _tokens_grad_x_shape, _f32, func_type='aot')
        self.grad_w = ops.Custom(lib + ':DwBwdW', _grad_w_shape_tokens, _f32, func_type='aot')

    def construct(self, x, hw, weights, biases):
        return self.forward(x, hw, *weights, *biases)

    def bprop(self, x, hw, weights, biases, out, dout):
        dx = self.grad_x(dout, hw, *weights)
        dws, dbs = _split_grads(self.grad_w(x, dout, hw, *weights), weights)
        return dx, ops.zeros_like(hw), dws, dbs


def _kernels():
    """{'nhwc', 'tokens', 'tokens_res'} kernels if the CPU fast path applies, else None."""
    return kernel_cells('dwconv', _make_kernels)


def _make_kernels(lib):
    return {'nhwc': _DwKernel(lib), 'tokens': _DwTokensKernel(lib, False),
            'tokens_res': _DwTokensKernel(lib, True)}


def crpe_kernel():
    """The relative position encoding kernel if its CPU fast path applies, else None."""
    return kernel_cells('crpe', _CrpeKernel)


def usable(x, weights, biases):
    """float32 input and parameters: what the kernels take."""
    ok = x.dtype == ms.float32
    for p in weights + biases:
        ok = ok and p.dtype == ms.float32
    return ok


def _cast_all(params, dtype):
    """The shared dispatch cells sit outside amp's casts: match the parameters to the input."""
    out = ()
    for p in params:
        out = out + (p.astype(dtype),)
    return out


class _Dispatch(nn.Cell):
    """depthwise_nhwc: the compiled kernel when the CPU fast path applies, else native."""

    kernel = AtParseTime(lambda self: (_kernels() or {}).get('nhwc'))  # None: native path

    def construct(self, x, weights, biases):
        if self.kernel is not None and usable(x, weights, biases):
            return self.kernel(x, weights, biases)
        if weights[0].dtype != x.dtype:
            weights, biases = _cast_all(weights, x.dtype), _cast_all(biases, x.dtype)
        return depthwise_nhwc_native(x, weights, biases)


class _TokensDispatch(nn.Cell):
    """depthwise_tokens(x, h, w, weights, biases, residual=False): the depthwise convolution of
    the image tokens of ``x`` (B, 1 + H*W, C) -> (B, 1 + H*W, C). Row 0 (class token) of the
    result is 0, or with ``residual`` the output is ``x + conv`` with the class token unchanged:
    CoaT's conv position encoding, without splitting off and re-attaching the class token."""

    plain = AtParseTime(lambda self: (_kernels() or {}).get('tokens'))  # None: native path
    with_residual = AtParseTime(lambda self: (_kernels() or {}).get('tokens_res'))
    export_form = EXPORT_FORM

    def construct(self, x, h, w, weights, biases, residual=False):
        if self.plain is not None and usable(x, weights, biases):
            hw = ops.zeros((h, w), ms.float32)  # only its shape is read
            if residual:
                return self.with_residual(x, hw, weights, biases)
            return self.plain(x, hw, weights, biases)
        if weights[0].dtype != x.dtype:
            weights, biases = _cast_all(weights, x.dtype), _cast_all(biases, x.dtype)
        if self.export_form:
            return depthwise_tokens_export(x, h, w, weights, biases, residual)
        return depthwise_tokens_native(x, h, w, weights, biases, residual)


def conv_rel_pos_enc_native(qkv, h, w, weights, biases):
    """Reference for ``conv_rel_pos_enc``: split q and v off qkv, q * depthwise(v)."""
    q, _, v = ops.split(qkv, qkv.shape[2] // 3, axis=2)
    return q * depthwise_tokens(v, h, w, weights, biases)


class _CrpeKernel(nn.Cell):
    """q * (conv(v) + b) straight from qkv in one compiled pass; the gradients also go straight
    into qkv's layout (``grads``, shared with the attention kernel, which adds its own). The
    attention kernel uses ``conv`` (conv(v) + b without q, which it multiplies in itself) and
    ``grads_kept`` (the same gradients from that kept convolution: no second one)."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':CrpeFwd', _crpe_shape, _f32, func_type='aot')
        self.conv = ops.Custom(lib + ':CrpeConvFwd', _crpe_shape, _f32, func_type='aot')
        self.grad_x = ops.Custom(lib + ':CrpeBwdX', _crpe_grad_x_shape, _f32, func_type='aot')
        self.grad_x_kept = ops.Custom(lib + ':CrpeBwdXKept', _crpe_grad_x_kept_shape, _f32,
                                      func_type='aot')
        self.grad_w = ops.Custom(lib + ':CrpeBwdW', _crpe_grad_w_shape, _f32,
                                 func_type='aot')

    def construct(self, qkv, hw, weights, biases):
        return self.forward(qkv, hw, *weights, *biases)

    def grads(self, qkv, hw, weights, biases, dout, dqkv):
        """(dqkv + d qkv, d weights, d biases) for the cotangent ``dout``."""
        return (self.grad_x(qkv, dout, dqkv, hw, *weights, *biases),
                *self._weight_grads(qkv, hw, weights, dout))

    def grads_kept(self, qkv, e, hw, weights, dout, dqkv):
        """``grads`` with e = conv(v) + b as ``conv`` returned it."""
        return (self.grad_x_kept(qkv, e, dout, dqkv, hw, *weights),
                *self._weight_grads(qkv, hw, weights, dout))

    def _weight_grads(self, qkv, hw, weights, dout):
        return _split_grads(self.grad_w(qkv, dout, hw, *weights), weights)

    def bprop(self, qkv, hw, weights, biases, out, dout):
        dqkv, dws, dbs = self.grads(qkv, hw, weights, biases, dout, ops.zeros_like(qkv))
        return dqkv, ops.zeros_like(hw), dws, dbs


def _crpe_shape(qkv, hw, *params):
    """CrpeFwd (qkv (B, 1 + H*W, 3C), hw, w_1..w_n, b_1..b_n) -> (B, 1 + H*W, C)."""
    n = len(params) // 2
    channels = sum(w[0] for w in params[:n])
    _check_tokens(qkv, hw, 3 * channels if known(channels) else None)
    _check_weights(channels, params[:n], params[n:])
    return [qkv[0], qkv[1], channels]


def _crpe_grad_x_shape(qkv, dout, dqkv, hw, *params):
    """CrpeBwdX (qkv, dout (B, 1 + H*W, C), dqkv like qkv, hw, w_1..w_n, b_1..b_n) -> qkv's."""
    out = _crpe_shape(qkv, hw, *params)
    if known(*out, *dout, *qkv, *dqkv):
        check(list(dout) == out and list(dqkv) == list(qkv),
              f'crpe gradients {tuple(dout)}, {tuple(dqkv)} for qkv {tuple(qkv)}')
    return qkv


def _crpe_grad_x_kept_shape(qkv, e, dout, dqkv, hw, *weights):
    """CrpeBwdXKept (qkv, e and dout (B, 1 + H*W, C), dqkv like qkv, hw, w_1..w_n) -> qkv's."""
    channels = sum(w[0] for w in weights)
    _check_tokens(qkv, hw, 3 * channels if known(channels) else None)
    _check_weights(channels, weights)
    if known(*e, *dout, *qkv, *dqkv):
        check(list(e) == list(dout) == [qkv[0], qkv[1], channels] and list(dqkv) == list(qkv),
              f'crpe gradients {tuple(e)}, {tuple(dout)}, {tuple(dqkv)} for qkv {tuple(qkv)}')
    return qkv


def _crpe_grad_w_shape(qkv, dout, hw, *weights):
    """CrpeBwdW (qkv, dout (B, 1 + H*W, C), hw, w_1..w_n) -> flat [dw_1, ..., dw_n, db]."""
    channels = sum(w[0] for w in weights)
    _check_tokens(qkv, hw, 3 * channels if known(channels) else None)
    _check_tokens(dout, hw, channels)
    _check_weights(channels, weights)
    return (sum(w[0] * w[2] * w[3] for w in weights) + channels,)


class _CrpeDispatch(nn.Cell):
    """conv_rel_pos_enc(qkv, h, w, weights, biases) -> (B, 1 + H*W, C): CoaT's convolutional
    relative position encoding q * depthwise(v) from the fused projection qkv (B, 1 + H*W, 3C),
    0 on the class token."""

    kernel = AtParseTime(lambda self: crpe_kernel())  # None: native path

    def construct(self, qkv, h, w, weights, biases):
        if self.kernel is not None and usable(qkv, weights, biases):
            return self.kernel(qkv, ops.zeros((h, w), ms.float32), weights, biases)  # shape only
        if weights[0].dtype != qkv.dtype:
            weights, biases = _cast_all(weights, qkv.dtype), _cast_all(biases, qkv.dtype)
        return conv_rel_pos_enc_native(qkv, h, w, weights, biases)


def depthwise_path():
    """'custom' or 'native': the path the depthwise convolutions take (float32) on this device."""
    return 'native' if _kernels() is None else 'custom'


depthwise_nhwc = _Dispatch()
depthwise_tokens = _TokensDispatch()
conv_rel_pos_enc = _CrpeDispatch()
