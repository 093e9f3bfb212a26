"""Data pipeline: image folders -> decoded, augmented (timm's recipe), batched, mixed."""
from .augment import RandAugment, RandAugmentSpec, parse_rand_augment
from .dataset import Loader, check_split, create_loader, find_classes
from .decode import BadImageLog
from .mixing import BatchMix
from .sampler import rank_indices
from .settings import AugmentSettings, DataSettings, LoaderSettings, clamp_workers, \
    resolve_data_settings
from .transforms import EvalTransform, TrainTransform

__all__ = ['RandAugment', 'RandAugmentSpec', 'parse_rand_augment', 'Loader',
           'check_split', 'create_loader', 'find_classes', 'BadImageLog', 'BatchMix',
           'rank_indices', 'AugmentSettings', 'DataSettings', 'LoaderSettings', 'clamp_workers',
           'resolve_data_settings',
           'EvalTransform', 'TrainTransform']
