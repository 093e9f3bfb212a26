"""MindCV's four CoaT YAMLs (re-created key for key in tests/fixtures/mindcv_configs/, shipped as
configs/coat/mindcv/) parse unchanged into what MindCV's own parser makes of them
(tools/make_mindcv_config_fixtures.py ran it), build everything they ask for, and coat_tiny's
(Lion, EMA, dynamic loss scale) trains one tiny epoch with train.py and validates with
validate.py, given only the overrides that make it tiny.

Cost: one train.py + validate.py run (coat_tiny, the only YAML with Lion and an EMA, so the one
whose compiled step differs from the AdamW step tests/test_train.py runs); the three others go
through everything train.py does before compiling (checks, model, optimizer, EMA, schedule, one
augmented batch) in this process."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindcoat.config import check_training, parse_config
from train_helpers import REPO, TINY, env, make_color_folder, read_log

FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'mindcv_configs')
SHIPPED = os.path.join(REPO, 'configs', 'coat', 'mindcv')
NAMES = ['coat_lite_mini_ascend.yaml', 'coat_lite_tiny_ascend.yaml', 'coat_mini_ascend.yaml',
         'coat_tiny_ascend.yaml']
# A CoaT (not Lite) small enough for CI: 16 channels, one block per stage, one parallel block.
TINY_COAT = '{embed_dims: [16, 16, 16, 16], serial_depths: [1, 1, 1, 1], parallel_depth: 1}'
# Keys whose value here is MindCV's under another spelling (README: "Coming from MindCV").
SPELLED_OTHERWISE = {'ckpt_path': ('', None),   # both: no checkpoint
                     'eps': (1e-10, None)}     # MindCV's AdamW ignores its eps: 1e-8 both
DEFAULTS_WIDER = {'device_target', 'mean', 'std', 'dataset_sink_mode'}  # compared below


def mindcv_parsed():
    with open(os.path.join(FIXTURES, 'mindcv_parsed.json')) as f:
        return json.load(f)['configs']


def test_the_shipped_files_are_the_fixtures():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(FIXTURES, '*.yaml'))) \
        == NAMES == sorted(os.listdir(SHIPPED))
    for name in NAMES:
        with open(os.path.join(FIXTURES, name), 'rb') as a, \
                open(os.path.join(SHIPPED, name), 'rb') as b:
            assert a.read() == b.read(), name


@pytest.mark.parametrize('name', NAMES)
def test_parsed_as_mindcv_parses_it(name):
    """Every one of MindCV's 86 keys, written or left out, has MindCV's value (the few spelled
    otherwise are equivalent, and mean/std resolve to MindCV's numbers)."""
    from mindcoat.data import resolve_data_settings
    theirs = mindcv_parsed()[name]
    cfg = parse_config(['-c', os.path.join(SHIPPED, name)])
    check_training(cfg)  # nothing refused
    for key, value in theirs.items():
        mine = getattr(cfg, key)
        if key in SPELLED_OTHERWISE:
            assert (value, mine) == SPELLED_OTHERWISE[key], key
        elif key not in DEFAULTS_WIDER:
            assert (list(mine) if isinstance(mine, tuple) else mine) == value, key
    settings = resolve_data_settings(cfg, cfg.model)
    np.testing.assert_allclose(settings.mean, np.asarray(theirs['mean']) / 255, rtol=1e-12)
    np.testing.assert_allclose(settings.std, np.asarray(theirs['std']) / 255, rtol=1e-12)
    assert cfg.device_target == 'auto' and theirs['device_target'] == 'Ascend'
    assert cfg.ema_warmup  # MindCV's EMA ramps its decay up


@pytest.mark.parametrize('name', ['coat_lite_tiny_ascend.yaml', 'coat_lite_mini_ascend.yaml',
                                  'coat_mini_ascend.yaml'])
def test_everything_before_the_first_step_builds(name, tmp_path):
    """train.py's own build (model, optimizer, EMA, loss scale), lr schedule and first
    augmented batch for the YAML as shipped, tiny."""
    from mindcoat.data import create_loader, resolve_data_settings
    from mindcoat.optim import lr_schedule_for
    from mindcoat.engine import context, trainer as train
    data = make_color_folder(str(tmp_path / 'data'), per_class=(4, 1))
    kwargs = TINY if 'lite' in name else TINY_COAT
    cfg = parse_config(['-c', os.path.join(SHIPPED, name), '--data_dir', data, '--distribute',
                        'False', '--model_kwargs', kwargs, '--image_resize', '32',
                        '--batch_size', '4'])
    check_training(cfg)
    model, _, _, ema, _, classes, train_dir, _ = train.build(cfg, context.Run(device='CPU'))
    assert model.head.weight.shape[0] == 1000 and (ema is not None) == cfg.ema
    settings = resolve_data_settings(cfg, cfg.model)
    loader = create_loader(cfg, train_dir, classes, settings, True)
    images, targets = next(loader.loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 1000)
    peak, lrs = lr_schedule_for(cfg, 4, 8)
    assert peak == cfg.lr and len(lrs) == 4 * cfg.epoch_size  # lr as written: MindCV's
    assert np.isfinite(lrs).all() and lrs.max() <= cfg.lr * (1 + 1e-12)


def test_coat_tiny_trains_one_epoch_and_validates(tmp_path):
    """MindCV's coat_tiny YAML (Lion, EMA 0.9995 with its ramp, dynamic loss scale, top_k
    checkpoints, validation every epoch) as shipped: --warmup_epochs 0 is needed because its
    20 warmup epochs are longer than the 1-epoch run (refused otherwise); the rest shrinks it
    (two steps of 4 images, 4 validation images)."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 1))
    config = os.path.join(SHIPPED, 'coat_tiny_ascend.yaml')
    tiny = ['--model_kwargs', TINY_COAT, '--image_resize', '32', '--batch_size', '4',
            '--num_parallel_workers', '2']
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '-c', config,
                           '--data_dir', data, '--distribute', 'False', '--epoch_size', '1',
                           '--warmup_epochs', '0', '--num_classes', '4'] + tiny,
                          cwd=str(tmp_path), env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / 'ckpt'  # the YAML's ckpt_save_dir: ./ckpt/
    (record,) = read_log(str(out))
    assert record['epoch'] == 1 and np.isfinite(record['train_loss'])
    assert 'val_top1' in record and 'ema_val_top1' in record  # val_while_train, ema
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'validate.py'), '-c', config,
                           '--data_dir', data, '--ckpt_path', str(out / 'coat_tiny-latest.ckpt'),
                           '--json'] + tiny, cwd=str(tmp_path), env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the weights the trainer's validation found better (the YAML's ema: True made both)
    ema_better = record['ema_val_top1'] > record['val_top1']
    assert result['num_images'] == 4 and result['ema'] is ema_better
    assert ('evaluating the EMA weights' in proc.stderr) is ema_better
    assert result['top1'] == pytest.approx(
        record['ema_val_top1' if ema_better else 'val_top1'], abs=1e-6)
