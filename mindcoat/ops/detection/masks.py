"""Pasting RoI masks into the image: mmdet 2.11's ``_do_paste_mask`` on the CPU (one mask at a
time, only the box's neighbourhood sampled) with PyTorch's ``grid_sample`` (bilinear, zero
padding, align_corners=False), in float32 NumPy. Host-side: the pasted area of each mask
depends on its box.
"""
import numpy as np

F32 = np.float32


def sigmoid(x):
    """1 / (1 + exp(-x)) in float32 (PyTorch's vectorised sigmoid can differ in the last bit)."""
    x = np.asarray(x, F32)
    with np.errstate(over='ignore'):
        return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def _grid_coords(lo_int, hi_int, lo, hi):
    """Pixel centres lo_int + 0.5 ... mapped to [-1, 1] over the box side (lo, hi); an infinite
    value (zero-size box) becomes 0, as mmdet sets it."""
    centres = np.arange(lo_int, hi_int, dtype=F32) + F32(0.5)
    with np.errstate(divide='ignore', invalid='ignore'):
        g = (centres - lo) / (hi - lo) * F32(2) - F32(1)
    g[np.isinf(g)] = 0
    return g.astype(F32)


def _fma(a, b, c):
    """a * b + c rounded once to float32, as the fused multiply-add PyTorch's vectorised CPU
    kernels use (emulated in float64: a rare double rounding can differ from true FMA)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + c).astype(F32)


def _unnormalize(g, size):
    """grid_sample's coordinate for align_corners=False: fma(g + 1, size / 2, -0.5)."""
    return _fma(g + F32(1), size / 2, -0.5)


def _bilinear_axis(coords, size):
    """Corner indices and weights along one axis; out-of-range corners get weight 0."""
    lo = np.floor(coords)
    frac = (coords - lo).astype(F32)
    lo_i = np.nan_to_num(lo, nan=-2, posinf=-2, neginf=-2).astype(np.int64)
    hi_i = lo_i + 1
    w_lo, w_hi = (F32(1) - frac).astype(F32), frac
    in_lo = (lo_i >= 0) & (lo_i < size)
    in_hi = (hi_i >= 0) & (hi_i < size)
    return np.clip(lo_i, 0, size - 1), np.clip(hi_i, 0, size - 1), w_lo, w_hi, in_lo, in_hi


def grid_sample_separable(mask, gx, gy):
    """``grid_sample(mask[None, None], grid)[0, 0]`` for a grid whose x depends only on the
    column and y only on the row (the paste's grid): (len(gy), len(gx))."""
    h, w = mask.shape
    x0, x1, wx0, wx1, vx0, vx1 = _bilinear_axis(_unnormalize(gx, w), w)
    y0, y1, wy0, wy1, vy0, vy1 = _bilinear_axis(_unnormalize(gy, h), h)

    def corner(ys, xs, valid_y, valid_x):
        v = mask[ys[:, None], xs[None, :]]
        return np.where(valid_y[:, None] & valid_x[None, :], v, F32(0))

    # torch: nw * (s*e), then + ne * (s*w), + sw * (n*e), + se * (n*w) as fused multiply-adds;
    # s/n are the y weights, e/w the x ones
    out = corner(y0, x0, vy0, vx0) * (wy0[:, None] * wx0[None, :])
    out = _fma(corner(y0, x1, vy0, vx1), wy0[:, None] * wx1[None, :], out)
    out = _fma(corner(y1, x0, vy1, vx0), wy1[:, None] * wx0[None, :], out)
    return _fma(corner(y1, x1, vy1, vx1), wy1[:, None] * wx1[None, :], out)


def paste_masks(masks, boxes, img_h, img_w, threshold=0.5):
    """Full-image boolean masks (n, img_h, img_w) from RoI mask probabilities (n, mh, mw) and
    their boxes (n, 4) in image pixels: each mask is sampled only over its box's pixels
    (floor(x1) - 1 .. ceil(x2) + 1, clipped), then thresholded (>= threshold)."""
    masks = np.asarray(masks, F32)
    boxes = np.asarray(boxes, F32).reshape(-1, 4)
    out = np.zeros((len(masks), img_h, img_w), bool)
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        x0_int = int(max(np.floor(x0) - 1, 0))
        y0_int = int(max(np.floor(y0) - 1, 0))
        x1_int = int(min(np.ceil(x1) + 1, img_w))
        y1_int = int(min(np.ceil(y1) + 1, img_h))
        if x1_int <= x0_int or y1_int <= y0_int:
            continue
        gx = _grid_coords(x0_int, x1_int, x0, x1)
        gy = _grid_coords(y0_int, y1_int, y0, y1)
        out[i, y0_int:y1_int, x0_int:x1_int] = grid_sample_separable(mask, gx, gy) >= threshold
    return out
