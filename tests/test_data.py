"""The data pipeline: soft targets under Mixup/CutMix, corrupt images skipped and reported by
path, one-line errors for unusable folders, samplers, and reproducible epochs."""
import os

import numpy as np
import pytest

from mindcoat.data import DataError, create_dataset, create_transforms, find_classes, \
    parse_rand_augment, rank_indices
from train_helpers import make_color_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return make_color_folder(root, per_class=(10, 3), size=40, classes=3)


def batches(loader, count=None):
    it = loader.loader.create_tuple_iterator(num_epochs=1, output_numpy=True)
    return [next(it) for _ in range(count or loader.num_samples // loader.batch_size)]


def train_loader(folder, epoch=0, **kw):
    train = os.path.join(folder, 'train')
    tf = create_transforms(True, image_size=32)
    args = dict(label_smoothing=0.1, mixup=0.8, cutmix=1.0, num_parallel_workers=2, seed=3)
    args.update(kw)
    return create_dataset(train, find_classes(train), tf, 4, True, 3, epoch=epoch, **args)


def test_soft_targets_sum_to_one_under_mixup_and_cutmix(folder):
    out = batches(train_loader(folder))
    targets = np.concatenate([t for _, t in out])
    images = np.concatenate([x for x, _ in out])
    assert images.shape[1:] == (3, 32, 32) and images.dtype == np.float32
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-5)
    assert targets.min() >= 0.1 / 3 - 1e-6  # label smoothing floor
    # mixing really happened: some rows carry two classes well above the smoothing floor
    assert ((targets > 0.1).sum(1) >= 2).any()


def test_epochs_reproduce_from_seed_and_epoch(folder):
    a, b = batches(train_loader(folder, epoch=1)), batches(train_loader(folder, epoch=1))
    c = batches(train_loader(folder, epoch=2))
    assert all(np.array_equal(x1, x2) and np.array_equal(t1, t2)
               for (x1, t1), (x2, t2) in zip(a, b))
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))


def test_corrupt_images_are_skipped_and_reported(tmp_path):
    root = make_color_folder(str(tmp_path), per_class=(6, 2), size=32, classes=2)
    bad = os.path.join(root, 'train', 'class_1', 'broken.jpg')
    with open(bad, 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    good = os.path.join(root, 'train', 'class_0', '000.png')
    truncated = os.path.join(root, 'train', 'class_0', 'truncated.png')
    with open(good, 'rb') as f, open(truncated, 'wb') as g:
        g.write(f.read()[:60])
    train = os.path.join(root, 'train')
    tf = create_transforms(True, image_size=32, auto_augment=None, re_prob=0)
    loader = create_dataset(train, find_classes(train), tf, 2, False, 2, num_parallel_workers=2)
    seen = sum(len(t) for _, t in loader.loader.create_tuple_iterator(num_epochs=1,
                                                                   output_numpy=True))
    assert seen == 12  # 14 files, 2 unreadable, every readable one kept
    assert sorted(loader.bad_images.take()) == sorted([bad, truncated])
    assert loader.bad_images.take() == []  # reported once


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match='data folder not found'):
        find_classes(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no class folders'):
        find_classes(str(tmp_path / 'empty'))
    (tmp_path / 'empty' / 'cls').mkdir()
    with pytest.raises(DataError, match='no images'):
        find_classes(str(tmp_path / 'empty'))


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


def test_eval_transform_and_rand_augment_spec(folder):
    assert parse_rand_augment('rand-m9-mstd0.5-inc1') == (2, 9)
    assert parse_rand_augment('rand-m7-n3') == (3, 7)
    with pytest.raises(ValueError):
        parse_rand_augment('autoaug-v0')
    val = os.path.join(folder, 'val')
    tf = create_transforms(False, image_size=32, crop_pct=0.9)
    loader = create_dataset(val, find_classes(val), tf, 4, False, 3, num_parallel_workers=2)
    out = list(loader.loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert [len(y) for _, y in out] == [4, 4, 1]  # the last batch is kept
    assert out[0][0].shape == (4, 3, 32, 32) and out[0][1].dtype == np.int32
