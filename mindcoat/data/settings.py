"""The data settings every tool uses (train.py, validate.py, predict): the config's values where
set, else the variant's defaults (mindcoat.models.DATA_CONFIGS); and the worker count clamp."""
import os
import sys
from dataclasses import dataclass

from ..config import ConfigError

CROP_MODES = ('center', 'squash')


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
    if not values:
        raise ConfigError(f"{name} is empty")
    return tuple(v / 255.0 for v in values) if max(values) > 1.0 else values


def _pick(value, default):
    return default if value is None else value


def resolve_data_settings(cfg, model_name):
    """DataSettings for ``model_name`` from ``cfg`` (a parsed config: image_resize, crop_pct,
    crop_mode, interpolation, mean, std; None means the variant's default). One-line ConfigError
    for an unknown model or a bad value."""
    from ..models.registry import DATA_CONFIGS
    from .transforms import INTERPOLATIONS
    if model_name not in DATA_CONFIGS:
        raise ConfigError(f"unknown model '{model_name}'; choose one of: "
                          f"{', '.join(sorted(DATA_CONFIGS))}")
    d = DATA_CONFIGS[model_name]
    size = _pick(cfg.image_resize, d['input_size'][-1])
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 32:
        raise ConfigError(f"image size must be a positive multiple of 32 (CoaT downsamples by "
                          f"32), got {size}")
    crop_pct = float(_pick(cfg.crop_pct, d['crop_pct']))
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    crop_mode = str(_pick(cfg.crop_mode, d.get('crop_mode', 'center'))).lower()
    if crop_mode not in CROP_MODES:
        raise ConfigError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got '{crop_mode}'")
    interpolation = str(_pick(cfg.interpolation, d['interpolation'])).lower()
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation '{interpolation}'; choose one of "
                          f"{', '.join(INTERPOLATIONS)}")
    mean = pixel_fraction(_pick(cfg.mean, d['mean']), 'mean')
    std = pixel_fraction(_pick(cfg.std, d['std']), 'std')
    if len(mean) != len(std) or min(std) <= 0:
        raise ConfigError(f"mean and std need one value per channel and std > 0, got mean "
                          f"{mean} std {std}")
    return DataSettings(size, crop_pct, crop_mode, interpolation, mean, std)


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
