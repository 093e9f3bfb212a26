"""RoIAlign as mmcv's and torchvision's CPU kernels compute it, and SingleRoIExtractor's level
mapping, on channels-last float32 feature maps.

MindSpore 2.10's ROIAlign is a different operator (floor instead of ceil for the adaptive sampling
grid, no half-pixel offset, RoI sizes clamped to 1), so this is its own. Host-side: the sampling
grid of each RoI (ceil(roi size / output size)) depends on the data. ``csrc/detection.cc``
computes it where it builds (``dispatch.host_library``), with the same operations in the same
order as the NumPy reference below, which runs otherwise (or with MINDCOAT_NATIVE_ROIALIGN=1).
"""
import ctypes

import numpy as np

from ..dispatch import host_library

F32 = np.float32
_CHUNK = 256  # RoIs gathered at once (bounds the temporary arrays)


def _axis_samples(start, bin_size, grid, pooled, size):
    """Sample coordinates along one axis for RoIs sharing one ``grid``: (low, high, l_weight,
    h_weight) of shape (k, pooled, grid), as the kernel's pre-calculation (invalid samples get
    zero weights and index 0)."""
    p = np.arange(pooled, dtype=F32)[None, :, None]
    i = (np.arange(grid, dtype=F32) + F32(0.5))[None, None, :]
    # roi_start + p * bin + (i + .5) * bin / grid, in the kernel's order of operations
    c = (start[:, None, None] + p * bin_size[:, None, None]) + \
        (i * bin_size[:, None, None]) / F32(grid)
    invalid = (c < -1.0) | (c > size)
    c = np.where(c <= 0, F32(0), c)
    low = c.astype(np.int64)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    c = np.where(at_edge, low.astype(F32), c)
    lw = (c - low.astype(F32)).astype(F32)
    hw = (F32(1) - lw).astype(F32)
    lw[invalid] = 0
    hw[invalid] = 0
    low[invalid] = 0
    high[invalid] = 0
    return low, high, lw, hw


def _align_group(hwc, width, height, start_h, start_w, bin_h, bin_w, grid_h, grid_w, out_h,
                 out_w):
    """Average of the bilinear samples for RoIs that share one sampling grid: (k, h, w, C)."""
    yl, yh, ly, hy = _axis_samples(start_h, bin_h, grid_h, out_h, height)
    xl, xh, lx, hx = _axis_samples(start_w, bin_w, grid_w, out_w, width)
    acc = np.zeros((len(start_h), out_h, out_w, hwc.shape[1]), F32)
    for iy in range(grid_h):  # the kernel's order: iy outer, ix inner
        rows_l = (yl[:, :, iy] * width)[:, :, None]
        rows_h = (yh[:, :, iy] * width)[:, :, None]
        for ix in range(grid_w):
            cols_l, cols_h = xl[:, None, :, ix], xh[:, None, :, ix]
            w1 = (hy[:, :, iy, None] * hx[:, None, :, ix])[..., None]
            w2 = (hy[:, :, iy, None] * lx[:, None, :, ix])[..., None]
            w3 = (ly[:, :, iy, None] * hx[:, None, :, ix])[..., None]
            w4 = (ly[:, :, iy, None] * lx[:, None, :, ix])[..., None]
            term = w1 * hwc[rows_l + cols_l] + w2 * hwc[rows_l + cols_h]
            term = term + w3 * hwc[rows_h + cols_l]
            acc += term + w4 * hwc[rows_h + cols_h]
    return acc / F32(max(grid_h * grid_w, 1))


