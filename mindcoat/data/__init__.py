"""Data pipeline: image folders -> decoded, augmented (timm's recipe), batched, mixed."""
from .augment import RandAugment, RandAugmentSpec, parse_rand_augment
from .dataset import DataError, Loader, check_split, create_loader, find_classes
from .decode import BadImageLog
from .mixing import BatchMix
from .sampler import rank_indices
from .settings import DataSettings, clamp_workers, resolve_data_settings
from .transforms import EvalTransform, TrainTransform

__all__ = ['RandAugment', 'RandAugmentSpec', 'parse_rand_augment', 'DataError', 'Loader',
           'check_split', 'create_loader', 'find_classes', 'BadImageLog', 'BatchMix',
           'rank_indices', 'DataSettings', 'clamp_workers', 'resolve_data_settings',
           'EvalTransform', 'TrainTransform']
