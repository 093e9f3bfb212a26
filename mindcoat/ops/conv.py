"""A k x k convolution (stride 1, zero padding k // 2, bias, optionally ReLU) on channels-last
data with PyTorch's weight layout (out, in, k, k): the FPN, RPN and mask-head convolutions of
the detectors; and the mask head's transposed convolution (kernel = stride = k, bias, ReLU) with
PyTorch's ConvTranspose2d layout (in, out, k, k).

The native path is k * k shifted matrix products: MindSpore 2.10's CPU Conv2d takes about 100
times as long on these shapes (256 channels, large maps or many RoIs). On the CPU, float32 goes
through ``csrc/linear.cc`` instead: oneDNN's convolution primitive on the channels-last tensors
as stored, with the ReLU applied to each output tile (about 3.5 times the shifted products'
speed); the transposed convolution likewise (one output instead of the native path's matrix
product, pixel shuffle, bias and ReLU, each a full-size tensor). Elsewhere, or with
``MINDCOAT_NATIVE=1`` / ``MINDCOAT_NATIVE_CONV=1``, the native path.
"""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import AtParseTime, all_f32, check, kernel_cells, known


def _taps(weight):
    """(out, in, k, k) -> k * k matrices (in, out), tap (i, j) at i * k + j. ops.unstack rather
    than indexing, which costs milliseconds per call in PyNative mode."""
    k = weight.shape[2]
    return ops.unstack(weight.transpose(2, 3, 1, 0).reshape(k * k, weight.shape[1], -1), 0)


