"""What a detector is built and tested with, as typed settings, and the YAML files that hold them
(``configs/det/*.yaml``, one per official MMDetection config).

Five groups, each a frozen dataclass whose defaults are the official ``mask_rcnn_coat_fpn.py`` /
``coco_instance.py`` values: the CoaT backbone (``BackboneSettings``), the heads' architecture
(``HeadSettings``), the RPN's and the R-CNN's test settings (``RPNTestSettings``,
``RCNNTestSettings``) and the test pipeline (``PipelineSettings``). ``load_detector_config``
reads a YAML file into ``DetectorConfig``; an unknown key or a bad value is a one-line
ConfigError.
"""
import math
import os
from dataclasses import dataclass, field, fields, replace

from ...errors import ConfigError
from ...fileio import read_small_text

SIZE_DIVISOR = 32  # the CoaT backbone needs multiples of 32; so does the official Pad


@dataclass(frozen=True)
class BackboneSettings:
    """The CoaT backbone: the classifier variant ``arch`` (models.registry), with architecture
    overrides where a value is set (None: the variant's own). The official configs restate the
    variant's values; the shrunken test detectors change them."""
    arch: str = None
    embed_dims: tuple = None
    serial_depths: tuple = None
    parallel_depth: int = None
    num_heads: int = None
    mlp_ratios: tuple = None
    patch_size: int = 4
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class HeadSettings:
    """The FPN and the Mask R-CNN heads (official ``mask_rcnn_coat_fpn.py``)."""
    fpn_channels: int = 256
    num_outs: int = 5
    rpn_feat_channels: int = 256
    anchor_scales: tuple = (8,)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    anchor_strides: tuple = (4, 8, 16, 32, 64)
    rpn_target_means: tuple = (0.0, 0.0, 0.0, 0.0)
    rpn_target_stds: tuple = (1.0, 1.0, 1.0, 1.0)
    roi_strides: tuple = (4, 8, 16, 32)
    finest_scale: int = 56
    sampling_ratio: int = 0
    bbox_roi_size: int = 7
    fc_channels: int = 1024
    num_shared_fcs: int = 2
    bbox_target_means: tuple = (0.0, 0.0, 0.0, 0.0)
    bbox_target_stds: tuple = (0.1, 0.1, 0.2, 0.2)
    mask_roi_size: int = 14
    mask_num_convs: int = 4
    mask_channels: int = 256

    @property
    def num_anchors(self):
        return len(self.anchor_scales) * len(self.anchor_ratios)


@dataclass(frozen=True)
class RPNTestSettings:
    """test_cfg.rpn: top ``nms_pre`` anchors per level, NMS across levels kept apart, the best
    ``max_per_img`` proposals; ``min_bbox_size`` 0 keeps every box."""
    nms_pre: int = 1000
    max_per_img: int = 1000
    iou_threshold: float = 0.7
    min_bbox_size: float = 0


@dataclass(frozen=True)
class RCNNTestSettings:
    """test_cfg.rcnn: class scores above ``score_thr``, NMS per class, the best
    ``max_per_img``; masks are pixels of probability >= ``mask_thr_binary``."""
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5


@dataclass(frozen=True)
class PipelineSettings:
    """The test pipeline: keep-ratio resize into ``img_scale`` (long, short) with OpenCV's
    bilinear rounding, (x - mean) / std per channel (RGB order when ``to_rgb``, as mmcv converts
    the BGR file), zero padding at the bottom/right. ``canvas`` None pads each image to the next
    multiple of ``size_divisor`` (the official rule); a (height, width) pads every image to that
    one shape (shrinking it further if it would not fit), so one compiled graph serves all
    images, e.g. on Ascend. The canvas is not bit-equal to the official padding: CoaT's attention
    is global, so the padded area changes every feature."""
    img_scale: tuple = (1333, 800)
    keep_ratio: bool = True
    mean: tuple = (123.675, 116.28, 103.53)
    std: tuple = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    size_divisor: int = SIZE_DIVISOR
    canvas: tuple = None


@dataclass(frozen=True)
class DetectorConfig:
    """One detector: the registered name, classes, and the groups above."""
    model: str
    num_classes: int = 80
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    heads: HeadSettings = field(default_factory=HeadSettings)
    rpn: RPNTestSettings = field(default_factory=RPNTestSettings)
    rcnn: RCNNTestSettings = field(default_factory=RCNNTestSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)


# ------------------------------------------------------------------------------------- checks
def _where(source, key):
    return f"{source}: {key}" if source else key


def _int(value, key, source, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_where(source, key)} must be an integer >= {low}, got {value!r}")
    return value


def _number(value, key, source, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_where(source, key)} must be a finite number, got {value!r}")
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{_where(source, key)} must be {bounds}, got {value!r}")
    return float(value)


