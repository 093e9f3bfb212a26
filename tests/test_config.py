"""The config: MindCV keys, YAML merged under the command line, clear errors for unknown keys,
and the official recipe in every shipped YAML."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from mindcoat.config import ConfigError, KEYS, parse_config
from train_helpers import REPO, env, make_color_folder

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


def official(name):
    """The official recipe of a variant, as the official parser (src/args.py) resolves its
    training command (tools/make_lr_fixtures.py)."""
    with open(os.path.join(REPO, 'tests', 'fixtures', 'lr', 'official_recipes.json')) as f:
        return json.load(f)['recipes'][name]['args']


def test_shipped_configs_carry_the_official_recipe():
    names = {os.path.basename(p)[:-len('_ascend.yaml')] for p in CONFIGS}
    assert names == {'coat_lite_tiny', 'coat_lite_mini', 'coat_lite_small', 'coat_lite_medium',
                     'coat_lite_medium_384', 'coat_tiny', 'coat_mini', 'coat_small'}
    for path in CONFIGS:
        cfg = parse_config(['-c', path])
        name = os.path.basename(path)[:-len('_ascend.yaml')]
        args = official(name)
        assert cfg.model == name and cfg.distribute and cfg.opt == args['opt'] == 'adamw'
        mine = dict(batch_size=cfg.batch_size, epochs=cfg.epoch_size, drop=cfg.drop_rate,
                    drop_path=cfg.drop_path_rate, model_ema=cfg.ema,
                    model_ema_decay=cfg.ema_decay, opt_eps=cfg.eps,
                    clip_grad=cfg.clip_value if cfg.clip_grad else None,
                    weight_decay=cfg.weight_decay, lr=cfg.lr, min_lr=cfg.min_lr,
                    warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                    color_jitter=cfg.color_jitter, aa=cfg.auto_augment,
                    smoothing=cfg.label_smoothing, train_interpolation=cfg.interpolation,
                    reprob=cfg.re_prob, mixup=cfg.mixup, cutmix=cfg.cutmix,
                    mixup_prob=cfg.cutmix_prob, mixup_switch_prob=cfg.mixup_switch_prob,
                    input_size=cfg.image_resize, seed=cfg.seed, save_freq=cfg.val_interval)
        assert mine == {k: args[k] for k in mine}, name
        assert tuple(cfg.betas) == (0.9, 0.999) and args['opt_betas'] is None  # AdamW default
        assert cfg.aug_repeats == 3 and args['repeated_aug']  # RASampler's 3 copies
        assert cfg.ckpt_save_interval == args['save_freq'] and cfg.cooldown_epochs == 0
        assert cfg.scheduler == 'timm_cosine' and args['sched'] == 'cosine'
        assert cfg.lr_base_batch == 512 and cfg.filter_bias_and_bn
        # eval: Resize(int(256 / 224 * size)) then CenterCrop(size)
        assert int(cfg.image_resize / cfg.crop_pct) == int(256 / 224 * args['input_size'])
        assert cfg.crop_mode == 'center'
        assert cfg.loss == 'ce' and args['mixup'] > 0  # SoftTargetCrossEntropy under mixup


def test_bare_boolean_flags_mean_true():
    """MindCV's command lines: --distribute, --pretrained, --val_while_train, --ema alone."""
    cfg = parse_config(['--distribute', '--pretrained', '--val_while_train', '--ema', '--lr', '1'])
    assert (cfg.distribute, cfg.pretrained, cfg.val_while_train, cfg.ema, cfg.lr) == \
        (True, True, True, True, 1.0)
    cfg = parse_config(['--ema', 'False', '--pretrained', 'w.pth', '--clip_grad'])
    assert (cfg.ema, cfg.pretrained, cfg.clip_grad) == (False, 'w.pth', True)


def test_lr_is_absolute_unless_lr_base_batch_is_set():
    """MindCV's meaning of lr, and a warmup from 0 unless warmup_lr is given."""
    cfg = parse_config([])
    assert cfg.lr_base_batch is None and cfg.warmup_lr is None and cfg.drop_path_rate == 0.0


