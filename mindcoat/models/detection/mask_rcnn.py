"""Mask R-CNN + FPN on a CoaT backbone, with MMDetection 2.11's test logic.

``MaskRCNN`` is a cell whose ``construct`` is the dense part (backbone, FPN, RPN head convs):
one graph per input shape. The rest of ``predict`` runs per image on the host, as the official
``simple_test`` does: RPN proposals (top ``nms_pre`` per level, decode, NMS across levels kept
apart), RoIAlign, the box head (a cell), softmax, decode, rescale, multi-class NMS, then the
mask head (a cell) on the detections and the paste at the original size. The box and mask heads
see their RoIs padded to a few fixed row counts, so graph mode compiles each head a handful of
times rather than once per image.

Two quirks of the official code are kept: proposals whose y2 is exactly 0 get zero logits and
deltas (``simple_test_bboxes`` takes them for padding), and detections whose y2, scaled back to
the test scale, is exactly 0 get no mask (``simple_test_mask``); ``Detections.has_mask`` says
which.
"""
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn

from ...ops.detection import AnchorGenerator, batched_nms, delta2bbox, extract_roi_features, \
    multiclass_nms, paste_masks, sigmoid, torch_sort_desc
from .heads import FCNMaskHead, FPN, RoIHead, RPNHead, Shared2FCBBoxHead
from .pipeline import collate, preprocess
from .settings import HeadSettings, PipelineSettings, RCNNTestSettings, RPNTestSettings

F32 = np.float32
# row counts the box and mask heads are run at (RoIs padded up to the next one)
_ROW_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Detections:
    """One image's detections, best first (the order of MMDetection's det_bboxes).

    boxes: float32 (k, 4) x1, y1, x2, y2 in original-image pixels; scores: float32 (k,);
    labels: int64 (k,) 0-based classes; masks: bool (k, H, W) at the original size (None when
    masks were not asked for); has_mask: bool (k,), False for the rows the official code gives no
    mask (their masks are all False)."""
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray = None
    has_mask: np.ndarray = None

    def __len__(self):
        return len(self.labels)

    def to_mmdet(self, num_classes):
        """MMDetection's result layout: (bbox_results, segm_results), per class an (n, 5) array
        x1, y1, x2, y2, score and a list of (H, W) bool masks (bbox2result / get_seg_masks)."""
        dets = np.concatenate([self.boxes, self.scores[:, None]], axis=1).astype(F32)
        bbox_results = [dets[self.labels == c] for c in range(num_classes)]
        if self.masks is None:
            return bbox_results, None
        segm_results = [[] for _ in range(num_classes)]
        for i in np.flatnonzero(self.has_mask):
            segm_results[int(self.labels[i])].append(self.masks[i])
        return bbox_results, segm_results


