"""The config: MindCV keys, YAML merged under the command line, clear errors for unknown keys,
and the official recipe in every shipped YAML."""
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mindcoat.config import KEYS, parse_config
from mindcoat.errors import ConfigError
from train_helpers import REPO, env, make_color_folder

CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'coat', '*_ascend.yaml')))

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
                           str(tmp_path / 'nowhere'), '--device_target', 'CPU', '--opt', 'adamw'],
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
    assert cfg.lr_base_batch is None and cfg.warmup_lr is None and cfg.warmup_factor == 0.0
    assert cfg.drop_path_rate is None  # the variant's own (0), as MindCV's None


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
                           '--ckpt_save_dir', str(tmp_path / 'out'), '--device_target', 'CPU',
                           '--opt', 'adamw'],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(env(), MINDCOAT_CACHE=str(tmp_path / 'cache'),
                                   MINDCOAT_WEIGHTS_URL=f'http://127.0.0.1:{port}/'))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
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


@pytest.mark.parametrize('make, words', [
    (lambda d: '/dev/zero', 'a character device, not a regular file'),
    (lambda d: str(d), 'a directory, not a regular file'),
    (lambda d: (os.mkfifo(d / 'fifo.yaml'), str(d / 'fifo.yaml'))[1], 'a FIFO, not a regular file'),
    (lambda d: (d / 'c.yaml').write_text('lr: .inf\n') and str(d / 'c.yaml'),
     "bad value for 'lr'"),
    (lambda d: (d / 'c.yaml').write_text('hflip: .nan\n') and str(d / 'c.yaml'),
     "bad value for 'hflip'"),
    (lambda d: (d / 'c.yaml').write_text('7: 1\n') and str(d / 'c.yaml'), 'key 7 is not a name'),
    (lambda d: (d / 'c.yaml').write_text('epoch_size: 1000000000000\n') and str(d / 'c.yaml'),
     'epoch_size must be at least 1 and at most 100,000'),
    (lambda d: (d / 'c.yaml').write_text('batch_size: 1000000000000\n') and str(d / 'c.yaml'),
     'batch_size must be at least 1 and at most 1,048,576'),
    (lambda d: (d / 'c.yaml').write_text('re_prob: 1.5\n') and str(d / 'c.yaml'),
     're_prob must be in [0, 1]'),
    (lambda d: (d / 'c.yaml').write_text('num_samples: -4\n') and str(d / 'c.yaml'),
     'num_samples must be at least 1'),
    (lambda d: (d / 'c.yaml').write_text('lr: 0\n') and str(d / 'c.yaml'), 'lr must be above 0'),
    (lambda d: (d / 'c.yaml').write_text('lr: 1e-3\n  batch_size: [\n') and str(d / 'c.yaml'),
     'is not valid YAML: line 2, column'),
])
def test_hostile_config_files_are_one_line(tmp_path, make, words):
    """A config path that is no file, values no setting can mean, keys that are no names:
    ConfigError with one line, before anything is read past what is needed (a FIFO or
    /dev/zero would otherwise block or never end)."""
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        parse_config(['-c', make(tmp_path)])
    assert '\n' not in str(e.value)


def test_shipped_configs_pass_the_range_checks():
    """Every training config parses and passes the checks; the detectors' configs (their own
    schema, configs/det) load through the detector loader."""
    from mindcoat.models.detection import load_detector_config
    paths = sorted(glob.glob(os.path.join(REPO, 'configs', '**', '*.yaml'), recursive=True))
    detectors = [p for p in paths if os.sep + 'det' + os.sep in p]
    assert len(detectors) == 8
    for path in paths:
        if path in detectors:
            load_detector_config(path)
        else:
            parse_config(['-c', path])


def test_model_kwargs_in_the_yaml_flow_syntax_of_its_help_text():
    """The example of --model_kwargs' own help text was refused."""
    cfg = parse_config(['--model_kwargs', '{embed_dims: [16,16,16,16]}'])
    assert cfg.model_kwargs == {'embed_dims': [16, 16, 16, 16]}
    assert parse_config(['--model_kwargs', '{"serial_depths": [1, 1, 1, 1]}']).model_kwargs == \
        {'serial_depths': [1, 1, 1, 1]}


# --- MindCV's defaults and the recipes' independence from them -----------------------------------

def mindcv_parsed():
    """MindCV's own parser on its defaults and its CoaT YAMLs (tools/make_mindcv_config_fixtures.py
    ran MindCV's config.py)."""
    with open(os.path.join(REPO, 'tests', 'fixtures', 'mindcv_configs', 'mindcv_parsed.json')) as f:
        return json.load(f)