def roi_align_numpy(feat, rois, output_size, spatial_scale, sampling_ratio=0, aligned=True):
    """``roi_align``'s NumPy reference."""
    feat = np.asarray(feat, F32)
    rois = np.asarray(rois, F32).reshape(-1, 4)
    out_h, out_w = _pair(output_size)
    height, width, channels = feat.shape
    out = np.zeros((len(rois), out_h, out_w, channels), F32)
    if not len(rois):
        return out
    hwc = feat.reshape(-1, channels)
    offset = F32(0.5) if aligned else F32(0)
    scale = F32(spatial_scale)
    start_w, start_h = rois[:, 0] * scale - offset, rois[:, 1] * scale - offset
    roi_w = rois[:, 2] * scale - offset - start_w
    roi_h = rois[:, 3] * scale - offset - start_h
    if not aligned:
        roi_w, roi_h = np.maximum(roi_w, F32(1)), np.maximum(roi_h, F32(1))
    bin_h, bin_w = roi_h / F32(out_h), roi_w / F32(out_w)
    if sampling_ratio > 0:
        grid_h = np.full(len(rois), sampling_ratio, np.int64)
        grid_w = grid_h
    else:
        grid_h = np.ceil(roi_h / F32(out_h)).astype(np.int64)
        grid_w = np.ceil(roi_w / F32(out_w)).astype(np.int64)
    # a RoI with an empty grid averages nothing: its output stays 0
    for gh, gw in sorted(set(zip(grid_h.tolist(), grid_w.tolist()))):
        if gh <= 0 or gw <= 0:
            continue
        members = np.flatnonzero((grid_h == gh) & (grid_w == gw))
        for chunk in range(0, len(members), _CHUNK):
            sel = members[chunk:chunk + _CHUNK]
            out[sel] = _align_group(hwc, width, height, start_h[sel], start_w[sel], bin_h[sel],
                                    bin_w[sel], gh, gw, out_h, out_w)
    return out


def _pair(size):
    return (size, size) if np.isscalar(size) else tuple(size)


_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def _kernel():
    lib = host_library('roi_align')
    if lib is not None and lib.RoiAlign.argtypes is None:
        lib.RoiAlign.restype = ctypes.c_int
        lib.RoiAlign.argtypes = [_P, _I64, _I64, _I64, _P, _I64, _I64, _I64, ctypes.c_float,
                                 _I64, ctypes.c_int, _P]
    return lib


def roi_align(feat, rois, output_size, spatial_scale, sampling_ratio=0, aligned=True):
    """RoIAlign (average) of ``rois`` (k, 4: x1, y1, x2, y2 in input pixels) on ``feat``
    (H, W, C) of one image: (k, out_h, out_w, C) float32. ``sampling_ratio`` 0 (or below)
    samples each bin on a ceil(roi size / output size) grid; ``aligned`` shifts by half a
    pixel."""
    feat = np.ascontiguousarray(feat, F32)
    rois = np.ascontiguousarray(np.asarray(rois, F32).reshape(-1, 4))
    out_h, out_w = _pair(output_size)
    if out_h < 1 or out_w < 1 or feat.ndim != 3:
        raise ValueError(f'roi_align takes a (H, W, C) map and an output size of at least 1, '
                         f'got {feat.shape} and {output_size}')
    lib = _kernel()
    if lib is not None and feat.size:
        out = np.empty((len(rois), out_h, out_w, feat.shape[2]), F32)
        # the kernel refuses only what the checks above already refused
        if lib.RoiAlign(feat.ctypes.data, *feat.shape, rois.ctypes.data, len(rois), out_h,
                        out_w, float(F32(spatial_scale)), int(sampling_ratio),
                        int(bool(aligned)), out.ctypes.data) != 0:
            raise RuntimeError(f'csrc/detection.cc refused RoIAlign on a {feat.shape} map')
        return out
    return roi_align_numpy(feat, rois, (out_h, out_w), spatial_scale, sampling_ratio, aligned)


def map_roi_levels(rois, num_levels, finest_scale=56):
    """SingleRoIExtractor.map_roi_levels: floor(log2(sqrt(area) / finest_scale + 1e-6)),
    clamped to the levels."""
    rois = np.asarray(rois, F32).reshape(-1, 4)
    scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 2] - rois[:, 0]))
    with np.errstate(divide='ignore', invalid='ignore'):
        levels = np.floor(np.log2(scale / F32(finest_scale) + F32(1e-6)))
    return np.clip(np.nan_to_num(levels, nan=0.0), 0, num_levels - 1).astype(np.int64)


def extract_roi_features(feats, rois, output_size, strides, sampling_ratio=0, finest_scale=56):
    """SingleRoIExtractor: each RoI (x1, y1, x2, y2 at input scale) is pooled from the level its
    size maps to. ``feats``: per level (H, W, C) of one image. Returns (k, out, out, C)."""
    rois = np.asarray(rois, F32).reshape(-1, 4)
    size = _pair(output_size)
    out = np.zeros((len(rois),) + size + (feats[0].shape[-1],), F32)
    levels = map_roi_levels(rois, len(strides), finest_scale)
    for level, stride in enumerate(strides):
        members = np.flatnonzero(levels == level)
        if len(members):
            out[members] = roi_align(feats[level], rois[members], size, 1.0 / stride,
                                     sampling_ratio)
    return out
