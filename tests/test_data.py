"""The data pipeline (create_loader): the same augmented batches whatever num_parallel_workers
is, soft targets under Mixup/CutMix, unreadable images skipped and reported by path (identical
files included), repeated augmentation only when distributed, samplers, one-line errors."""
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from mindcoat.config import parse_config
from mindcoat.data import EvalTransform, TrainTransform, create_loader, find_classes, \
    rank_indices, resolve_data_settings
from mindcoat.data.transforms import random_erasing
from mindcoat.errors import DataError
from train_helpers import REPO, make_color_folder

RECIPE = os.path.join(REPO, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return make_color_folder(root, per_class=(10, 3), size=40, classes=3)


def recipe(*flags):
    """The shipped coat_lite_tiny recipe (RandAugment, erasing, Mixup/CutMix, smoothing, 8
    workers), at 32 px and batch 4 on 3 classes."""
    return parse_config(['-c', RECIPE, '--image_resize', '32', '--batch_size', '4',
                         '--num_classes', '3', '--seed', '3'] + list(flags))


def loader(cfg, split_dir, is_training=True, **kw):
    settings = resolve_data_settings(cfg, cfg.model)
    return create_loader(cfg, split_dir, find_classes(split_dir), settings, is_training, **kw)


def batches(data, count=None):
    it = data.loader.create_tuple_iterator(num_epochs=1, output_numpy=True)
    return [next(it) for _ in range(count or data.num_samples // data.batch_size)]


def same(a, b):
    return all(np.array_equal(x1, x2) and np.array_equal(t1, t2)
               for (x1, t1), (x2, t2) in zip(a, b))


def test_same_batches_whatever_the_worker_count(folder):
    """The recipe's full augmentation: 1 and 2 workers give bit-identical batches for the same
    (seed, epoch, rank); another epoch, rank or seed gives others."""
    train = os.path.join(folder, 'train')
    one = batches(loader(recipe('--num_parallel_workers', '1'), train, epoch=1))
    two = batches(loader(recipe('--num_parallel_workers', '2'), train, epoch=1))
    assert len(one) == 30 // 4 and same(one, two)
    assert not same(one, batches(loader(recipe(), train, epoch=2)))
    assert not same(one, batches(loader(recipe('--seed', '4'), train, epoch=1)))
    rank1 = batches(loader(recipe(), train, epoch=1, rank=1, world=2))
    assert not same(one[:len(rank1)], rank1)


def test_a_sample_is_a_function_of_seed_epoch_rank_position(folder):
    """Without mixing, row p of the epoch is TrainTransform(image, rng(seed, epoch, rank, p)):
    what a resumed run recomputes."""
    train = os.path.join(folder, 'train')
    cfg = recipe('--mixup', '0', '--cutmix', '0', '--label_smoothing', '0', '--shuffle', 'False')
    data = loader(cfg, train, epoch=5)
    images, targets = batches(data, 1)[0]
    settings = resolve_data_settings(cfg, cfg.model)
    first = sorted(os.listdir(os.path.join(train, 'class_0')))[:4]
    for p, name in enumerate(first):
        with Image.open(os.path.join(train, 'class_0', name)) as img:
            rng = np.random.default_rng((3, 5, 0, 0, p))
            expected = TrainTransform(settings, cfg)(img.convert('RGB'), rng)
        np.testing.assert_array_equal(images[p], expected)
    np.testing.assert_array_equal(targets, np.eye(3, dtype=np.float32)[[0, 0, 0, 0]])


def test_soft_targets_sum_to_one_under_mixup_and_cutmix(folder):
    out = batches(loader(recipe(), os.path.join(folder, 'train')))
    targets = np.concatenate([t for _, t in out])
    images = np.concatenate([x for x, _ in out])
    assert images.shape[1:] == (3, 32, 32) and images.dtype == np.float32
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-5)
    assert targets.min() >= 0.1 / 3 - 1e-6  # label smoothing floor
    # mixing happened, and one lambda per batch: every row of a batch has the same two weights
    assert ((targets > 0.1).sum(1) >= 2).any()
    for _, t in out:
        assert len(np.unique(np.round(np.sort(t, axis=1)[:, -2:], 5), axis=0)) <= 2


def test_unreadable_images_are_skipped_and_reported_by_path(tmp_path):
    """Two byte-identical corrupt files in different folders are both named; a truncated PNG
    too; the training epoch is topped up to its full number of batches."""
    root = make_color_folder(str(tmp_path), per_class=(6, 2), size=32, classes=2)
    train = os.path.join(root, 'train')
    bad = os.path.join(train, 'class_1', 'broken.jpg')
    with open(bad, 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    twin = os.path.join(train, 'class_0', 'broken_copy.jpg')
    shutil.copy(bad, twin)
    truncated = os.path.join(train, 'class_0', 'truncated.png')
    with open(os.path.join(train, 'class_0', '000.png'), 'rb') as f, open(truncated, 'wb') as g:
        g.write(f.read()[:60])
    os.mkfifo(os.path.join(train, 'class_0', 'pipe.jpg'))  # not a regular file: never opened
    cfg = recipe('--num_classes', '2', '--batch_size', '2', '--num_parallel_workers', '2')
    data = loader(cfg, train, is_training=False)
    seen = sum(len(t) for _, t in data.loader.create_tuple_iterator(num_epochs=1,
                                                                   output_numpy=True))
    assert seen == 12  # 15 files, 3 unreadable, every readable one kept
    assert sorted(data.bad_images.take()) == sorted([bad, twin, truncated])
    assert data.bad_images.take() == []  # reported once
    train_data = loader(cfg, train, epoch=0)
    assert train_data.num_samples == 15
    assert len(batches(train_data)) == 15 // 2  # topped up
    assert set(train_data.bad_images.take()) <= {bad, twin, truncated}


def test_a_mostly_unreadable_split_ends_early_naming_every_file(tmp_path):
    """More unreadable images than the top-up covers: the epoch runs short (the trainer stops
    there) and every unreadable file is named."""
    root = make_color_folder(str(tmp_path), per_class=(3, 1), size=32, classes=2)
    train = os.path.join(root, 'train')
    bad = []
    for k in range(10):
        bad.append(os.path.join(train, f'class_{k % 2}', f'bad_{k}.jpg'))
        with open(bad[-1], 'wb') as f:
            f.write(b'not an image %d' % k)
    data = loader(recipe('--num_classes', '2', '--batch_size', '2'), train)
    got = list(data.loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(got) < data.num_samples // 2
    assert sorted(data.bad_images.take()) == sorted(bad)


def test_repeated_augmentation_only_when_distributed(folder):
    """DeiT/CoaT use RASampler only with --distributed: aug_repeats 3 on one device is off unless
    aug_repeats_single_device forces it; under several ranks it is on."""
    train = os.path.join(folder, 'train')
    assert loader(recipe(), train).aug_repeats == 0
    assert loader(recipe('--aug_repeats_single_device', 'True'), train).aug_repeats == 3
    assert loader(recipe(), train, rank=1, world=2).aug_repeats == 3
    assert loader(recipe('--aug_repeats', '0'), train, rank=1, world=2).aug_repeats == 0


def test_repeated_augmentation_sampler():
    n, world = 24, 4
    shards = [rank_indices(n, world, r, repeats=3, seed=5, epoch=0) for r in range(world)]
    assert all(len(s) == n // world for s in shards)
    # the three copies of an image sit on three different ranks at the same position
    for pos in range(len(shards[0])):
        ids = [s[pos] for s in shards]
        assert len(set(ids)) <= 2
    plain = [rank_indices(n, world, r, repeats=1, seed=5, epoch=0) for r in range(world)]
    assert sorted(sum(plain, [])) == list(range(n))  # without repeats: a partition
    assert rank_indices(n, 1, 0, seed=5, epoch=0) != rank_indices(n, 1, 0, seed=5, epoch=1)


def test_eval_loader_is_the_eval_transform_in_file_order(folder):
    val = os.path.join(folder, 'val')
    cfg = recipe('--num_parallel_workers', '2')
    data = loader(cfg, val, is_training=False)
    out = list(data.loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert [len(y) for _, y in out] == [4, 4, 1]  # the last batch is kept
    assert out[0][1].dtype == np.int32
    images = np.concatenate([x for x, _ in out])
    tf = EvalTransform(resolve_data_settings(cfg, cfg.model))
    files = [os.path.join(val, c, f) for c in find_classes(val)
             for f in sorted(os.listdir(os.path.join(val, c)))]
    for x, path in zip(images, files):
        with Image.open(path) as img:
            np.testing.assert_array_equal(x, tf(img.convert('RGB')))
    shard = loader(cfg, val, is_training=False, rank=1, world=2)
    assert shard.num_samples == 4  # files 1, 3, 5, 7 of 9


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match='data folder not found'):
        find_classes(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no class folders'):
        find_classes(str(tmp_path / 'empty'))
    (tmp_path / 'empty' / 'cls').mkdir()
    with pytest.raises(DataError, match='no images'):
        find_classes(str(tmp_path / 'empty'))


# --- MindCV's augmentation and sampling keys ---------------------------------------------------

class PythonRandom:
    """The numpy Generator methods random_erasing calls, answered from Python's ``random`` and
    numpy's global generator: the sources mindspore.dataset.vision.RandomErasing draws from, so
    that both see the same numbers."""

    def random(self):
        return random.random()

    def uniform(self, low, high):
        return random.uniform(low, high)

    def integers(self, low, high):  # numpy: high excluded; random.randint: included
        return random.randint(low, high - 1)

    def standard_normal(self, shape, dtype):
        return np.random.normal(0.0, 1.0, size=shape).astype(dtype)


@pytest.mark.parametrize('value', [0, [1, 20, 3], 'random'])
def test_mindspore_erasing_is_mindspores_random_erasing(value):
    """re_sampling: mindspore with MindCV's re_* values gives, draw for draw, what MindCV's
    vision.RandomErasing(prob, scale, ratio, value, max_attempts) does to a normalised image:
    box (uniform aspect, w from the area), fill (a number, one per channel, or N(0, 1) noise)."""
    import mindspore.dataset.vision as vision
    x = np.random.default_rng(0).normal(size=(3, 24, 40)).astype(np.float32)
    erased = 0
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        theirs = vision.RandomErasing(prob=0.7, scale=(0.02, 0.4), ratio=(0.3, 3.3),
                                      value=tuple(value) if isinstance(value, list) else value,
                                      max_attempts=3)(x.copy())
        random.seed(seed)
        np.random.seed(seed)
        mine = random_erasing(x.copy(), 0.7, PythonRandom(), area=(0.02, 0.4), aspect=(0.3, 3.3),
                              value=value, max_attempts=3, sampling='mindspore')
        np.testing.assert_array_equal(mine, theirs)
        erased += not np.array_equal(mine, x)
    assert 3 <= erased < 12  # both erased and untouched images were compared


def test_vflip_flips_top_to_bottom(folder):
    """vflip 1.0 mirrors every training image vertically (MindCV's RandomVerticalFlip, after
    the horizontal flip); 0 draws nothing, so the other augmentations keep their draws."""
    cfg = recipe('--mixup', '0', '--cutmix', '0', '--auto_augment', 'none', '--re_prob', '0',
                 '--color_jitter', '0', '--hflip', '0', '--scale', '1,1', '--ratio', '1,1')
    settings = resolve_data_settings(cfg, cfg.model)
    flipped = parse_config(['-c', RECIPE, '--vflip', '1.0', '--hflip', '0', '--scale', '1,1',
                            '--ratio', '1,1', '--auto_augment', 'none', '--color_jitter', '0',
                            '--re_prob', '0', '--image_resize', '32'])
    path = os.path.join(folder, 'train', 'class_0', '000.png')
    with Image.open(path) as img:
        plain = TrainTransform(settings, cfg)(img.convert('RGB'), np.random.default_rng(1))
        upside = TrainTransform(settings, flipped)(img.convert('RGB'), np.random.default_rng(1))
    assert not np.array_equal(plain, plain[:, ::-1])
    np.testing.assert_array_equal(upside, plain[:, ::-1])


def test_num_samples_reads_a_seeded_subset_per_epoch(folder):
    """num_samples 8 (of 30): 8 images per epoch and device, another subset each epoch, the same
    subset for the same (seed, epoch); per rank under msrun, as MindCV's DistributedSampler."""
    train = os.path.join(folder, 'train')
    cfg = recipe('--num_samples', '8', '--aug_repeats', '0')
    assert loader(cfg, train).num_samples == 8
    subsets = [rank_indices(30, 1, 0, seed=3, epoch=e, limit=8) for e in (0, 0, 1)]
    assert subsets[0] == subsets[1] and set(subsets[0]) != set(subsets[2])
    assert len(set(subsets[0])) == 8
    assert len(rank_indices(30, 2, 1, seed=3, epoch=0, limit=8)) == 8
    assert len(rank_indices(30, 4, 1, seed=3, epoch=0, limit=20)) == 7  # never more than a share


def test_eval_shuffle_reorders_but_reads_every_image_once(folder):
    val = os.path.join(folder, 'val')

    def labels(*flags):
        data = loader(recipe('--batch_size', '9', *flags), val, is_training=False)
        return np.concatenate([y for _, y in data.loader.create_tuple_iterator(
            num_epochs=1, output_numpy=True)])

    plain, shuffled = labels(), labels('--eval_shuffle', 'True')
    assert list(plain) == sorted(plain) and list(shuffled) != list(plain)
    assert sorted(shuffled) == sorted(plain)
    assert list(labels('--eval_shuffle', 'True')) == list(shuffled)  # seeded