def same_value(mine, theirs):
    if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return list(mine) == list(theirs)
    return mine == theirs and type(mine) is not bool or mine is theirs


# Where the default here differs from MindCV's, and why that cannot change a MindCV run:
# each is in the README's table.
WIDER_DEFAULTS = {
    'device_target': ('auto', 'Ascend'),    # what MindSpore finds (Ascend on Ascend)
    'data_dir': (None, './'),               # required: a missing --data_dir is one line
    'image_resize': (None, 224),            # the variant's: 224, or 384 for the 384 model
    'interpolation': (None, 'bilinear'),    # the variant's: bicubic, the official transform
    'mean': (None, [123.675, 116.28, 103.53]),   # the variant's: the same ImageNet mean
    'std': (None, [58.395, 57.120000000000005, 57.375]),
    'crop_pct': (None, 0.875),              # the variant's: 0.875
    'model': ('coat_lite_tiny', 'mobilenet_v2_035_224'),  # only CoaT here
    'ckpt_path': (None, ''),                # both: no checkpoint
    'dataset_sink_mode': (False, True),     # the loop feeds its own steps either way
    'eps': (None, 1e-10),                   # MindCV's AdamW ignores its eps: 1e-8 either way
}


def test_parser_defaults_are_mindcv_s():
    """A MindCV YAML relies on MindCV's defaults for what it leaves out (eps 1e-10, weight
    decay on every parameter, a fixed loss scale of 1, ...): each shared key defaults to MindCV's
    value, except the documented widenings above."""
    theirs = mindcv_parsed()['defaults']
    assert len(theirs) == 86 and set(theirs) <= set(KEYS)
    mine = parse_config([])
    differ = {k: (getattr(mine, k), v) for k, v in theirs.items()
              if not same_value(getattr(mine, k), v)}
    assert differ == {k: v for k, v in WIDER_DEFAULTS.items()}


def test_the_key_table_knows_mindcv_s_defaults_and_says_where_it_differs():
    """The table's MindCV column is MindCV's own default for each of its 86 keys (the fixture
    ran MindCV's config.py), the keys only mindcoat has are marked so, and every default that
    differs from MindCV's says how in the key's row."""
    from mindcoat.config.keys import NOT_IN_MINDCV
    theirs = mindcv_parsed()['defaults']
    for name, key in KEYS.items():
        if name in theirs:
            assert same_value(key.mindcv, theirs[name]) or \
                np.allclose(key.mindcv, theirs[name]), name
        else:
            assert key.mindcv is NOT_IN_MINDCV, name
    assert [k for k in WIDER_DEFAULTS if not KEYS[k].differs] == []


def test_the_config_page_is_generated_from_the_table():
    from mindcoat.config.__main__ import markdown
    with open(os.path.join(REPO, 'docs', 'config.md'), encoding='utf-8') as f:
        assert f.read() == markdown(), 'run: python -m mindcoat.config --markdown > docs/config.md'
    assert all(f'`{name}`' in markdown() for name in KEYS)


# run-time choices, not part of a recipe
RUN_KEYS = {'device_target', 'jit_level', 'pretrained', 'ckpt_use_ema', 'resume', 'resume_opt',
            'overwrite', 'summary'}


def test_shipped_recipes_do_not_depend_on_parser_defaults():
    """Every key a recipe's meaning depends on is written in each configs/coat/*.yaml, so it
    parses to the same values whatever the parser's defaults are (they became MindCV's)."""
    from mindcoat.config import load_yaml
    for path in CONFIGS:
        written = load_yaml(path)
        assert sorted(set(KEYS) - RUN_KEYS - set(written)) == [], path
        cfg = parse_config(['-c', path])
        assert {k: getattr(cfg, k) for k in written} == written, path
        assert cfg.decay_epochs == cfg.epoch_size  # timm's t_initial, not MindCV's 100
        assert cfg.weight_decay_filter is None and cfg.filter_bias_and_bn  # timm's rule
        assert (cfg.re_value, cfg.re_sampling) == ('random', 'timm')  # --remode pixel
        assert cfg.ema_warmup is False  # timm's ModelEma has no ramp


def test_demo_configs_keep_their_meaning():
    """The demo's YAMLs set what changed with MindCV's defaults to their earlier values."""
    for name in ('coat_lite_mnist', 'coat_lite_mnist_recipe'):
        cfg = parse_config(['-c', os.path.join(REPO, 'configs', 'demo', name + '.yaml')])
        assert (cfg.opt, cfg.eps, cfg.weight_decay, cfg.weight_decay_filter) == \
            ('adamw', 1e-8, 0.05, None), name
        assert (cfg.amp_level, cfg.loss_scale_type, cfg.loss_scale, cfg.drop_overflow_update) == \
            ('O2', 'dynamic', 65536.0, True), name
        assert cfg.num_classes == 10 and cfg.label_smoothing == 0.1
    mnist = parse_config(['-c', os.path.join(REPO, 'configs', 'demo', 'coat_lite_mnist.yaml')])
    assert mnist.decay_epochs == mnist.epoch_size - mnist.warmup_epochs and mnist.val_while_train
    recipe = parse_config(['-c', os.path.join(REPO, 'configs', 'demo',
                                              'coat_lite_mnist_recipe.yaml')])
    assert recipe.decay_epochs == recipe.epoch_size and not recipe.ema_warmup


