"""OpenCV's ``cv2.resize(..., interpolation=INTER_LINEAR)`` on 8-bit images, bit for bit, in
NumPy, and mmcv's ``rescale_size`` (the keep-ratio size of MMDetection's test Resize).

OpenCV resizes 8-bit images in fixed point: per output column two 11-bit coefficients
(round-half-even of (1 - fx) * 2048 and fx * 2048, fx from the float32 source position
(dx + 0.5) * src/dst - 0.5), a horizontal pass into int32 rows, and a vertical pass that keeps
only the high bits ((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16), rounded by (+2) >> 2.
An exact halving in both axes is done as a 2x2 average, as OpenCV does. PIL's bilinear
antialiases when shrinking and is a different image.
"""
import numpy as np

_COEF_SCALE = 2048  # INTER_RESIZE_COEF_SCALE: 11 fractional bits


def rescale_size(w, h, scale):
    """mmcv.rescale_size for a (long, short) ``scale``: the largest size within both edges, each
    side int(side * factor + 0.5). Returns ((new_w, new_h), factor)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)), factor


def _taps(src, dst, clamp_weights):
    """Source indices and fixed-point weight pair of each output position along one axis.
    OpenCV zeroes the fraction outside the source along x only; along y it clips the row
    indices and keeps both weights (which the vertical pass rounds separately)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low = s < 0
        f[low], s[low] = 0, 0
        high = s >= src - 1
        f[high], s[high] = 0, src - 1
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def _is_exact_half(src, dst):
    scale = src / dst
    return abs(scale - 2) < 2.220446049250313e-16


def _halve(img):
    """INTER_AREA for an exact factor of 2: the rounded mean of each 2x2 block."""
    s = img.astype(np.int32)
    total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def resize_bilinear(img, size):
    """``img`` (H, W) or (H, W, C) uint8 resized to ``size`` = (new_w, new_h) as
    cv2.resize(img, size, interpolation=cv2.INTER_LINEAR) does."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"resize_bilinear takes uint8 images, got {img.dtype}")
    new_w, new_h = int(size[0]), int(size[1])
    h, w = img.shape[:2]
    if new_w <= 0 or new_h <= 0:
        raise ValueError(f"cannot resize to {new_w}x{new_h}")
    if (new_w, new_h) == (w, h):
        return img.copy()
    if _is_exact_half(w, new_w) and _is_exact_half(h, new_h):
        return _halve(img)
    xs0, xs1, a0, a1 = _taps(w, new_w, True)
    ys0, ys1, b0, b1 = _taps(h, new_h, False)
    # int32 holds every intermediate: rows reach about 255 * 2048, the vertical products 2048 *
    # (rows >> 4), under 2**27
    src = img.astype(np.int32)
    shape = (1, -1) + (1,) * (img.ndim - 2)
    # horizontal pass: int rows src[x0] * a0 + src[x1] * a1 (rows that are needed only)
    rows = np.union1d(ys0, ys1)
    horiz = np.zeros((h, new_w) + img.shape[2:], np.int32)
    horiz[rows] = src[rows][:, xs0] * a0.reshape(shape) + src[rows][:, xs1] * a1.reshape(shape)
    shape_v = (-1, 1) + (1,) * (img.ndim - 2)
    top = (b0.reshape(shape_v) * (horiz[ys0] >> 4)) >> 16
    bottom = (b1.reshape(shape_v) * (horiz[ys1] >> 4)) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
