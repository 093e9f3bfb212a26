"""Anchors, the box coder and NMS as MMDetection 2.11 and mmcv compute them, in float32 NumPy.

Every formula keeps the reference's operation order so that float32 rounding matches. Boxes are
x1, y1, x2, y2 in pixels (mmdet 2.x: no +1 in widths). NMS and everything after it run on the
host: their output sizes depend on the data, which MindSpore has no static-shape form for. NMS's
greedy loop runs in ``csrc/detection.cc`` where it builds (``dispatch.host_library``; the same
comparisons, so the same boxes kept), else (or with MINDCOAT_NATIVE_NMS=1) in NumPy.
"""
import ctypes
import math

import numpy as np

from ..dispatch import host_library
from .sorting import torch_sort_desc

F32 = np.float32


# ------------------------------------------------------------------------------------- anchors
def base_anchors(base_size, scales, ratios):
    """AnchorGenerator.gen_single_level_base_anchors (center offset 0, scale major): one row per
    (ratio, scale), ratio-major."""
    scales = np.asarray(scales, F32)
    ratios = np.asarray(ratios, F32)
    h_ratios = np.sqrt(ratios)
    w_ratios = F32(1) / h_ratios
    ws = ((F32(base_size) * w_ratios[:, None]) * scales[None, :]).reshape(-1)
    hs = ((F32(base_size) * h_ratios[:, None]) * scales[None, :]).reshape(-1)
    center = F32(0)
    return np.stack([center - F32(0.5) * ws, center - F32(0.5) * hs,
                     center + F32(0.5) * ws, center + F32(0.5) * hs], axis=-1)


