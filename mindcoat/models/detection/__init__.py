"""Mask R-CNN + FPN detectors on CoaT backbones (the official ``tasks/mmdet`` release), a peer of
the classifier: the eight published detectors as data (``registry``), their settings and YAML
files (``settings``), the cells (``heads``, ``mask_rcnn``), the test pipeline (``pipeline``) and
the builder. Weights are loaded a layer above (``mindcoat.weights``, ``mindcoat.create_detector``).

Inference, from a file to detections::

    net = mindcoat.create_detector('mask_rcnn_coat_lite_mini_3x', pretrained=True)
    dets = net.detect([load_image(path)])[0]          # Detections: boxes, scores, labels, masks

or step by step: ``preprocess(image, net.pipeline)`` -> ``collate`` -> ``net.predict``.
"""
from .builder import backbone_arch, build_detector, check_detector_name, default_config
from .heads import FCNMaskHead, FPN, RPNHead, Shared2FCBBoxHead
from .mask_rcnn import Detections, MaskRCNN
from .pipeline import DetInput, ImageMeta, collate, image_size, load_image, padded_shape, \
    preprocess, resized_size
from .registry import COCO_CATEGORY_IDS, COCO_CLASSES, DETECTORS, checkpoint_file, \
    checkpoint_url, list_detectors, official_config_name
from .settings import BackboneSettings, DetectorConfig, HeadSettings, PipelineSettings, \
    RCNNTestSettings, RPNTestSettings, as_yaml_dict, detector_config, load_detector_config

__all__ = ['backbone_arch', 'build_detector', 'check_detector_name', 'default_config',
           'FCNMaskHead', 'FPN', 'RPNHead', 'Shared2FCBBoxHead', 'Detections', 'MaskRCNN',
           'DetInput', 'ImageMeta', 'collate', 'image_size', 'load_image', 'padded_shape',
           'preprocess', 'resized_size', 'COCO_CATEGORY_IDS',
           'COCO_CLASSES', 'DETECTORS', 'checkpoint_file', 'checkpoint_url', 'list_detectors',
           'official_config_name', 'BackboneSettings', 'DetectorConfig', 'HeadSettings',
           'PipelineSettings', 'RCNNTestSettings', 'RPNTestSettings', 'as_yaml_dict',
           'detector_config', 'load_detector_config']