def _numbers(value, key, source, length=None, positive=False):
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) \
            or not value:
        size = f"{length} numbers" if length else "a non-empty list of numbers"
        raise ConfigError(f"{_where(source, key)} must be {size}, got {value!r}")
    return tuple(_number(v, key, source, 0 if positive else None, low_open=positive)
                 for v in value)


def _ints(value, key, source, length=None):
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) \
            or not value:
        size = f"{length} integers" if length else "a non-empty list of integers"
        raise ConfigError(f"{_where(source, key)} must be {size}, got {value!r}")
    return tuple(_int(v, key, source) for v in value)


def _bool(value, key, source):
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(source, key)} must be true or false, got {value!r}")
    return value


def _optional(check, value, *args, **kw):
    return None if value is None else check(value, *args, **kw)


def check_backbone(b, source='', known_arches=()):
    p = 'backbone.'
    if b.arch is not None and known_arches and b.arch not in known_arches:
        raise ConfigError(f"{_where(source, p + 'arch')} must be one of "
                          f"{', '.join(known_arches)}, got {b.arch!r}")
    out = BackboneSettings(
        arch=b.arch,
        embed_dims=_optional(_ints, b.embed_dims, p + 'embed_dims', source, 4),
        serial_depths=_optional(_ints, b.serial_depths, p + 'serial_depths', source, 4),
        parallel_depth=_optional(_int, b.parallel_depth, p + 'parallel_depth', source, 0),
        num_heads=_optional(_int, b.num_heads, p + 'num_heads', source),
        mlp_ratios=_optional(_numbers, b.mlp_ratios, p + 'mlp_ratios', source, 4, True),
        patch_size=_int(b.patch_size, p + 'patch_size', source),
        drop_path_rate=_number(b.drop_path_rate, p + 'drop_path_rate', source, 0, 1))
    if out.patch_size != 4:
        raise ConfigError(f"{_where(source, p + 'patch_size')}: the detector needs the stride-4 "
                          f"first stage (patch_size 4), got {out.patch_size}")
    return out


def check_heads(h, source=''):
    """``h`` with every value checked (ConfigError naming the first bad one)."""
    p = 'heads.'
    out = dict(
        fpn_channels=_int(h.fpn_channels, p + 'fpn_channels', source),
        num_outs=_int(h.num_outs, p + 'num_outs', source),
        rpn_feat_channels=_int(h.rpn_feat_channels, p + 'rpn_feat_channels', source),
        anchor_scales=_numbers(h.anchor_scales, p + 'anchor_scales', source, positive=True),
        anchor_ratios=_numbers(h.anchor_ratios, p + 'anchor_ratios', source, positive=True),
        anchor_strides=_ints(h.anchor_strides, p + 'anchor_strides', source),
        rpn_target_means=_numbers(h.rpn_target_means, p + 'rpn_target_means', source, 4),
        rpn_target_stds=_numbers(h.rpn_target_stds, p + 'rpn_target_stds', source, 4, True),
        roi_strides=_ints(h.roi_strides, p + 'roi_strides', source),
        finest_scale=_int(h.finest_scale, p + 'finest_scale', source),
        sampling_ratio=_int(h.sampling_ratio, p + 'sampling_ratio', source, 0),
        bbox_roi_size=_int(h.bbox_roi_size, p + 'bbox_roi_size', source),
        fc_channels=_int(h.fc_channels, p + 'fc_channels', source),
        num_shared_fcs=_int(h.num_shared_fcs, p + 'num_shared_fcs', source),
        bbox_target_means=_numbers(h.bbox_target_means, p + 'bbox_target_means', source, 4),
        bbox_target_stds=_numbers(h.bbox_target_stds, p + 'bbox_target_stds', source, 4, True),
        mask_roi_size=_int(h.mask_roi_size, p + 'mask_roi_size', source),
        mask_num_convs=_int(h.mask_num_convs, p + 'mask_num_convs', source),
        mask_channels=_int(h.mask_channels, p + 'mask_channels', source))
    if len(out['anchor_strides']) != out['num_outs']:
        raise ConfigError(f"{_where(source, p + 'anchor_strides')} needs one stride per FPN "
                          f"output ({out['num_outs']}), got {list(out['anchor_strides'])}")
    if len(out['roi_strides']) != 4:
        raise ConfigError(f"{_where(source, p + 'roi_strides')} needs the 4 backbone levels' "
                          f"strides, got {list(out['roi_strides'])}")
    if out['num_outs'] < 4:
        raise ConfigError(f"{_where(source, p + 'num_outs')} must be >= 4 (the backbone's "
                          f"levels), got {out['num_outs']}")
    return HeadSettings(**out)


def check_rpn(r, source=''):
    p = 'rpn.'
    return RPNTestSettings(
        nms_pre=_int(r.nms_pre, p + 'nms_pre', source, 0),
        max_per_img=_int(r.max_per_img, p + 'max_per_img', source),
        iou_threshold=_number(r.iou_threshold, p + 'iou_threshold', source, 0, 1),
        min_bbox_size=_number(r.min_bbox_size, p + 'min_bbox_size', source, 0))


