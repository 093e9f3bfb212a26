import inspect
import os

from .coat import CoaT
from .registry import ARCHS, DATA_CONFIGS, PRETRAINED_FILES, PUBLISHED_TOP1, list_models

# create_model's own arguments; everything else must be one of CoaT's architecture arguments
_FACTORY_ARGS = ('model_name', 'num_classes', 'pretrained', 'in_channels', 'checkpoint_path', 'ema',
                 'auto_mapping', 'features_only', 'out_indices', 'name', 'log')
_SET_BY_FACTORY = {'self', 'num_classes', 'in_channels', 'features_only', 'out_indices'}
ARCH_ARGS = tuple(p for p in inspect.signature(CoaT.__init__).parameters
                  if p not in _SET_BY_FACTORY)


def create_model(model_name=None, num_classes=1000, pretrained=False, in_channels=3,
                 checkpoint_path='', ema=False, auto_mapping=False, *, features_only=False,
                 out_indices=(0, 1, 2, 3), name=None, log=print, **arch):
    """Builds a CoaT variant by name: MindCV's ``create_model`` (same positional order), with
    timm's ``features_only``/``out_indices``.

    pretrained: True downloads the official weights into the cache (``mindcoat.hub``); a local
        path or an http(s) URL loads that file instead.
    checkpoint_path: a local file in any format ``mindcoat.convert`` reads (mindcoat/MindSpore
        .ckpt, the official .pth, timm .pth/.safetensors, MindCV .ckpt). Not with ``pretrained``.
    ema: load the EMA weights of the file (an error if it holds none).
    auto_mapping: accepted for MindCV's callers; names of every supported format are always mapped.
    name: alias of ``model_name``.
    log: where the loader's report and download messages go.
    arch: overrides of the variant's architecture (CoaT's arguments: embed_dims, serial_depths,
        parallel_depth, num_heads, mlp_ratios, patch_size, drop_rate, drop_path_rate, crpe_window);
        None means the variant's default, as in MindCV. Anything else is a TypeError.
    """
    model_name = _model_name(model_name, name)
    _check_arguments(model_name, num_classes, arch)
    source = _weights_source(pretrained, checkpoint_path, ema)
    arch = {k: v for k, v in arch.items() if v is not None}
    cfg = default_cfg(model_name, num_classes)
    source = _local_file(source, cfg, log) if source else None  # a failed download builds nothing
    model = CoaT(**dict(ARCHS[model_name], **arch), num_classes=num_classes,
                 in_channels=in_channels, features_only=features_only, out_indices=out_indices)
    model.name = model_name
    model.default_cfg = cfg
    if source:
        from ..convert import load_weights
        load_weights(model, source, use_ema=bool(ema), log=log)
    return model


def default_cfg(model_name, num_classes=1000):
    """The variant's data defaults plus where its official weights are (url, file, hash_prefix)."""
    from ..hub import pretrained_cfg
    return dict(DATA_CONFIGS[model_name], num_classes=num_classes, architecture=model_name,
                **pretrained_cfg(model_name))


def _local_file(source, cfg, log):
    """The local file to load: the official download for True, a URL's download, or the path."""
    from ..hub import fetch_weights
    if source is True:
        return fetch_weights(cfg['url'], cfg['hash_prefix'], log=log)
    if source.startswith(('http://', 'https://')):
        return fetch_weights(source, log=log)
    return source


def _model_name(model_name, name):
    if model_name is not None and name is not None and model_name != name:
        raise TypeError(f"create_model() got model_name='{model_name}' and name='{name}': "
                        "pass one of them")
    model_name = model_name if model_name is not None else name
    if model_name is None:
        raise TypeError("create_model() needs a model name, e.g. create_model('coat_lite_tiny')")
    if model_name not in ARCHS:
        raise ValueError(f"unknown model '{model_name}'; choose one of: "
                         f"{', '.join(list_models())}")
    return model_name


def _check_arguments(model_name, num_classes, arch):
    unknown = sorted(set(arch) - set(ARCH_ARGS))
    if unknown:
        raise TypeError(f"create_model('{model_name}') got unexpected keyword argument(s) "
                        f"{', '.join(repr(k) for k in unknown)}; valid: {', '.join(_FACTORY_ARGS)} "
                        f"and the architecture overrides {', '.join(ARCH_ARGS)}")
    # MindCV's order puts num_classes second (mindcoat's used to be pretrained)
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
        raise ValueError("pretrained and checkpoint_path both given: pretrained=True downloads the "
                         "official weights, checkpoint_path loads a local file; pass one of them")
    source = checkpoint_path or pretrained or None
    if ema and not source:
        raise ValueError("ema=True loads the EMA weights of a file: pass checkpoint_path= (or "
                         "pretrained=)")
    return source


__all__ = ['CoaT', 'create_model', 'list_models', 'default_cfg', 'ARCHS', 'ARCH_ARGS',
           'DATA_CONFIGS', 'PRETRAINED_FILES', 'PUBLISHED_TOP1']
