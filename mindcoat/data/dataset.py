"""Image-folder datasets (ImageNet layout: DATA_DIR/<split>/<class>/<image>) as one epoch's
mindspore.dataset pipeline per rank.

    classes = find_classes(train_dir)       # one-line DataError if unusable
    settings = resolve_data_settings(cfg, cfg.model)
    data = create_loader(cfg, train_dir, classes, settings, is_training=True, rank=r, world=w,
                         epoch=e)
    for images, targets in data.loader.create_tuple_iterator(num_epochs=1): ...
    data.bad_images.take()   # paths skipped since the last call

Reproducible whatever the worker count: the source is random-access (position in this rank's
epoch -> file), and each sample's augmentation draws from a generator seeded by
(seed, epoch, rank, position), each batch's Mixup/CutMix from one seeded by (seed, epoch, rank,
the batch's first position). Workers only change who computes a row, never its value.

Training batches carry soft targets (label smoothing, then Mixup/CutMix on whole batches);
evaluation batches carry int32 labels and keep the last, smaller batch.
"""
import os
from dataclasses import dataclass

import numpy as np
import mindspore.dataset as ds

from ..errors import DataError
from .decode import BadImageLog, list_images, read_image
from .mixing import BatchMix
from .sampler import rank_indices
from .settings import AugmentSettings, LoaderSettings, clamp_workers
from .transforms import EvalTransform, TrainTransform

SAMPLE_STREAM, MIX_STREAM = 0, 1
# Worker processes (not threads): PIL and the numpy conversions hold the GIL for part of each
# image, so threads share one core.
USE_PROCESSES = True


def find_classes(split_dir):
    """Sorted class folder names of ``split_dir``; DataError if it is missing or empty."""
    if not os.path.isdir(split_dir):
        raise DataError(f"data folder not found: {split_dir} (expected <data_dir>/<split>/<class>/"
                        f"<image>, the ImageNet layout)")
    classes = sorted(e.name for e in os.scandir(split_dir)
                     if e.is_dir() and not e.name.startswith('.'))
    if not classes:
        raise DataError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    if not any(f.is_file() for c in classes for f in os.scandir(os.path.join(split_dir, c))):
        raise DataError(f"no images in the class folders of {split_dir}")
    return classes


def check_split(split_dir, classes):
    """The val split must use the train classes (same label indices)."""
    extra = sorted(set(find_classes(split_dir)) - set(classes))
    if extra:
        raise DataError(f"{split_dir} has classes not in the training set: {', '.join(extra[:5])}")


@dataclass
class Loader:
    loader: ds.Dataset        # yields (images NCHW float32, targets) batches
    bad_images: BadImageLog   # unreadable files met so far, by path
    num_samples: int          # images this rank reads (before skipping bad ones)
    batch_size: int
    aug_repeats: int = 0      # repeated augmentation in effect this epoch (0: off)


class _Source:
    """Random-access rows (image CHW float32, label, position, ok) of one rank's epoch.
    ``order[p]`` is the sample read at position p; positions past len(order) (the top-up rows,
    used when bad images shortened the epoch) reread the order with fresh augmentations."""

    def __init__(self, samples, order, transform, key, channels, length):
        self.samples = samples
        self.order = order
        self.transform = transform
        self.key = key  # (seed, epoch, rank) or None for evaluation (no randomness)
        self.channels = channels
        self.length = length

    def __len__(self):
        return self.length

    def path_of(self, position):
        return self.samples[self.order[position % len(self.order)]][0]

    def __getitem__(self, position):
        path, label = self.samples[self.order[position % len(self.order)]]
        try:
            img = read_image(path, self.channels)
        except Exception:  # noqa: BLE001 - any decoder error means: skip and report this file
            return (np.zeros((self.channels, 1, 1), np.float32), np.int32(label),
                    np.int64(position), np.bool_(False))
        rng = None if self.key is None else \
            np.random.default_rng(self.key + (SAMPLE_STREAM, position))
        return (self.transform(img, rng), np.int32(label), np.int64(position), np.bool_(True))


class _MixBatch:
    """per_batch_map: stacks a batch, then label smoothing and Mixup/CutMix with a generator
    seeded by the batch's first position."""

    def __init__(self, mix, key):
        self.mix = mix
        self.key = key

    def __call__(self, images, labels, positions, _info):
        rng = np.random.default_rng(self.key + (MIX_STREAM, int(positions[0])))
        x, y = self.mix(np.stack(images), np.asarray(labels, np.int64), rng)
        return np.ascontiguousarray(x), y.astype(np.float32)


