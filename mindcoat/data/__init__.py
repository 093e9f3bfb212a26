"""Data pipeline: image folders -> decoded, augmented, batched, mixed (mindspore.dataset)."""
from .dataset import DataError, Loader, batch_mixing, check_split, create_dataset, find_classes
from .decode import BadImageLog, SafeDecode
from .sampler import RepeatAugSampler, eval_shard, rank_indices
from .transforms import create_transforms, parse_rand_augment

__all__ = ['DataError', 'Loader', 'batch_mixing', 'check_split', 'create_dataset', 'find_classes',
           'BadImageLog', 'SafeDecode', 'RepeatAugSampler', 'eval_shard', 'rank_indices',
           'create_transforms', 'parse_rand_augment']