def _windows(x, k):
    """The k * k windows of x (B, H, W, C) zero-padded by k // 2, each shifted by its tap (i, j)
    and flattened to (B * H * W, C), tap (i, j) at i * k + j."""
    b, h, w, c = x.shape
    if k == 1:
        return (x.reshape(-1, c),)
    pad = k // 2
    xp = ops.pad(x, (0, 0, pad, pad, pad, pad))
    windows = ()
    for t in range(k * k):
        windows = windows + (ops.slice(xp, (0, t // k, t % k, 0), (b, h, w, c)).reshape(-1, c),)
    return windows


def conv2d_native(x, weight, bias, relu=False):
    """(B, H, W, in) with weight (out, in, k, k), bias (out,) -> (B, H, W, out)."""
    b, h, w, _ = x.shape
    taps = _taps(weight)
    windows = _windows(x, weight.shape[2])
    y = ops.matmul(windows[0], taps[0])
    for t in range(1, len(windows)):
        y = y + ops.matmul(windows[t], taps[t])
    y = (y + bias).reshape(b, h, w, weight.shape[0])
    return ops.relu(y) if relu else y


def _conv_grads(x, weight, dy):
    """d x, d weight, d bias of the convolution (before any ReLU) for the cotangent ``dy``."""
    b, h, w, c = x.shape
    k = weight.shape[2]
    out = weight.shape[0]
    pad = k // 2
    taps = _taps(weight)
    windows = _windows(x, k)
    rows = dy.reshape(-1, out)
    dx = None
    dtaps = ()
    for t in range(k * k):
        i, j = t // k, t % k
        dtaps = dtaps + (ops.matmul(windows[t].T, rows),)
        # the tap's input gradient, placed where its window sits in the padded input
        part = ops.pad(ops.matmul(rows, taps[t].T).reshape(b, h, w, c),
                       (0, 0, j, 2 * pad - j, i, 2 * pad - i))
        dx = part if dx is None else dx + part
    dx = ops.slice(dx, (0, pad, pad, 0), (b, h, w, c))
    dweight = ops.stack(dtaps, 0).reshape(k, k, c, out).transpose(3, 2, 0, 1)
    return dx, dweight, rows.sum(0)


def deconv_relu_native(x, weight, bias):
    """ReLU of the transposed convolution, kernel = stride = k: (B, H, W, in) with weight (in,
    out, k, k), bias (out,) -> (B, kH, kW, out). Each input pixel becomes a k x k block: one
    matrix product and a pixel shuffle."""
    b, h, w, c = x.shape
    out, k = weight.shape[1], weight.shape[2]
    y = ops.matmul(x.reshape(-1, c), weight.reshape(c, out * k * k))
    y = y.reshape(b, h, w, out, k, k).transpose(0, 1, 4, 2, 5, 3)
    return ops.relu(y.reshape(b, h * k, w * k, out) + bias)


def _deconv_grads(x, weight, dy):
    """d x, d weight, d bias of the transposed convolution (before the ReLU) for ``dy``."""
    b, h, w, c = x.shape
    out, k = weight.shape[1], weight.shape[2]
    # each output block back to the input pixel it came from: (B * H * W, out * k * k)
    blocks = dy.reshape(b, h, k, w, k, out).transpose(0, 1, 3, 5, 2, 4).reshape(-1, out * k * k)
    flat = weight.reshape(c, out * k * k)
    dx = ops.matmul(blocks, flat.T).reshape(b, h, w, c)
    dweight = ops.matmul(x.reshape(-1, c).T, blocks).reshape(c, out, k, k)
    return dx, dweight, dy.reshape(-1, out).sum(0)


def _out_shape(x, w, b):
    """Conv2dFwd / Conv2dReluFwd (x (B, H, W, in), w (out, in, k, k), b (out,)) -> (B, H, W,
    out)."""
    check(len(x) == 4 and len(w) == 4 and len(b) == 1,
          f'conv2d takes x (B, H, W, in), weight (out, in, k, k), bias (out,); got {tuple(x)}, '
          f'{tuple(w)}, {tuple(b)}')
    if known(x[3], *w, *b):
        check(x[3] == w[1] and b[0] == w[0] and w[2] == w[3] and w[2] % 2 == 1,
              f'conv2d: x {tuple(x)}, weight {tuple(w)}, bias {tuple(b)} do not fit')
    return list(x[:3]) + [w[0]]


def _deconv_out_shape(x, w, b):
    """DeconvReluFwd (x (B, H, W, in), w (in, out, k, k), b (out,)) -> (B, kH, kW, out)."""
    check(len(x) == 4 and len(w) == 4 and len(b) == 1,
          f'deconv takes x (B, H, W, in), weight (in, out, k, k), bias (out,); got {tuple(x)}, '
          f'{tuple(w)}, {tuple(b)}')
    if known(x[3], *w, *b):
        check(x[3] == w[0] and b[0] == w[1] and w[2] == w[3],
              f'deconv: x {tuple(x)}, weight {tuple(w)}, bias {tuple(b)} do not fit')
    scale = w[2] if known(w[2]) else -1
    return [x[0], x[1] * scale if known(x[1], scale) else -1,
            x[2] * scale if known(x[2], scale) else -1, w[1]]


def _dtype(x, w, b):
    check(all_f32(x, w, b), 'the convolution kernel takes float32')
    return x


class _ConvKernel(nn.Cell):
    """The compiled forward; its gradients from native operators (a Cell ``bprop``): the
    detectors run it for inference, and a training graph stays differentiable."""

    def __init__(self, lib, relu):
        super().__init__()
        self.relu = relu
        name = 'Conv2dReluFwd' if relu else 'Conv2dFwd'
        self.forward = ops.Custom(f'{lib}:{name}', _out_shape, _dtype, func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        if self.relu:
            dout = dout * (out > 0).astype(dout.dtype)
        return _conv_grads(x, weight, dout)


class _DeconvReluKernel(nn.Cell):
    """The compiled ReLU(transposed convolution); gradients from native operators."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(f'{lib}:DeconvReluFwd', _deconv_out_shape, _dtype,
                                  func_type='aot')

    def construct(self, x, weight, bias):
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        return _deconv_grads(x, weight, dout * (out > 0).astype(dout.dtype))


def _make_kernels(lib):
    return {False: _ConvKernel(lib, False), True: _ConvKernel(lib, True),
            'deconv_relu': _DeconvReluKernel(lib)}


def _kernel(key):
    """The kernel cell for ``key`` (False, True: conv2d without, with ReLU; 'deconv_relu'), or
    None for the native path."""
    return (kernel_cells('conv', _make_kernels) or {}).get(key)


def _f32(x, weight, bias):
    return x.dtype == ms.float32 and weight.dtype == ms.float32 and bias.dtype == ms.float32


class _Dispatch(nn.Cell):
    """conv2d(x, weight, bias) or, for ``conv2d_relu``, ReLU of it."""

    kernel = AtParseTime(lambda self: _kernel(self.relu))  # None: native path

    def __init__(self, relu):
        super().__init__()
        self.relu = relu

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight, bias):
            return self.kernel(x, weight, bias)
        return conv2d_native(x, weight, bias, self.relu)


class _DeconvDispatch(nn.Cell):
    """deconv_relu(x, weight, bias): ReLU of the transposed convolution, kernel = stride."""

    kernel = AtParseTime(lambda self: _kernel('deconv_relu'))

    def construct(self, x, weight, bias):
        if self.kernel is not None and _f32(x, weight, bias):
            return self.kernel(x, weight, bias)
        return deconv_relu_native(x, weight, bias)


conv2d = _Dispatch(False)
conv2d_relu = _Dispatch(True)
deconv_relu = _DeconvDispatch()