def grid_anchors(base, featmap_size, stride):
    """AnchorGenerator.single_level_grid_anchors: (h * w * A, 4), ordered (h, w, anchor)."""
    feat_h, feat_w = featmap_size
    shift_x = (np.arange(feat_w, dtype=np.int64) * stride).astype(F32)
    shift_y = (np.arange(feat_h, dtype=np.int64) * stride).astype(F32)
    xx = np.tile(shift_x, feat_h)
    yy = np.repeat(shift_y, feat_w)
    shifts = np.stack([xx, yy, xx, yy], axis=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


class AnchorGenerator:
    """mmdet's AnchorGenerator for square strides: base size = stride, anchors per location
    len(ratios) * len(scales). Anchors of a feature map size are cached (one image shape gives
    the same anchors every time)."""

    def __init__(self, strides, ratios, scales):
        self.strides = tuple(int(s) for s in strides)
        self.base = [base_anchors(s, scales, ratios) for s in self.strides]
        self.num_base_anchors = len(ratios) * len(scales)
        self._cache = {}

    def grid(self, featmap_sizes):
        key = tuple(tuple(int(v) for v in s) for s in featmap_sizes)
        if key not in self._cache:
            if len(key) != len(self.strides):
                raise ValueError(f"{len(key)} feature maps for {len(self.strides)} anchor strides")
            self._cache[key] = [grid_anchors(b, size, s)
                                for b, size, s in zip(self.base, key, self.strides)]
        return self._cache[key]


# ---------------------------------------------------------------------------------- box coder
def delta2bbox(rois, deltas, means=(0., 0., 0., 0.), stds=(1., 1., 1., 1.), max_shape=None,
               wh_ratio_clip=16 / 1000):
    """DeltaXYWHBBoxCoder.decode: ``rois`` (N, 4), ``deltas`` (N, 4 * k) (class-specific when
    k > 1); clipped to ``max_shape`` (h, w, ...) when given."""
    rois = np.asarray(rois, F32)
    deltas = np.asarray(deltas, F32)
    reps = deltas.shape[-1] // 4
    means = np.tile(np.asarray(means, F32), reps)
    stds = np.tile(np.asarray(stds, F32), reps)
    d = deltas * stds + means
    dx, dy, dw, dh = d[:, 0::4], d[:, 1::4], d[:, 2::4], d[:, 3::4]
    max_ratio = F32(abs(math.log(wh_ratio_clip)))
    dw = np.clip(dw, -max_ratio, max_ratio)
    dh = np.clip(dh, -max_ratio, max_ratio)
    x1, y1, x2, y2 = (rois[:, i:i + 1] for i in range(4))
    px = (x1 + x2) * F32(0.5)
    py = (y1 + y2) * F32(0.5)
    pw = x2 - x1
    ph = y2 - y1
    gw = pw * np.exp(dw)
    gh = ph * np.exp(dh)
    gx = px + pw * dx
    gy = py + ph * dy
    boxes = np.stack([gx - gw * F32(0.5), gy - gh * F32(0.5),
                      gx + gw * F32(0.5), gy + gh * F32(0.5)], axis=-1).reshape(deltas.shape)
    if max_shape is not None:
        h, w = F32(max_shape[0]), F32(max_shape[1])
        limit = np.tile(np.array([w, h], F32), boxes.shape[-1] // 2)
        boxes = np.where(boxes < F32(0), F32(0), boxes)
        boxes = np.where(boxes > limit, limit, boxes)
    return boxes.astype(F32)


# ------------------------------------------------------------------------------------------ NMS
def nms(boxes, scores, iou_threshold):
    """mmcv's CPU nms (offset 0): greedy over ``scores`` sorted descending (ties in torch's
    CPU sort order, see ``sorting``); box j is suppressed by a kept box i when
    inter / (area_i + area_j - inter) > iou_threshold, the threshold rounded to a C float.
    Returns the kept indices, highest score first."""
    boxes = np.asarray(boxes, F32)
    scores = np.asarray(scores, F32)
    order = torch_sort_desc(scores)
    if len(order) == 0:
        return order
    visiting = np.ascontiguousarray(boxes[order], F32)
    lib = _nms_kernel()
    if lib is not None:  # the loop has no failure mode: it returns how many it kept
        keep = np.empty(len(order), np.int64)
        kept = lib.Nms(visiting.ctypes.data, len(order), float(F32(iou_threshold)),
                       keep.ctypes.data)
        return order[keep[:kept]]
    return order[nms_sorted_numpy(visiting, iou_threshold)]


def _nms_kernel():
    lib = host_library('nms')
    if lib is not None and lib.Nms.argtypes is None:
        lib.Nms.restype = ctypes.c_int64
        lib.Nms.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p]
    return lib


def nms_sorted_numpy(boxes, iou_threshold):
    """The greedy loop of ``nms`` in NumPy on ``boxes`` (n, 4) already in visiting order: the
    positions kept."""
    thr = F32(iou_threshold)
    sx1, sy1, sx2, sy2 = (np.ascontiguousarray(boxes[:, i], F32) for i in range(4))
    sarea = (sx2 - sx1) * (sy2 - sy1)
    alive = np.ones(len(boxes), bool)
    keep = []
    with np.errstate(invalid='ignore', divide='ignore'):
        for i in range(len(boxes)):
            if not alive[i]:
                continue
            keep.append(i)
            rest = i + 1 + np.flatnonzero(alive[i + 1:])
            if not len(rest):
                break
            w = np.maximum(F32(0), np.minimum(sx2[i], sx2[rest]) - np.maximum(sx1[i], sx1[rest]))
            h = np.maximum(F32(0), np.minimum(sy2[i], sy2[rest]) - np.maximum(sy1[i], sy1[rest]))
            inter = w * h
            ovr = inter / ((sarea[i] + sarea[rest]) - inter)
            alive[rest[ovr > thr]] = False
    return np.asarray(keep, np.int64)


def batched_nms(boxes, scores, idxs, iou_threshold, split_thr=10000):
    """mmcv's batched_nms: NMS within each group of ``idxs`` (class or level). Below
    ``split_thr`` boxes, as mmcv, by offsetting every group by idx * (max coordinate + 1) and
    running one NMS (the offsets change float32 rounding, so they are kept); above it, NMS per
    group (on the offset boxes too), then all kept boxes sorted by score. Returns
    (dets (k, 5), keep)."""
    boxes = np.asarray(boxes, F32).reshape(-1, 4)
    scores = np.asarray(scores, F32).reshape(-1)
    idxs = np.asarray(idxs).reshape(-1)
    if len(boxes) == 0:
        return np.zeros((0, 5), F32), np.zeros(0, np.int64)
    offsets = idxs.astype(F32) * (boxes.max() + F32(1))
    shifted = boxes + offsets[:, None]
    if len(boxes) < split_thr:
        keep = nms(shifted, scores, iou_threshold)
    else:
        kept = np.zeros(len(boxes), bool)
        for group in np.unique(idxs):
            members = np.flatnonzero(idxs == group)
            kept[members[nms(shifted[members], scores[members], iou_threshold)]] = True
        keep = np.flatnonzero(kept)
        keep = keep[torch_sort_desc(scores[keep])]
    return np.concatenate([boxes[keep], scores[keep, None]], axis=1), keep


def multiclass_nms(multi_bboxes, multi_scores, score_thr, iou_threshold, max_num=-1):
    """mmdet's multiclass_nms: ``multi_bboxes`` (n, 4 * C) class-specific or (n, 4),
    ``multi_scores`` (n, C + 1) with background last. Keeps (box, class) pairs scoring above
    ``score_thr`` (a float32 comparison), NMS per class, the best ``max_num``. Returns
    (dets (k, 5), labels (k,), rows (k,): the proposal row of each detection)."""
    multi_scores = np.asarray(multi_scores, F32)
    n, num_classes = multi_scores.shape[0], multi_scores.shape[1] - 1
    multi_bboxes = np.asarray(multi_bboxes, F32)
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.reshape(n, -1, 4)
    else:
        bboxes = np.broadcast_to(multi_bboxes[:, None], (n, num_classes, 4))
    scores = multi_scores[:, :-1].reshape(-1)
    bboxes = bboxes.reshape(-1, 4)
    labels = np.tile(np.arange(num_classes, dtype=np.int64), n)
    rows = np.repeat(np.arange(n, dtype=np.int64), num_classes)
    inds = np.flatnonzero(scores > F32(score_thr))
    bboxes, scores, labels, rows = bboxes[inds], scores[inds], labels[inds], rows[inds]
    if len(inds) == 0:
        return np.zeros((0, 5), F32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    dets, keep = batched_nms(bboxes, scores, labels, iou_threshold)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep], rows[keep]