@pytest.mark.parametrize('flags, words', [
    (['--dataset', 'cifar10'], "dataset 'cifar10' is read by MindCV's own downloader"),
    (['--dataset', 'coco'], "dataset 'coco': choose imagenet or imagefolder"),
    (['--dataset_download'], 'dataset_download: True is not available here'),
    (['--aug_splits', '3'], 'aug_splits 3 (AugMix splits'),
    (['--layer_decay', '0.75'], 'layer_decay 0.75 (layer-wise lr decay) is not available'),
    (['--gradient_accumulation_steps', '4'], 'gradient_accumulation_steps 4 is not available'),
    (['--aux_factor', '0.4'], 'CoaT has no auxiliary head'),
    (['--reduction', 'sum'], "reduction 'sum' is not available"),
    (['--amp_cast_list', '[nn.Conv2d]'], 'amp_cast_list is not available'),
    (['--resume_opt', '--ckpt_path', 'last.ckpt'], 'use --resume last.ckpt'),
    (['--loss', 'BCE'], "loss 'BCE': only CE"),
    (['--loss_scale_type', 'auto'], "loss_scale_type 'auto' is not available here"),
    (['--auto_augment', 'augmix-m5'], "auto_augment 'augmix-m5': only RandAugment specs"),
    (['--ckpt_save_policy', 'None'], 'ckpt_save_policy must be latest_k or top_k'),
    (['--num_samples', '100', '--aug_repeats', '3'], 'num_samples and aug_repeats cannot'),
    (['--val_amp_level', 'O5'], 'val_amp_level must be one of O0, O1, O2, O3'),
])
def test_what_cannot_apply_here_is_one_line(flags, words):
    """Refused when the config is parsed (what no command can use) or when training starts
    (what training cannot honour), always before anything is built."""
    from mindcoat.config import check_training
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        check_training(parse_config(['--opt', 'adamw'] + flags))
    assert '\n' not in str(e.value)


def test_accepted_and_unused_keys_pass():
    """MindCV's momentum and use_nesterov are accepted and unused by adamw and lion (as in
    MindCV); resume_opt without ckpt_path does nothing there either."""
    from mindcoat.config import check_training
    check_training(parse_config(['--momentum', '0.5', '--use_nesterov', '--resume_opt', '--opt',
                                 'adamw']))


def test_refusals_come_before_anything_is_built(tmp_path):
    """train.py and validate.py print the refusal as one line, exit 2, before any folder or
    model exists."""
    out = tmp_path / 'out'
    for script in ('train.py', 'validate.py'):
        proc = subprocess.run([sys.executable, os.path.join(REPO, script), '--data_dir',
                               str(tmp_path), '--dataset', 'mnist', '--dataset_download',
                               'False', '--ckpt_save_dir', str(out)], cwd=str(tmp_path),
                              env=env(), capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: dataset 'mnist' is read by MindCV's own downloader")
    assert not out.exists()


def test_parse_config_records_the_keys_that_were_set(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('batch_size: 7\nnum_classes: null\n')
    cfg = parse_config(['-c', str(path), '--lr', '0.2'])
    assert cfg.given == ['batch_size', 'lr', 'num_classes'] and cfg.num_classes is None
    assert vars(cfg.command_line) == {'lr': 0.2}


def test_train_counts_the_classes_when_num_classes_is_not_given(tmp_path, capsys):
    """MindCV's num_classes None: the training split's class folders (said in the log), so a
    4-class folder gets a 4-way head, not a 1000-way one."""
    from mindcoat.engine import context, trainer as train
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 1))
    cfg = parse_config(['--data_dir', data, '--model_kwargs', '{embed_dims: [16, 16, 16, 16], '
                        'serial_depths: [1, 1, 1, 1]}', '--opt', 'adamw', '--image_resize', '32'])
    assert cfg.num_classes is None
    model = train.build(cfg, context.Run(device='CPU'))[0]
    assert cfg.num_classes == 4 and model.head.weight.shape[0] == 4
    assert f"num_classes 4: the class folders of {os.path.join(data, 'train')}" in \
        capsys.readouterr().out
