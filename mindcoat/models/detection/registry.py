"""The eight published CoaT Mask R-CNN + FPN detectors (official ``tasks/mmdet`` release): their
differences are data. Each names its backbone (a classifier variant of ``models.registry``), its
schedule, the official MMDetection config it was trained with, and its checkpoint file; the
backbone's stochastic depth (training only) is 0 unless given.
"""
import fnmatch

# The official checkpoints (tasks/mmdet/README.md, "Mask R-CNN"): file names under
# https://vcl.ucsd.edu/coat/pretrained/tasks/mmdet/; the 8 hex digits are the start of the file's
# SHA-256. Published COCO val2017 box / mask AP, not measured here.
DETECTOR_URL_BASE = 'https://vcl.ucsd.edu/coat/pretrained/tasks/mmdet/'

DETECTORS = {
    'mask_rcnn_coat_lite_mini_1x': dict(backbone='coat_lite_mini', schedule='1x', sha='85230aa4',
                                        box_ap=41.4, mask_ap=38.0),
    'mask_rcnn_coat_lite_mini_3x': dict(backbone='coat_lite_mini', schedule='3x', sha='564e80d7',
                                        box_ap=42.9, mask_ap=38.9),
    'mask_rcnn_coat_lite_small_1x': dict(backbone='coat_lite_small', schedule='1x',
                                         sha='4c9c3f44', box_ap=45.2, mask_ap=40.7),
    'mask_rcnn_coat_lite_small_3x': dict(backbone='coat_lite_small', schedule='3x',
                                         sha='c7da01b6', box_ap=45.7, mask_ap=41.1),
    'mask_rcnn_coat_mini_1x': dict(backbone='coat_mini', schedule='1x', sha='30d8566d',
                                   box_ap=45.1, mask_ap=40.6),
    'mask_rcnn_coat_mini_3x': dict(backbone='coat_mini', schedule='3x', sha='67e59b6f',
                                   box_ap=46.5, mask_ap=41.8),
    'mask_rcnn_coat_small_1x': dict(backbone='coat_small', schedule='1x', sha='7396027e',
                                    box_ap=46.5, mask_ap=41.8, drop_path_rate=0.2),
    'mask_rcnn_coat_small_3x': dict(backbone='coat_small', schedule='3x', sha='1152829c',
                                    box_ap=49.0, mask_ap=43.7, drop_path_rate=0.2),
}


def official_config_name(name):
    """The MMDetection config the detector was trained with (tasks/mmdet/configs/coat/)."""
    d = DETECTORS[name]
    return f"mask_rcnn_{d['backbone']}_mstrain_480-800_adamw_{d['schedule']}_coco"


def checkpoint_file(name):
    return f"{official_config_name(name)}_{DETECTORS[name]['sha']}.pth"


def checkpoint_url(name):
    return DETECTOR_URL_BASE + checkpoint_file(name)


def list_detectors(filter=''):  # noqa: A002
    """Detector names, sorted; ``filter`` an fnmatch pattern."""
    return sorted(n for n in DETECTORS if not filter or fnmatch.fnmatch(n, filter))


# MMDetection's CocoDataset.CLASSES (label i of a detector) and the COCO category id of each
# (the annotation files' ids: 1..90 with gaps), for writing COCO results.
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)
