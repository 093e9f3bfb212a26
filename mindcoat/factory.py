"""``create_model``: MindCV's and timm's entry point, and ``create_detector`` for the Mask R-CNN
detectors. Each builds (``mindcoat.models``) and then loads weights (``mindcoat.weights``): the
one place where the two meet."""
import os
from dataclasses import replace

from .errors import UsageError
from .models import build_coat
from .models.builder import check_arch_args, check_model_name
from .models.detection import DETECTORS, DetectorConfig, build_detector, check_detector_name, \
    default_config, detector_config, load_detector_config
from .models.registry import ARCHS
from .weights import checkpoint_info, fetch_weights, load_weights, pretrained_cfg
from .weights.detection import detector_pretrained_cfg, load_backbone_weights, \
    load_detector_weights, read_detector_checkpoint

# create_model's own arguments (named in the error for an unknown keyword)
FACTORY_ARGS = ('model_name', 'num_classes', 'pretrained', 'in_channels', 'checkpoint_path',
                'ema', 'auto_mapping', 'features_only', 'out_indices', 'name', 'log')


def create_model(model_name=None, num_classes=None, pretrained=False, in_channels=3,
                 checkpoint_path='', ema=False, auto_mapping=False, *, features_only=False,
                 out_indices=(0, 1, 2, 3), name=None, log=print, **arch):
    """Builds a CoaT variant by name: MindCV's ``create_model`` (same positional order), with
    timm's ``features_only``/``out_indices``.

    num_classes: the classifier's size. None: the checkpoint's head when weights are loaded
        (a fine-tuned file keeps its trained head), else 1000. A number that differs from the
        file's re-initialises the head, with a line saying so.
    pretrained: True downloads the official weights into the cache (``mindcoat.weights.hub``);
        a local path or an http(s) URL loads that file instead.
    checkpoint_path: a local file in any format ``mindcoat.weights`` reads (mindcoat/MindSpore
        .ckpt, the official .pth, timm .pth/.safetensors, MindCV .ckpt). Not with ``pretrained``.
    ema: load the EMA weights of the file (an error if it holds none).
    auto_mapping: accepted for MindCV's callers; names of every supported format are always mapped.
    name: alias of ``model_name``.
    log: where the loader's report and download messages go.
    arch: overrides of the variant's architecture (embed_dims, serial_depths, parallel_depth,
        num_heads, mlp_ratios, patch_size, drop_rate, drop_path_rate, crpe_window); None means
        the variant's default, as in MindCV. Anything else is a TypeError.
    """
    model_name = _model_name(model_name, name)
    check_arch_args(model_name, arch, FACTORY_ARGS)
    _check_num_classes(num_classes)
    source = _weights_source(pretrained, checkpoint_path, ema)
    url = pretrained_cfg(model_name)
    if source is True:  # a failed download builds nothing
        source = fetch_weights(url['url'], url['hash_prefix'], official=True, log=log)
    elif source and source.startswith(('http://', 'https://')):
        source = fetch_weights(source, log=log)
    if num_classes is None:
        num_classes = checkpoint_info(source).get('num_classes', 1000) if source else 1000
    model = build_coat(model_name, num_classes=num_classes, in_channels=in_channels,
                       features_only=features_only, out_indices=out_indices, **arch)
    model.default_cfg.update(url)
    if source:
        load_weights(model, source, use_ema=bool(ema), log=log)
    return model


def _model_name(model_name, name):
    if model_name is not None and name is not None and model_name != name:
        raise TypeError(f"create_model() got model_name='{model_name}' and name='{name}': "
                        "pass one of them")
    model_name = model_name if model_name is not None else name
    if model_name is None:
        raise TypeError("create_model() needs a model name, e.g. create_model('coat_lite_tiny')")
    check_model_name(model_name)
    return model_name


def _check_num_classes(num_classes):
    # MindCV's order puts num_classes second: a bool there is a pretrained= passed by position
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise TypeError(f"num_classes must be a non-negative int, got {num_classes!r} (the second "
                        "positional argument is num_classes, as in MindCV; pass pretrained= by "
                        "keyword)")


def _weights_source(pretrained, checkpoint_path, ema):
    """True (the official download), a path or URL string, or None."""
    if pretrained is not None and not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(f"pretrained must be True/False, a file path or a URL, got "
                        f"{type(pretrained).__name__}")
    pretrained = os.fspath(pretrained) if isinstance(pretrained, os.PathLike) else pretrained
    checkpoint_path = os.fspath(checkpoint_path) if checkpoint_path else None
    if pretrained and checkpoint_path and pretrained != checkpoint_path:
        raise UsageError("pretrained and checkpoint_path both given: pretrained=True downloads the "
                         "official weights, checkpoint_path loads a local file; pass one of them")
    source = checkpoint_path or pretrained or None
    if ema and not source:
        raise UsageError("ema=True loads the EMA weights of a file: pass checkpoint_path= (or "
                         "pretrained=)")
    return source