def check_rcnn(r, source=''):
    p = 'rcnn.'
    return RCNNTestSettings(
        score_thr=_number(r.score_thr, p + 'score_thr', source, 0, 1),
        iou_threshold=_number(r.iou_threshold, p + 'iou_threshold', source, 0, 1),
        max_per_img=_int(r.max_per_img, p + 'max_per_img', source),
        mask_thr_binary=_number(r.mask_thr_binary, p + 'mask_thr_binary', source, 0, 1))


def check_pipeline(t, source=''):
    p = 'pipeline.'
    scale = _ints(t.img_scale, p + 'img_scale', source, 2)
    divisor = _int(t.size_divisor, p + 'size_divisor', source)
    if divisor % SIZE_DIVISOR:
        raise ConfigError(f"{_where(source, p + 'size_divisor')} must be a multiple of "
                          f"{SIZE_DIVISOR} (CoaT's total stride), got {divisor}")
    if not _bool(t.keep_ratio, p + 'keep_ratio', source):
        raise ConfigError(f"{_where(source, p + 'keep_ratio')}: only the official keep-ratio "
                          "resize is implemented (keep_ratio: true)")
    canvas = t.canvas
    if canvas is not None:
        canvas = _ints(canvas, p + 'canvas', source, 2)
        if canvas[0] % divisor or canvas[1] % divisor:
            raise ConfigError(f"{_where(source, p + 'canvas')} (height, width) must be "
                              f"multiples of {divisor}, got {list(canvas)}")
    return PipelineSettings(
        img_scale=scale, keep_ratio=True,
        mean=_numbers(t.mean, p + 'mean', source, 3),
        std=_numbers(t.std, p + 'std', source, 3, positive=True),
        to_rgb=_bool(t.to_rgb, p + 'to_rgb', source), size_divisor=divisor, canvas=canvas)


# ----------------------------------------------------------------------------------- YAML files
_GROUPS = {'backbone': BackboneSettings, 'heads': HeadSettings, 'rpn': RPNTestSettings,
           'rcnn': RCNNTestSettings, 'pipeline': PipelineSettings}
_TOP = ('model', 'num_classes') + tuple(_GROUPS)


def _group(cls, values, name, source):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{_where(source, name)} must be a mapping of settings, got "
                          f"{type(values).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{_where(source, name)}: unknown key(s) {', '.join(map(str, unknown))}"
                          f"; known: {', '.join(known)}")
    lists = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return replace(cls(), **lists)


def detector_config(values, source='', known_models=(), known_arches=()):
    """A checked DetectorConfig from a mapping (the parsed YAML). ``known_models`` and
    ``known_arches``: the names 'model' and 'backbone.arch' may take (empty: not checked)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source or 'detector config'} must be a mapping, got "
                          f"{type(values).__name__}")
    unknown = sorted(set(map(str, values)) - set(_TOP))
    if unknown:
        raise ConfigError(f"{_where(source, ', '.join(unknown))}: unknown key(s); known: "
                          f"{', '.join(_TOP)}")
    model = values.get('model')
    if not isinstance(model, str) or (known_models and model not in known_models):
        hint = f"; choose one of: {', '.join(known_models)}" if known_models else ''
        raise ConfigError(f"{_where(source, 'model')} must name a detector, got {model!r}{hint}")
    groups = {name: _group(cls, values.get(name), name, source) for name, cls in _GROUPS.items()}
    return DetectorConfig(
        model=model, num_classes=_int(values.get('num_classes', 80), 'num_classes', source),
        backbone=check_backbone(groups['backbone'], source, known_arches),
        heads=check_heads(groups['heads'], source), rpn=check_rpn(groups['rpn'], source),
        rcnn=check_rcnn(groups['rcnn'], source),
        pipeline=check_pipeline(groups['pipeline'], source))


_MAX_YAML_BYTES = 1 << 20  # a detector config is a few hundred bytes


def load_detector_config(path, known_models=(), known_arches=()):
    """Reads a detector YAML file (``configs/det/*.yaml``) into a checked DetectorConfig."""
    import yaml
    text = read_small_text(path, 'detector config', ConfigError, _MAX_YAML_BYTES)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f" (line {mark.line + 1})" if mark is not None else ''
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return detector_config(values, os.fspath(path), known_models, known_arches)


def as_yaml_dict(config):
    """The mapping a YAML file of ``config`` holds (lists for tuples)."""
    def plain(obj):
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(obj) for v in (getattr(obj, f.name),)}
    out = {'model': config.model, 'num_classes': config.num_classes}
    out.update({name: plain(getattr(config, name)) for name in _GROUPS})
    return out
