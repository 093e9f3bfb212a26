"""Image-folder datasets (ImageNet layout: DATA_DIR/<split>/<class>/<image>) through
mindspore.dataset.ImageFolderDataset.

    classes = find_classes(train_dir)                       # one-line DataError if unusable
    data = create_dataset(train_dir, classes, transforms, batch_size, is_training=True, ...)
    for images, targets in data.loader.create_tuple_iterator(num_epochs=1): ...
    data.bad_images.take()   # paths skipped since the last call

Training batches carry soft targets (label smoothing, then Mixup/CutMix on whole batches);
evaluation batches carry integer labels and keep the last, smaller batch.
"""
import os
from dataclasses import dataclass

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision
from mindspore.dataset.transforms.transforms import TensorOperation

from .decode import BadImageLog, SafeDecode
from .sampler import RepeatAugSampler, eval_shard


class DataError(ValueError):
    """An unusable data directory, reported as one line before anything compiles."""


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
    bad_images: BadImageLog   # corrupt files met so far
    num_samples: int          # images this rank reads (before skipping bad ones)
    batch_size: int


def create_dataset(split_dir, classes, transforms, batch_size, is_training, num_classes,
                   channels=3, rank=0, world_size=1, seed=0, epoch=0, shuffle=True, aug_repeats=0,
                   label_smoothing=0.0, mixup=0.0, cutmix=0.0, cutmix_prob=1.0,
                   mixup_switch_prob=0.5, drop_remainder=True, num_parallel_workers=4):
    """One epoch's pipeline for this rank. Training: the (seed, epoch) permutation, dealt to the
    ranks (repeated augmentation if ``aug_repeats`` > 1); augmentation seeded by
    (seed, epoch, rank), so a resumed run sees the same images and augmentations."""
    class_indexing = {name: i for i, name in enumerate(classes)}
    num_files = ds.ImageFolderDataset(split_dir, class_indexing=class_indexing,
                                      shuffle=False).get_dataset_size()
    if is_training:
        ds.config.set_seed(_mix(seed, epoch, rank))
        sampler = RepeatAugSampler(num_files, world_size, rank, aug_repeats, seed, epoch, shuffle)
    else:
        sampler = eval_shard(num_files, world_size, rank)
    data = ds.ImageFolderDataset(split_dir, class_indexing=class_indexing, sampler=sampler,
                                 decode=False, num_parallel_workers=num_parallel_workers)
    bad_images = BadImageLog(split_dir, classes)
    data = data.map(SafeDecode(channels), input_columns=['image'],
                    output_columns=['image', 'ok', 'digest'],
                    num_parallel_workers=num_parallel_workers)
    data = data.filter(bad_images, input_columns=['ok', 'digest', 'label'])
    data = data.project(['image', 'label'])
    # Python ops draw from one shared RNG: run them in a single worker, in row order, so the
    # augmentation is reproducible (RandomErasing is cheap; the C++ ops keep all workers).
    python_ops = [op for op in transforms if not isinstance(op, TensorOperation)]
    data = data.map([op for op in transforms if isinstance(op, TensorOperation)],
                    input_columns=['image'], num_parallel_workers=num_parallel_workers)
    if python_ops:
        data = data.map(python_ops, input_columns=['image'], num_parallel_workers=1)
    if not is_training:
        data = data.map(T.TypeCast(ms.int32), input_columns=['label'])
        return Loader(data.batch(batch_size, drop_remainder=False), bad_images,
                      len(range(rank, num_files, world_size)), batch_size)
    data = data.map([T.OneHot(num_classes, smoothing_rate=label_smoothing),
                     T.TypeCast(ms.float32)], input_columns=['label'])
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    mix = batch_mixing(mixup, cutmix, cutmix_prob, mixup_switch_prob)
    if mix is not None:
        data = data.map(mix, input_columns=['image', 'label'])
    # A skipped image shortens this rank's epoch; the next pass tops it up so that every rank
    # runs the same number of steps (the loop takes exactly num_samples // batch_size batches).
    return Loader(data.repeat(2), bad_images, len(sampler), batch_size)


def batch_mixing(mixup, cutmix, prob, switch_prob):
    """Mixup and/or CutMix on whole batches of soft targets: applied with probability ``prob``;
    when both are on, each mixed batch picks one of them at random."""
    ops = []
    if mixup > 0:
        ops.append(vision.MixUpBatch(alpha=mixup))
    if cutmix > 0:
        ops.append(vision.CutMixBatch(vision.ImageBatchFormat.NCHW, alpha=cutmix, prob=1.0))
    if not ops or prob <= 0:
        return None
    if len(ops) == 2 and abs(switch_prob - 0.5) > 1e-9:
        raise ValueError("mixup_switch_prob: mindspore's RandomChoice picks Mixup or CutMix "
                         "with equal chance; only 0.5 is supported")
    mix = ops[0] if len(ops) == 1 else T.RandomChoice(ops)
    return mix if prob >= 1.0 else T.RandomApply([mix], prob=prob)


def _mix(*values):
    """A 32-bit seed from several integers (stable across runs and machines)."""
    h = 0x345678
    for v in values:
        h = (h * 1000003) ^ (int(v) & 0xFFFFFFFF)
    return h % (2 ** 31 - 1)