def _bucket(n, exact=()):
    """The row count ``n`` RoIs run at: ``n`` itself when it is one of ``exact`` (the caps of
    the test settings: the counts most images reach), else the next of _ROW_BUCKETS, so that
    a few compiled shapes serve every count."""
    if n in exact:
        return n
    for size in _ROW_BUCKETS:
        if n <= size:
            return size
    return -(-n // _ROW_BUCKETS[-1]) * _ROW_BUCKETS[-1]


def _run_padded(cell, rows, exact=()):
    """``cell`` on ``rows`` (k, ...) float32, zero-padded to ``_bucket(k, exact)`` rows;
    outputs cut to k."""
    k = len(rows)
    padded = np.zeros((_bucket(k, exact),) + rows.shape[1:], F32)
    padded[:k] = rows
    outs = cell(ms.Tensor(padded))
    if isinstance(outs, (tuple, list)):
        return tuple(o.asnumpy()[:k] for o in outs)
    return outs.asnumpy()[:k]


def softmax(x):
    x = np.asarray(x, F32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


class MaskRCNN(nn.Cell):
    """Mask R-CNN with an FPN on ``backbone`` (a CoaT with features_only=True, maps at strides
    4-32 with ``in_channels`` channels). Parameter names are MMDetection's state_dict keys
    (backbone.*, neck.*, rpn_head.*, roi_head.bbox_head.*, roi_head.mask_head.*)."""

    def __init__(self, backbone, in_channels, num_classes=80, heads=None, rpn_test=None,
                 rcnn_test=None, pipeline=None):
        super().__init__()
        heads = heads or HeadSettings()
        self.heads = heads
        self.num_classes = num_classes
        self.rpn_test = rpn_test or RPNTestSettings()
        self.rcnn_test = rcnn_test or RCNNTestSettings()
        self.pipeline = pipeline or PipelineSettings()
        self.class_names = None  # a checkpoint's own names, when loading gives them
        self.backbone = backbone
        self.neck = FPN(in_channels, heads.fpn_channels, heads.num_outs)
        self.rpn_head = RPNHead(heads.fpn_channels, heads.rpn_feat_channels, heads.num_anchors)
        self.roi_head = RoIHead(
            Shared2FCBBoxHead(heads.fpn_channels, heads.bbox_roi_size, heads.fc_channels,
                              num_classes, heads.num_shared_fcs),
            FCNMaskHead(heads.fpn_channels, heads.mask_channels, heads.mask_num_convs,
                        num_classes))
        self.anchor_generator = AnchorGenerator(heads.anchor_strides, heads.anchor_ratios,
                                                heads.anchor_scales)

    def construct(self, x):
        """Images (B, 3, H, W), H and W multiples of 32 -> (FPN levels P2-P6 channels-last (B,
        h, w, C), RPN objectness logits per level (B, A, h, w), RPN deltas per level (B, 4A, h,
        w))."""
        feats = self.neck(self.backbone(x))
        cls_scores, bbox_preds = self.rpn_head(feats)
        return feats, cls_scores, bbox_preds

    # ------------------------------------------------------------------------------- RPN
    def get_proposals(self, cls_scores, bbox_preds, meta):
        """RPNHead._get_bboxes for one image: ``cls_scores`` (A, h, w) and ``bbox_preds``
        (4A, h, w) per level, as numpy. Returns (n, 5) x1, y1, x2, y2, score at the input
        scale, in the order the RoI head uses."""
        cfg, h = self.rpn_test, self.heads
        sizes = [c.shape[-2:] for c in cls_scores]
        anchors = self.anchor_generator.grid(sizes)
        scores, deltas, kept_anchors, levels = [], [], [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            s = sigmoid(cls.transpose(1, 2, 0).reshape(-1))
            d = reg.transpose(1, 2, 0).reshape(-1, 4)
            a = anchors[level]
            if cfg.nms_pre > 0 and len(s) > cfg.nms_pre:
                top = torch_sort_desc(s, cfg.nms_pre)  # mmdet sorts, equal scores included
                s, d, a = s[top], d[top], a[top]
            scores.append(s)
            deltas.append(d)
            kept_anchors.append(a)
            levels.append(np.full(len(s), level, np.int64))
        scores, levels = np.concatenate(scores), np.concatenate(levels)
        proposals = delta2bbox(np.concatenate(kept_anchors), np.concatenate(deltas),
                               h.rpn_target_means, h.rpn_target_stds, max_shape=meta.img_shape)
        if cfg.min_bbox_size > 0:
            proposals, scores, levels = _drop_small(proposals, scores, levels, cfg.min_bbox_size)
        dets, _ = batched_nms(proposals, scores, levels, cfg.iou_threshold)
        return dets[:cfg.max_per_img]

    # ----------------------------------------------------------------------------- boxes
    def roi_features(self, feats, rois, size):
        """RoIAlign of ``rois`` (k, 4) from the four finest FPN levels of one image (each (h, w,
        C)): (k, size, size, C)."""
        h = self.heads
        return extract_roi_features(feats[:len(h.roi_strides)], rois, size, h.roi_strides,
                                    h.sampling_ratio, h.finest_scale)

    def box_head_outputs(self, feats, proposals):
        """(roi features, class logits, deltas) of ``proposals`` (n, >=4) for one image, the
        quirk of zeroed outputs for proposals with y2 == 0 applied."""
        rois = proposals[:, :4]
        roi_feats = self.roi_features(feats, rois, self.heads.bbox_roi_size)
        if not len(rois):
            return roi_feats, np.zeros((0, self.num_classes + 1), F32), \
                np.zeros((0, 4 * self.num_classes), F32)
        cls_score, bbox_pred = _run_padded(self.roi_head.bbox_head, roi_feats,
                                           (self.rpn_test.max_per_img,))
        padding = rois[:, 3] == 0
        cls_score[padding] = 0
        bbox_pred[padding] = 0
        return roi_feats, cls_score, bbox_pred

    def get_detections(self, proposals, cls_score, bbox_pred, meta):
        """BBoxHead.get_bboxes (rescale=True) + multiclass NMS: (dets (m, 5) in original
        pixels, labels (m,))."""
        h, cfg = self.heads, self.rcnn_test
        if not len(proposals):
            return np.zeros((0, 5), F32), np.zeros(0, np.int64)
        scores = softmax(cls_score)
        boxes = delta2bbox(proposals[:, :4], bbox_pred, h.bbox_target_means, h.bbox_target_stds,
                           max_shape=meta.img_shape)
        boxes = boxes / np.tile(meta.scale_factor, boxes.shape[1] // 4)
        dets, labels, _ = multiclass_nms(boxes, scores, cfg.score_thr, cfg.iou_threshold,
                                         cfg.max_per_img)
        return dets, labels

    # ----------------------------------------------------------------------------- masks
    def mask_rois(self, dets, meta):
        """Detections back at the test scale (float32 product), the mask head's RoIs."""
        return dets[:, :4] * meta.scale_factor

    def mask_logits(self, feats, rois, labels):
        """(RoI features, logits of each RoI's own class (m, 28, 28))."""
        roi_feats = self.roi_features(feats, rois, self.heads.mask_roi_size)
        if not len(rois):
            size = 2 * self.heads.mask_roi_size
            return roi_feats, np.zeros((0, size, size), F32)
        logits = _run_padded(self.roi_head.mask_head, roi_feats, (self.rcnn_test.max_per_img,))
        return roi_feats, logits[np.arange(len(rois)), labels]

    def paste(self, logits, rois, meta):
        """FCNMaskHead.get_seg_masks: sigmoid, boxes = rois / scale_factor, paste at the original
        size, threshold. Returns (masks (m, H, W) bool, has_mask (m,))."""
        has_mask = rois[:, 3] != 0
        h, w = meta.ori_shape[:2]
        masks = np.zeros((len(rois), h, w), bool)
        keep = np.flatnonzero(has_mask)
        if len(keep):
            masks[keep] = paste_masks(sigmoid(logits[keep]), rois[keep] / meta.scale_factor, h,
                                      w, self.rcnn_test.mask_thr_binary)
        return masks, has_mask

    # --------------------------------------------------------------------------- drivers
    def dense(self, tensor):
        """The graph part on a (B, 3, H, W) float32 array: numpy (FPN levels (B, h, w, C), RPN
        logits, RPN deltas), each a list over levels of (B, ...) arrays."""
        feats, cls_scores, bbox_preds = self(ms.Tensor(np.ascontiguousarray(tensor, F32)))
        return ([f.asnumpy() for f in feats], [c.asnumpy() for c in cls_scores],
                [b.asnumpy() for b in bbox_preds])

    def detect(self, images, with_masks=True):
        """Detections of RGB uint8 images (H, W, 3) through the test pipeline
        (``self.pipeline``); images whose padded shapes agree (always, with a fixed canvas) run
        as one batch."""
        items = [preprocess(image, self.pipeline) for image in images]
        results = [None] * len(items)
        for shape in dict.fromkeys(t.shape for t, _ in items):
            members = [i for i, (t, _) in enumerate(items) if t.shape == shape]
            for i, dets in zip(members, self.predict(collate(items[i] for i in members),
                                                     with_masks)):
                results[i] = dets
        return results

    def predict(self, batch, with_masks=True):
        """Detections of every image of ``batch`` (a pipeline.DetInput)."""
        feats, cls_scores, bbox_preds = self.dense(batch.tensor)
        out = []
        for i, meta in enumerate(batch.metas):
            stages = self._image_stages([f[i] for f in feats], [c[i] for c in cls_scores],
                                        [b[i] for b in bbox_preds], meta, with_masks)
            out.append(stages['detections'])
        return out

    def predict_stages(self, batch, with_masks=True):
        """Every intermediate of the first image of ``batch``, for comparisons and debugging:
        backbone maps, FPN levels, RPN outputs, proposals, RoI features, box head outputs,
        detections, mask RoIs, features and logits, and the final Detections. Feature maps and
        RoI features in MMDetection's layout, (C, h, w)."""
        maps = self.backbone(ms.Tensor(np.ascontiguousarray(batch.tensor, F32)))
        feats = self.neck(maps)
        cls_scores, bbox_preds = self.rpn_head(feats)
        backbone, feats, cls_scores, bbox_preds = (
            [t.asnumpy() for t in group] for group in (maps, feats, cls_scores, bbox_preds))
        stages = self._image_stages([f[0] for f in feats], [c[0] for c in cls_scores],
                                    [b[0] for b in bbox_preds], batch.metas[0], with_masks)
        stages.update(backbone=backbone, fpn=[f.transpose(0, 3, 1, 2) for f in feats],
                      rpn_cls=cls_scores, rpn_bbox=bbox_preds)
        for key in ('bbox_roi_feats', 'mask_roi_feats'):
            if key in stages:
                stages[key] = stages[key].transpose(0, 3, 1, 2)
        return stages

    def _image_stages(self, feats, cls_scores, bbox_preds, meta, with_masks):
        proposals = self.get_proposals(cls_scores, bbox_preds, meta)
        roi_feats, cls_score, bbox_pred = self.box_head_outputs(feats, proposals)
        dets, labels = self.get_detections(proposals, cls_score, bbox_pred, meta)
        stages = dict(proposals=proposals, bbox_roi_feats=roi_feats, bbox_cls_score=cls_score,
                      bbox_bbox_pred=bbox_pred, det_bboxes=dets, det_labels=labels)
        result = Detections(dets[:, :4].copy(), dets[:, 4].copy(), labels)
        if with_masks:
            rois = self.mask_rois(dets, meta)
            mask_feats, logits = self.mask_logits(feats, rois, labels)
            result.masks, result.has_mask = self.paste(logits, rois, meta)
            stages.update(mask_rois=rois, mask_roi_feats=mask_feats, mask_pred=logits)
        stages['detections'] = result
        return stages


def _drop_small(proposals, scores, levels, min_size):
    """RPNHead's min_bbox_size filter as MMDetection 2.11 writes it: boxes narrower or lower
    than ``min_size`` are dropped, unless the kept indices happen to sum to the box count (the
    official check compares that sum, not the count)."""
    w = proposals[:, 2] - proposals[:, 0]
    h = proposals[:, 3] - proposals[:, 1]
    valid = np.flatnonzero((w >= min_size) & (h >= min_size))
    if valid.sum() != len(proposals):
        return proposals[valid], scores[valid], levels[valid]
    return proposals, scores, levels
