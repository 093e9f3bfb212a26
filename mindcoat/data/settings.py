"""What the data pipeline takes: the eval settings every tool uses (train, validate, predict) —
the config's values where set, else the variant's defaults (mindcoat.models.DATA_CONFIGS) —, the
loader's and the augmentation's settings; and the worker count clamp."""
import math
import os
import sys
from dataclasses import dataclass

from ..errors import ConfigError
from ..typed import Settings

CROP_MODES = ('center', 'squash')


@dataclass(frozen=True)
class LoaderSettings(Settings):
    """How one epoch's images are read, ordered, batched and mixed."""
    batch_size: int
    num_parallel_workers: int
    seed: int
    shuffle: bool
    num_samples: int          # images per epoch and rank (None: all)
    eval_shuffle: bool
    drop_remainder: bool
    aug_repeats: int
    aug_repeats_single_device: bool
    in_channels: int
    num_classes: int
    mixup: float
    cutmix: float
    cutmix_prob: float
    mixup_switch_prob: float
    label_smoothing: float


@dataclass(frozen=True)
class AugmentSettings(Settings):
    """The training transform's random augmentation (timm's recipe, MindCV's keys)."""
    scale: tuple
    ratio: tuple
    hflip: float
    vflip: float
    color_jitter: float
    auto_augment: str
    re_prob: float
    re_scale: tuple
    re_ratio: tuple
    re_value: object
    re_max_attempts: int
    re_sampling: str


@dataclass(frozen=True)
class DataSettings:
    image_size: int
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple          # 0-1 scale
    std: tuple           # 0-1 scale


def pixel_fraction(values, name):
    """Mean/std on the 0-1 scale; values given on the 0-255 scale (MindCV) are divided by 255."""
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of numbers, got {values!r}") from None
    if not values or len(values) > 64 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name} must be one finite number per channel, got {values!r}")
    if name == 'std' and min(values) <= 0:
        raise ConfigError(f"std must be above 0 for every channel (std > 0), got {values}")
    return tuple(v / 255.0 for v in values) if max(values) > 1.0 else values


def _image_size(size):
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 4096 or size % 32:
        raise ConfigError(f"image size must be a positive multiple of 32 (CoaT downsamples by "
                          f"32) up to 4096, got {size}")
    return size


def _crop_pct(value):
    value = float(value)
    if not 0 < value <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {value}")
    return value


def _crop_mode(value):
    value = str(value).lower()
    if value not in CROP_MODES:
        raise ConfigError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got '{value}'")
    return value


def _interpolation(value):
    from .transforms import INTERPOLATIONS
    value = str(value).lower()
    if value not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation '{value}'; choose one of "
                          f"{', '.join(INTERPOLATIONS)}")
    return value


# config key -> its reader: the value checked and normalised (None: the variant's default)
EVAL_SETTINGS = {'image_resize': _image_size, 'crop_pct': _crop_pct, 'crop_mode': _crop_mode,
                 'interpolation': _interpolation,
                 'mean': lambda v: pixel_fraction(v, 'mean'),
                 'std': lambda v: pixel_fraction(v, 'std')}


def eval_setting_problem(key, value):
    """Why ``value`` cannot be the eval setting ``key`` (one line), or None; None is the
    variant's default and always fits."""
    if value is None:
        return None
    try:
        EVAL_SETTINGS[key](value)
    except (ConfigError, TypeError, ValueError) as e:
        return str(e)
    return None


def _pick(value, default):
    return default if value is None else value


def resolve_data_settings(cfg, model_name):
    """DataSettings for ``model_name`` from ``cfg`` (image_resize, crop_pct, crop_mode,
    interpolation, mean, std; None means the variant's default). One-line ConfigError for an
    unknown model or a bad value."""
    from ..models.registry import DATA_CONFIGS
    if model_name not in DATA_CONFIGS:
        raise ConfigError(f"unknown model '{model_name}'; choose one of: "
                          f"{', '.join(sorted(DATA_CONFIGS))}")
    d = DATA_CONFIGS[model_name]
    defaults = {'image_resize': d['input_size'][-1], 'crop_pct': d['crop_pct'],
                'crop_mode': d.get('crop_mode', 'center'), 'interpolation': d['interpolation'],
                'mean': d['mean'], 'std': d['std']}
    v = {key: read(_pick(getattr(cfg, key), defaults[key])) for key, read in
         EVAL_SETTINGS.items()}
    if len(v['mean']) != len(v['std']):
        raise ConfigError(f"mean and std need one value per channel, got mean {v['mean']} "
                          f"std {v['std']}")
    return DataSettings(v['image_resize'], v['crop_pct'], v['crop_mode'], v['interpolation'],
                        v['mean'], v['std'])


_NOTED = set()


def available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def clamp_workers(requested):
    """num_parallel_workers capped at the CPUs this process may use (mindspore.dataset refuses
    more: "num_parallel_workers exceeds the boundary"); says so once per process."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"num_parallel_workers must be a positive integer, got {requested!r}")
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if requested not in _NOTED:
        _NOTED.add(requested)
        print(f"note: num_parallel_workers {requested} is more than the {cpus} CPU(s) this "
              f"process may use; using {cpus}", file=sys.stderr, flush=True)
    return cpus