def repeats_in_effect(settings, world):
    """Repeated augmentation (DeiT's RASampler) only across several ranks, as DeiT does; CoaT's
    main.py also repeats on one GPU, which ``aug_repeats_single_device: True`` reproduces (off by
    default: a one-device fine-tune would see a third of its images per epoch)."""
    repeats = int(settings.aug_repeats or 0)
    if repeats <= 1 or (world <= 1 and not settings.aug_repeats_single_device):
        return 0
    return repeats


def top_up_rows(num_samples, batch_size):
    """Rows read past the epoch's order (fresh augmentations of its first images) to replace
    unreadable ones: 2% of the epoch or two batches. Not the whole order again: when the loop
    drops the iterator, producers blocked on a long remainder hold up its teardown for seconds.
    More unreadable images than this end the epoch early; bad_images then names them."""
    return max(2 * batch_size, num_samples // 50)


def _check_channels(settings, channels):
    if len(settings.mean) != channels:
        raise DataError(f"mean/std have {len(settings.mean)} values for {channels}-channel "
                        f"images: set mean and std with {channels} value(s)")


def eval_order(num_samples, rank, world, shuffle_seed=None):
    """The images a rank evaluates: every world-th from ``rank``, so the ranks together read each
    image once; with ``shuffle_seed`` (eval_shuffle) in a seeded random order (same results)."""
    order = np.arange(num_samples, dtype=np.int64)
    if shuffle_seed is not None:
        order = np.random.default_rng([int(shuffle_seed) & 0xFFFFFFFF, 1]).permutation(order)
    return order[rank::world]


def create_loader(cfg, split_dir, classes, settings, is_training, rank=0, world=1, epoch=0):
    """One epoch's pipeline for this rank. ``cfg`` carries the LoaderSettings (and, for
    training, the AugmentSettings) fields; ``settings``: resolve_data_settings(...)."""
    aug = AugmentSettings.of(cfg) if is_training else None
    cfg = LoaderSettings.of(cfg)
    _check_channels(settings, cfg.in_channels)
    samples = list_images(split_dir, classes)
    if not samples:
        raise DataError(f"no images in the class folders of {split_dir}")
    workers = clamp_workers(cfg.num_parallel_workers)
    repeats = repeats_in_effect(cfg, world) if is_training else 0
    if is_training:
        order = np.asarray(rank_indices(len(samples), world, rank, max(repeats, 1), cfg.seed,
                                        epoch, cfg.shuffle, cfg.num_samples), np.int64)
        key = (int(cfg.seed) & 0xFFFFFFFF, int(epoch), int(rank))
        source = _Source(samples, order, TrainTransform(settings, aug), key, cfg.in_channels,
                         len(order) + top_up_rows(len(order), cfg.batch_size))
    else:
        order = eval_order(len(samples), rank, world, cfg.seed if cfg.eval_shuffle else None)
        source = _Source(samples, order, EvalTransform(settings), None, cfg.in_channels,
                         len(order))
    if len(order) == 0:
        raise DataError(f"{split_dir}: no images for rank {rank} of {world}")
    data = ds.GeneratorDataset(source, ['image', 'label', 'position', 'ok'], shuffle=False,
                               num_parallel_workers=workers,
                               python_multiprocessing=USE_PROCESSES and workers > 1)
    bad_images = BadImageLog(source.path_of)
    data = data.filter(bad_images, input_columns=['ok', 'position'], num_parallel_workers=1)
    if not is_training:
        data = data.project(['image', 'label'])
        return Loader(data.batch(cfg.batch_size, drop_remainder=False), bad_images, len(order),
                      cfg.batch_size)
    data = data.project(['image', 'label', 'position'])
    mix = BatchMix(cfg.mixup, cfg.cutmix, cfg.cutmix_prob, cfg.mixup_switch_prob,
                   cfg.label_smoothing, cfg.num_classes)
    data = data.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder,
                      input_columns=['image', 'label', 'position'],
                      output_columns=['image', 'label'], per_batch_map=_MixBatch(mix, key),
                      num_parallel_workers=1)
    # The loop takes exactly num_samples // batch_size batches (the same on every rank); the
    # source's top-up rows replace images skipped as unreadable.
    return Loader(data, bad_images, len(order), cfg.batch_size, repeats)
