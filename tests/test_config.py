"""The config: MindCV keys, YAML merged under the command line, clear errors for unknown keys,
and the official recipe in every shipped YAML."""
import glob
import os
import subprocess
import sys

import pytest

from mindcoat.config import ConfigError, KEYS, parse_config
from train_helpers import REPO, env

CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'coat', '*.yaml')))

MINDCV_KEYS = '''mode distribute val_while_train val_interval log_interval seed dataset data_dir
train_split val_split num_parallel_workers shuffle batch_size drop_remainder image_resize scale
ratio hflip color_jitter interpolation auto_augment re_prob mean std crop_pct mixup cutmix
cutmix_prob aug_repeats model num_classes in_channels drop_rate drop_path_rate pretrained
ckpt_path keep_checkpoint_max ckpt_save_dir ckpt_save_interval ckpt_save_policy epoch_size
dataset_sink_mode ema ema_decay clip_grad clip_value opt weight_decay scheduler lr min_lr
warmup_epochs warmup_factor decay_epochs loss label_smoothing amp_level loss_scale_type
loss_scale drop_overflow_update'''.split()


def test_every_mindcv_key_exists():
    assert [k for k in MINDCV_KEYS if k not in KEYS] == []


def test_yaml_then_command_line(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('batch_size: 7\nlr: 0.1\ndistribute: True\nscale: [0.5, 1.0]\n')
    for flag in ('-c', '--config'):
        cfg = parse_config([flag, str(path), '--lr', '0.2', '--distribute', 'False'])
        assert (cfg.batch_size, cfg.lr, cfg.distribute, list(cfg.scale)) == (7, 0.2, False,
                                                                             [0.5, 1.0])
    assert parse_config(['--scale', '0.3,1.0', '--ema', 'true']).scale == (0.3, 1.0)


@pytest.mark.parametrize('argv, where, typo, closest', [
    (['--batchsize', '8'], 'the command line', 'batchsize', 'batch_size'),
    (['--warmup_epoch=3'], 'the command line', 'warmup_epoch', 'warmup_epochs'),
])
def test_unknown_key_on_command_line(argv, where, typo, closest):
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert str(e.value) == f"unknown config key '{typo}' in {where}; did you mean '{closest}'?"


def test_unknown_key_in_yaml_is_one_line_from_train_py(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('model: coat_lite_tiny\nlabel_smothing: 0.1\n')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '-c', str(path)],
                          cwd=str(tmp_path), env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (f"error: unknown config key 'label_smothing' in {path}; "
                                   f"did you mean 'label_smoothing'?")


def test_missing_data_dir_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '--data_dir',
                           str(tmp_path / 'nowhere'), '--device_target', 'CPU'],
                          cwd=str(tmp_path), env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: data folder not found: ')
    assert str(tmp_path / 'nowhere' / 'train') in lines[0]


def test_shipped_configs_carry_the_official_recipe():
    names = {os.path.basename(p)[:-len('_ascend.yaml')] for p in CONFIGS}
    assert names == {'coat_lite_tiny', 'coat_lite_mini', 'coat_lite_small', 'coat_lite_medium',
                     'coat_lite_medium_384', 'coat_tiny', 'coat_mini', 'coat_small'}
    for path in CONFIGS:
        cfg = parse_config(['-c', path])
        name = os.path.basename(path)[:-len('_ascend.yaml')]
        assert cfg.model == name and cfg.distribute and cfg.opt == 'adamw'
        assert (tuple(cfg.betas), cfg.eps, cfg.label_smoothing, cfg.lr_base_batch) == \
            ((0.9, 0.999), 1e-8, 0.1, 512)
        assert (cfg.mixup, cfg.cutmix, cfg.mixup_switch_prob, cfg.re_prob, cfg.aug_repeats) == \
            (0.8, 1.0, 0.5, 0.25, 3)
        assert cfg.auto_augment == 'rand-m9-mstd0.5-inc1' and cfg.interpolation == 'bicubic'
        if name == 'coat_lite_medium_384':
            assert (cfg.batch_size, cfg.drop_path_rate, cfg.ema, cfg.warmup_epochs,
                    cfg.clip_grad, cfg.clip_value, cfg.image_resize, cfg.lr, cfg.min_lr,
                    cfg.weight_decay, cfg.epoch_size, cfg.ckpt_save_interval, cfg.scheduler) == \
                (32, 0.2, False, 0, True, 5.0, 384, 5e-6, 5e-6, 1e-8, 6, 1, 'constant')
            continue
        assert (cfg.epoch_size, cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.weight_decay) == \
            (300, 5e-4, 1e-5, 1e-6, 0.05)
        special = {'coat_small': (128, 0.2, False, 20, True),
                   'coat_lite_medium': (128, 0.3, False, 20, True)}
        assert (cfg.batch_size, cfg.drop_path_rate, cfg.ema, cfg.warmup_epochs, cfg.clip_grad) \
            == special.get(name, (256, 0.1, True, 5, False))
        assert cfg.ema_decay == 0.99996 and cfg.clip_value == 5.0