# ------------------------------------------------------------------------------------ detectors
def create_detector(name=None, checkpoint_path=None, num_classes=None, pretrained=False,
                    backbone_checkpoint=None, *, config=None, log=print):
    """Builds a CoaT Mask R-CNN + FPN detector (``mindcoat.models.detection``), then loads its
    weights.

    name: a registered detector (``list_detectors()``, e.g. 'mask_rcnn_coat_lite_mini_3x').
    checkpoint_path: an MMDetection checkpoint (the official .pth files), loaded all or nothing.
    num_classes: the box and mask heads' classes; default 80 (COCO), or the config's.
    pretrained: True downloads the official checkpoint into the weights cache; a local path or
        an http(s) URL loads that file instead. Not with ``checkpoint_path``.
    backbone_checkpoint: initialises only the backbone, from any classifier file mindcoat loads
        (official .pth, timm, MindCV, mindcoat) or a detector checkpoint's backbone; the heads
        stay freshly initialised. Not with detector weights.
    config: a DetectorConfig or the path of a detector YAML file (configs/det/*.yaml): the
        settings to build and test with (default: the official ones of ``name``). With neither
        name nor config, ``checkpoint_path`` tells: the settings a mindcoat detector .ckpt
        was converted with, else the registered detector its backbone matches.
    log: where the loaders' reports and download messages go.

    ``model.config`` holds the settings (``config.pipeline`` for ``preprocess``), and
    ``model.class_names`` the class names the loaded file gives (None if it gives none)."""
    ckpt = None  # a local checkpoint is read once, for its settings and its weights
    if name is None and config is None and checkpoint_path:
        ckpt = read_detector_checkpoint(os.fspath(checkpoint_path))
        config = _config_from_checkpoint(ckpt, log)
    config = _detector_config(name, config, num_classes)
    source = _weights_source(pretrained, checkpoint_path, False)
    if source and backbone_checkpoint:
        raise UsageError("backbone_checkpoint initialises the backbone of a detector without "
                         "weights: drop it, or drop checkpoint_path/pretrained")
    if source is True:
        cfg = detector_pretrained_cfg(config.model)
        source = fetch_weights(cfg['url'], cfg['hash_prefix'], official=True, log=log)
    elif source and source.startswith(('http://', 'https://')):
        source = fetch_weights(source, log=log)
    net = build_detector(config)
    if source:
        ckpt = ckpt or read_detector_checkpoint(source)
        load_detector_weights(net, ckpt, log=log)
        net.class_names = ckpt.info['class_names']
    elif backbone_checkpoint:
        load_backbone_weights(net, os.fspath(backbone_checkpoint), log=log)
    return net


def _config_from_checkpoint(ckpt, log):
    """The settings a mindcoat detector .ckpt was converted with, else the official ones of the
    first registered detector on the checkpoint's backbone (their test-time settings agree; the
    schedules differ), said in one line."""
    info = ckpt.info
    if info['config'] is not None:
        return detector_config(info['config'], f"{ckpt.path} (its stored settings)",
                               tuple(DETECTORS), tuple(ARCHS))
    if not info['detectors']:
        raise UsageError(f"{ckpt.path} holds no registered detector's backbone: say which "
                         "detector (--config DETECTOR.yaml or --model NAME)")
    name = info['detectors'][0]
    log(f"note: model {name} from the checkpoint's backbone")
    return replace(default_config(name), num_classes=info['num_classes'] or 80)


def _detector_config(name, config, num_classes):
    if config is None:
        if name is None:
            raise TypeError("create_detector() needs a detector name, e.g. "
                            "create_detector('mask_rcnn_coat_lite_mini_3x'), or config=")
        check_detector_name(name)
        config = default_config(name)
    elif isinstance(config, (str, os.PathLike)):
        config = load_detector_config(config, tuple(DETECTORS), tuple(ARCHS))
    elif not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig or a YAML path, got "
                        f"{type(config).__name__}")
    if name is not None and name != config.model:
        raise UsageError(f"create_detector('{name}') was given the config of "
                         f"'{config.model}': pass one of them")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise TypeError(f"num_classes must be a positive int, got {num_classes!r}")
        config = replace(config, num_classes=num_classes)
    return config