def test_distribute_must_match_the_launcher(tmp_path):
    """A recipe (distribute: True) outside msrun, or msrun's workers without distribute: one line
    each, before anything is built."""
    recipe = os.path.join(REPO, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')
    for extra, environ, words in (
            ([], {}, 'not started by msrun'),
            (['--distribute', 'False'], {'MS_ROLE': 'MS_WORKER', 'MS_WORKER_NUM': '2'},
             'started by msrun with 2 workers')):
        proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '-c', recipe,
                               '--data_dir', str(tmp_path)] + extra, cwd=str(tmp_path),
                              env=dict(env(), **environ), capture_output=True, text=True,
                              timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr


def test_bare_pretrained_flag_downloads_through_create_model(tmp_path):
    """train.py --pretrained (no value: True) asks create_model for the official weights: here
    from a port that refuses connections, which is one line naming the file and the way out."""
    import socket
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 1))
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '--data_dir', data,
                           '--pretrained', '--num_classes', '4', '--image_resize', '32',
                           '--ckpt_save_dir', str(tmp_path / 'out'), '--device_target', 'CPU'],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(env(), MINDCOAT_CACHE=str(tmp_path / 'cache'),
                                   MINDCOAT_WEIGHTS_URL=f'http://127.0.0.1:{port}/'))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f'error: could not download http://127.0.0.1:{port}/'
                               f'coat_lite_tiny_e88e96b0.pth'), lines[0]
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flags, words', [
    (['--lr', '-1'], 'lr must be above 0'),
    (['--betas', '[2, 3]'], 'betas must be two numbers in [0, 1)'),
    (['--eps', '-1'], 'eps must be above 0'),
    (['--epoch_size', '0'], 'epoch_size must be at least 1'),
    (['--mode', '7'], 'mode must be 0 (graph) or 1 (PyNative)'),
    (['--val_interval', '0'], 'val_interval must be at least 1'),
    (['--batch_size', '0'], 'batch_size must be at least 1'),
    (['--epoch_size', '3', '--warmup_epochs', '5'], 'longer than the run'),
    (['--scale', '0.5,0.1'], 'scale must be two numbers'),
    (['--drop_path_rate', '1.5'], 'drop_path_rate must be in [0, 1)'),
    (['--model_kwargs', '16,16'], 'model_kwargs must be a mapping'),
])
def test_values_out_of_range_are_one_line(flags, words):
    """Each was accepted before and trained into a loss of 100, NaN or a silent no-op."""
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_config(flags)


def test_an_alias_bomb_or_binary_yaml_is_refused(tmp_path):
    """400 bytes of nested aliases expand to 10^9 values: refused before anything walks them."""
    bomb = tmp_path / 'bomb.yaml'
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f'a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * 10)}]' for i in range(1, 9)]
    lines.append('model_kwargs: *a8')
    bomb.write_text('\n'.join(lines) + '\n')
    assert bomb.stat().st_size < 800
    with pytest.raises(ConfigError, match='expands to more than'):
        parse_config(['-c', str(bomb)])
    binary = tmp_path / 'binary.yaml'
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match='not UTF-8 text'):
        parse_config(['-c', str(binary)])
    big = tmp_path / 'big.yaml'
    big.write_text('# padding\n' * 200_000)
    with pytest.raises(ConfigError, match='larger than'):
        parse_config(['-c', str(big)])


def test_shipped_configs_pass_the_range_checks():
    for path in sorted(glob.glob(os.path.join(REPO, 'configs', '**', '*.yaml'), recursive=True)):
        parse_config(['-c', path])


def test_model_kwargs_in_the_yaml_flow_syntax_of_its_help_text():
    """The example of --model_kwargs' own help text was refused."""
    cfg = parse_config(['--model_kwargs', '{embed_dims: [16,16,16,16]}'])
    assert cfg.model_kwargs == {'embed_dims': [16, 16, 16, 16]}
    assert parse_config(['--model_kwargs', '{"serial_depths": [1, 1, 1, 1]}']).model_kwargs == \
        {'serial_depths': [1, 1, 1, 1]}
