"""Shared helpers for the trainer tests: tiny image folders and a tiny CoaT."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A CoaT-Lite small enough to compile and train in seconds on 2 CPU cores.
TINY_KWARGS = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1),
                   mlp_ratios=(2, 2, 2, 2))
TINY = repr(TINY_KWARGS)  # as --model_kwargs
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def load_script(relpath):
    """A repository script (train.py, validate.py, tools/*.py) imported as a module by path."""
    name = os.path.splitext(os.path.basename(relpath))[0] + '_script'
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_color_folder(root, per_class=(12, 4), size=32, classes=4, seed=0):
    """root/train and root/val: each class is a colour, drawn as a square of random size and
    place on a noisy grey background (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    for split, count in zip(('train', 'val'), per_class):
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                img = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
                side = int(rng.integers(size // 2, size))
                y, x = rng.integers(0, size - side + 1, 2)
                img[y:y + side, x:x + side] = COLORS[c]
                Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.png'))
    return root


def deterministic_flags():
    """Augmentation off: data-parallel and single-process runs must see identical pixels."""
    return ['--scale', '1.0,1.0', '--ratio', '1.0,1.0', '--hflip', '0', '--auto_augment', 'none',
            '--color_jitter', '0', '--re_prob', '0', '--mixup', '0', '--cutmix', '0',
            '--drop_path_rate', '0', '--aug_repeats', '0']


# The parser defaults these tests were written against (before the defaults became MindCV's),
# given explicitly so that each test keeps its meaning.
PRE_MINDCV_DEFAULTS = [
    '--val_while_train', 'True', '--ratio', '0.75,1.3333333', '--auto_augment',
    'rand-m9-mstd0.5-inc1', '--re_prob', '0.25', '--re_value', 'random', '--re_sampling', 'timm',
    '--re_scale', '0.02,0.3333333333333333', '--re_ratio', '0.3,3.3333333333333335', '--mixup',
    '0.8', '--cutmix', '1.0', '--drop_rate', '0.0', '--drop_path_rate', '0.0', '--opt', 'adamw',
    '--weight_decay', '0.05', '--weight_decay_filter', 'None', '--eps', '1e-8', '--decay_epochs',
    'None', '--label_smoothing', '0.1', '--amp_level', 'O2', '--loss_scale_type', 'dynamic',
    '--loss_scale', '65536', '--drop_overflow_update', 'True']


def base_flags(data_dir, out_dir, batch_size, epochs, extra=()):
    return ['--data_dir', str(data_dir), '--ckpt_save_dir', str(out_dir), '--model',
            'coat_lite_tiny', '--model_kwargs', TINY, '--num_classes', '4', '--image_resize',
            '32', '--batch_size', str(batch_size), '--epoch_size', str(epochs),
            '--num_parallel_workers', '2', '--distribute', 'False', '--ema', 'True',
            '--ema_decay', '0.9', '--clip_grad', 'True', '--clip_value', '1.0', '--lr', '2e-3',
            '--lr_base_batch', 'None', '--warmup_epochs', '1', '--warmup_lr', '1e-4',
            '--min_lr', '1e-4', '--device_target', 'CPU', '--log_interval', '1000'] + \
        PRE_MINDCV_DEFAULTS + list(extra)


def env():
    e = dict(os.environ, PYTHONPATH=REPO, GLOG_v='3')
    return e


def run_train(args, cwd, timeout=1800, check=True):
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py')] + list(args), cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-3000:]}')
    return proc


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_params(path, prefix_filter=None):
    import mindspore as ms
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items()
            if hasattr(v, 'asnumpy') and v.ndim > 0}
