"""Detection operators MindSpore lacks or computes differently, each equal to what MMDetection 2.11
and mmcv compute on the CPU: anchors, the delta box coder, NMS (single, batched, multi-class) in
PyTorch's order of ties, RoIAlign (aligned, adaptive sampling) with the FPN level mapping, the
mask paste, and OpenCV's bilinear resize of 8-bit images.

All of them are host-side NumPy in float32: their shapes depend on the data (how many boxes
survive, how finely each RoI is sampled), which has no static-shape form in MindSpore's graph
mode. The convolutional parts of the detector stay MindSpore cells (``mindcoat.models.detection``).
"""
from .boxes import AnchorGenerator, base_anchors, batched_nms, delta2bbox, grid_anchors, \
    multiclass_nms, nms
from .image import rescale_size, resize_bilinear
from .masks import grid_sample_separable, paste_masks, sigmoid
from .roi_align import extract_roi_features, map_roi_levels, roi_align
from .sorting import torch_sort_desc

__all__ = ['AnchorGenerator', 'base_anchors', 'batched_nms', 'delta2bbox', 'extract_roi_features',
           'grid_anchors', 'grid_sample_separable', 'map_roi_levels', 'multiclass_nms', 'nms',
           'paste_masks', 'rescale_size', 'resize_bilinear', 'roi_align', 'sigmoid',
           'torch_sort_desc']
