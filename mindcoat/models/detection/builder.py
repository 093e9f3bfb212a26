"""Builds a registered detector, freshly initialised (``mindcoat.create_detector`` loads
weights): its DetectorConfig from the registry (or a YAML file), the CoaT backbone from the
classifier registry with the config's overrides, the FPN and heads from the config."""
from dataclasses import replace

from ...errors import UsageError
from ..builder import build_coat
from ..registry import ARCHS
from .mask_rcnn import MaskRCNN
from .registry import DETECTORS, list_detectors
from .settings import BackboneSettings, DetectorConfig, check_backbone, check_heads, \
    check_pipeline, check_rcnn, check_rpn


def check_detector_name(name):
    if name not in DETECTORS:
        raise UsageError(f"unknown detector '{name}'; choose one of: "
                         f"{', '.join(list_detectors())}")


def default_config(name, num_classes=80):
    """The official settings of detector ``name``: its backbone variant's architecture written
    out, the Mask R-CNN heads, test settings and pipeline of the official config."""
    check_detector_name(name)
    arch = DETECTORS[name]['backbone']
    a = ARCHS[arch]
    backbone = BackboneSettings(arch=arch, embed_dims=tuple(a['embed_dims']),
                                serial_depths=tuple(a['serial_depths']),
                                parallel_depth=a['parallel_depth'], num_heads=a['num_heads'],
                                mlp_ratios=tuple(a['mlp_ratios']),
                                drop_path_rate=DETECTORS[name].get('drop_path_rate', 0.0))
    return DetectorConfig(model=name, num_classes=num_classes, backbone=backbone)


def backbone_arch(config):
    """The classifier variant and the CoaT overrides of ``config.backbone``."""
    b = config.backbone
    arch = b.arch or DETECTORS[config.model]['backbone']
    overrides = {k: getattr(b, k) for k in ('embed_dims', 'serial_depths', 'parallel_depth',
                                            'num_heads', 'mlp_ratios', 'drop_path_rate')
                 if getattr(b, k) is not None}
    return arch, overrides


def build_detector(config):
    """A freshly initialised MaskRCNN for ``config`` (a DetectorConfig). ``model.name`` is the
    detector's name and ``model.config`` its config."""
    check_detector_name(config.model)
    config = replace(config, backbone=check_backbone(config.backbone, known_arches=tuple(ARCHS)),
                     heads=check_heads(config.heads), rpn=check_rpn(config.rpn),
                     rcnn=check_rcnn(config.rcnn), pipeline=check_pipeline(config.pipeline))
    arch, overrides = backbone_arch(config)
    backbone = build_coat(arch, num_classes=0, features_only=True, **overrides)
    net = MaskRCNN(backbone, backbone.embed_dims, config.num_classes, config.heads, config.rpn,
                   config.rcnn, config.pipeline)
    net.name = config.model
    net.config = config
    return net
