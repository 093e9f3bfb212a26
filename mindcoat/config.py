"""The trainer's configuration: one argparse parser whose groups mirror the YAML files.

MindCV's key names, so its users' YAML files and command lines work unchanged, plus what the
official CoaT recipe needs (warmup_lr, cooldown_epochs, lr_base_batch, resume, model_kwargs).
Precedence: parser defaults < YAML (``-c/--config``) < command line. Every key is a flag;
booleans take a value (``--distribute False``) or none (``--distribute`` means True, as in
MindCV). An unknown key, in the YAML or on the command line, is an error naming the closest
valid key. As in MindCV, ``lr`` is absolute unless ``lr_base_batch`` is set (the recipes in
configs/coat set it to 512: lr per 512 images of global batch, the official scaling).

Defaults are MindCV's (config.py of MindCV), so a MindCV YAML that leaves a key out means what it
means there (eps 1e-10, weight_decay_filter disable, loss_scale_type fixed, ...). The exceptions
widen MindCV's meaning without changing a MindCV run: device_target auto (what MindSpore finds),
data_dir None (required), image_resize/interpolation/mean/std/crop_pct None (the variant's own:
224 or 384, bicubic, ImageNet mean/std, 0.875), model (a CoaT), num_classes None (train: the
training split's class folders; validate/predict: the checkpoint's), drop_rate/drop_path_rate
None (the variant's, 0), and dataset_sink_mode (the trainer feeds its own steps). The recipes in
configs/coat set every key they rely on, so their meaning does not depend on these defaults.

    from mindcoat.config import parse_config
    cfg = parse_config(['-c', 'configs/coat/coat_lite_tiny_ascend.yaml', '--data_dir', '/data'])
"""
import argparse
import ast
import difflib
import math
import os
import sys

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported as one line."""


def str2bool(value):
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ('true', '1', 'yes', 'y', 'on'):
        return True
    if low in ('false', '0', 'no', 'n', 'off'):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def literal(value):
    """Lists, tuples, dicts, numbers and None from the command line (``--scale 0.08,1.0`` and
    ``--scale "[0.08, 1.0]"`` both work); anything else stays a string."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ('none', 'null', '~'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text[:1] in '{[':  # YAML flow syntax, as in the config files: {embed_dims: [16, 16]}
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise argparse.ArgumentTypeError(f"not a list or mapping: {value}") from None
    if ',' in text:
        return tuple(literal(part) for part in text.split(','))
    return value


def optional(kind):
    """``kind``, or None for 'none'/'null'."""
    def convert(value):
        if value is None or str(value).strip().lower() in ('none', 'null', '~', ''):
            return None
        return kind(value)
    convert.__name__ = kind.__name__
    return convert


# (group, [(key, type, default, help), ...]); the order of the YAML files.
SCHEMA = [
    ('system', [
        ('mode', int, 0, '0: GRAPH_MODE, 1: PYNATIVE_MODE'),
        ('device_target', str, 'auto', 'Ascend, GPU, CPU, or auto (what MindSpore finds)'),
        ('jit_level', optional(str), None, 'graph kernel level; default O2 on Ascend, O0 elsewhere'),
        ('distribute', str2bool, False, 'data parallel over the msrun workers'),
        ('val_while_train', str2bool, False, 'validate every val_interval epochs'),
        ('val_interval', int, 1, 'epochs between validations'),
        ('log_interval', int, 100, 'steps between progress-bar updates and log lines'),
        ('summary', str2bool, False, 'SummaryRecord data per epoch in ckpt_save_dir/summary/'),
        ('seed', int, 42, 'seeds weights (same on every rank); seed + rank then seeds each '
                          'rank\'s drop-path masks; data order and augmentation'),
    ]),
    ('dataset', [
        ('dataset', str, 'imagenet', 'imagenet or imagefolder: DATA_DIR/<split>/<class>/<image> '
                                      '(MindCV\'s mnist/cifar10/cifar100 are refused)'),
        ('data_dir', optional(str), None, 'root holding the train and val folders'),
        ('train_split', str, 'train', 'training folder under data_dir'),
        ('val_split', str, 'val', 'validation folder under data_dir'),
        ('dataset_download', str2bool, False, 'MindCV downloads MNIST/CIFAR; here: data_dir '
                                              'must hold the image folders (True is refused)'),
        ('num_parallel_workers', int, 8, 'dataset workers per process'),
        ('shuffle', str2bool, True, 'shuffle the training set every epoch'),
        ('num_samples', optional(int), None, 'train on this many images per epoch and device, a '
                                             'different seeded subset each epoch (None: all)'),
        ('eval_shuffle', str2bool, False, 'read the evaluation images in a seeded random order '
                                           '(same results)'),
        ('batch_size', int, 128, 'images per device per step'),
        ('drop_remainder', str2bool, True, 'drop the last incomplete training batch'),
    ]),
    ('augmentation', [
        ('image_resize', optional(int), None, 'input size; default: the model\'s (224 or 384)'),
        ('scale', literal, (0.08, 1.0), 'RandomResizedCrop area range'),
        ('ratio', literal, (0.75, 1.333), 'RandomResizedCrop aspect range'),
        ('hflip', float, 0.5, 'horizontal flip probability'),
        ('vflip', float, 0.0, 'vertical flip probability'),
        ('color_jitter', optional(float), 0.4, 'ColorJitter strength, used when auto_augment is off'),
        ('interpolation', optional(str), None, 'bicubic/bilinear/nearest; default: the model\'s'),
        ('auto_augment', optional(str), None, 'RandAugment spec (rand-m9-mstd0.5-inc1 or MindCV\'s '
                                              'randaug-...), or none'),
        ('re_prob', float, 0.0, 'random erasing probability (after normalisation)'),
        ('re_scale', literal, (0.02, 0.33), 'random erasing area range'),
        ('re_ratio', literal, (0.3, 3.3), 'random erasing aspect range'),
        ('re_value', literal, 0, "random erasing fill, written into the normalised image: a number "
                                  "(0: the mean pixel), one number per channel, or 'random' "
                                  "(per-pixel N(0, 1) noise)"),
        ('re_max_attempts', int, 10, 'random erasing tries per image to fit a box'),
        ('re_sampling', str, 'mindspore', 'how the erased box is drawn: mindspore (MindCV: '
                                          'aspect uniform in re_ratio, w = sqrt(area * aspect), '
                                          'h = w / aspect) or timm (aspect log-uniform, '
                                          'h = sqrt(area * aspect), w = sqrt(area / aspect))'),
        ('aug_splits', int, 0, 'AugMix splits (MindCV); only 0 (off) here'),
        ('mean', literal, None, 'normalisation mean (0-1 or 0-255 scale); default: the model\'s'),
        ('std', literal, None, 'normalisation std (0-1 or 0-255 scale); default: the model\'s'),
        ('crop_pct', optional(float), None, 'eval center-crop fraction; default: the model\'s'),
        ('crop_mode', optional(str), None, 'eval resize: center (short side to size / crop_pct, '
                                           'then crop) or squash; default: the model\'s'),
        ('mixup', float, 0.0, 'Mixup alpha (0: off)'),
        ('cutmix', float, 0.0, 'CutMix alpha (0: off)'),
        ('cutmix_prob', float, 1.0, 'probability that a batch is mixed at all (Mixup or CutMix)'),
        ('mixup_switch_prob', float, 0.5, 'probability of CutMix rather than Mixup'),
        ('aug_repeats', int, 0, 'repeated augmentation: copies of each image across ranks (0/1: off)'),
        ('aug_repeats_single_device', str2bool, False, 'apply aug_repeats on one device too (off '
                                                       'by default; the official main.py would)'),
    ]),
    ('model', [
        ('model', str, 'coat_lite_tiny', 'variant name (mindcoat.list_models())'),
        ('num_classes', optional(int), None, 'classifier size (None: train.py counts the training '
                                             'split\'s class folders; validate/predict read the '
                                             'checkpoint)'),
        ('in_channels', int, 3, 'image channels'),
        ('drop_rate', optional(float), None, 'dropout rate (None: the variant\'s, 0)'),
        ('drop_path_rate', optional(float), None, 'stochastic depth rate (None: the '
                                                  'variant\'s, 0)'),
        ('model_kwargs', literal, None, 'architecture overrides, e.g. {embed_dims: [16,16,16,16]}'),
        ('pretrained', literal, False, 'True: the official weights (create_model downloads '
                                       'them); or a local weights file (as ckpt_path)'),
        ('ckpt_path', optional(str), None, 'weights to start from (fine-tuning): any format the '
                                           'converter reads; weights only'),
        ('ckpt_use_ema', str2bool, False, 'take the EMA weights from ckpt_path'),
        ('resume', optional(str), None, 'a mindcoat training checkpoint to continue exactly'),
        ('resume_opt', str2bool, False, 'MindCV: with ckpt_path, restore the optimizer too; '
                                        'refused here: --resume restores everything'),
        ('keep_checkpoint_max', int, 10, 'epoch checkpoints kept'),
        ('ckpt_save_dir', str, './ckpt', 'checkpoints and the JSON-lines log go here'),
        ('overwrite', str2bool, False, 'replace the run already in ckpt_save_dir (else: an '
                                       'error, unless --resume continues it)'),
        ('ckpt_save_interval', int, 1, 'epochs between epoch checkpoints'),
        ('ckpt_save_policy', str, 'latest_k', 'latest_k or top_k (by val top-1)'),
        ('epoch_size', int, 90, 'epochs'),
        ('dataset_sink_mode', str2bool, False, "MindSpore's data sink on Ascend/GPU; the CPU has "
                                               'none (one log line, then the plain loop)'),
        ('ema', str2bool, False, 'keep an exponential moving average of the weights'),
        ('ema_decay', float, 0.9999, 'EMA decay per step'),
        ('ema_warmup', str2bool, True, "MindCV's ramp: decay*(1 - exp(-n/2000)); False: timm's"),
        ('layer_decay', optional(float), None, 'layer-wise lr decay (MindCV); only None (off) '
                                               'here'),
        ('gradient_accumulation_steps', int, 1, 'batches accumulated per update; only 1 here'),
    ]),
    ('optimizer', [
        ('opt', str, 'adam', 'optimizer (MindCV\'s default adam is refused here: adamw or lion)'),
        ('momentum', float, 0.9, 'momentum (sgd/momentum optimizers; unused by adamw and lion)'),
        ('use_nesterov', str2bool, False, 'Nesterov momentum (sgd/momentum; unused by adamw '
                                          'and lion)'),
        ('weight_decay', float, 1e-6, 'decoupled weight decay'),
        ('filter_bias_and_bn', str2bool, True, 'no decay on class tokens, norms and biases'),
        ('weight_decay_filter', optional(str), 'disable', "MindCV's filter: disable (decay every "
                                                          "parameter), auto or norm_and_bias; "
                                                          "None: filter_bias_and_bn decides"),
        ('betas', literal, (0.9, 0.999), 'Adam betas'),
        ('eps', float, 1e-10, 'Adam epsilon'),
        ('clip_grad', str2bool, False, 'clip gradients by global norm'),
        ('clip_value', float, 15.0, 'max global gradient norm'),
    ]),
    ('scheduler', [
        ('scheduler', str, 'cosine_decay', 'timm_cosine (per epoch, as the official main.py '
                                           'steps timm\'s CosineLRScheduler), cosine_decay '
                                           '(per step; alias warmup_cosine_decay) or constant'),
        ('lr', float, 0.001, 'peak learning rate (per lr_base_batch images when that is set)'),
        ('lr_base_batch', optional(int), None, 'when set, lr is per this many images and is '
                                               'scaled by global batch / this; None: lr as is'),
        ('min_lr', float, 1e-6, 'cosine floor'),
        ('warmup_epochs', float, 3, 'linear warmup epochs'),
        ('warmup_lr', optional(float), None, 'warmup start lr (None: warmup_factor * lr)'),
        ('warmup_factor', float, 0.0, 'warmup start as a fraction of lr, if warmup_lr is None'),
        ('decay_epochs', optional(float), 100, 'decay length in epochs (MindCV: 100); None: '
                                              'epoch_size - cooldown, and minus warmup for '
                                              'the per-step cosine'),
        ('cooldown_epochs', float, 0, 'final epochs held at min_lr'),
        ('decay_rate', float, 0.9, 'lr decay factor (step/multi-step/exponential decay)'),
        ('multi_step_decay_milestones', literal, [30, 60, 90], 'epochs at which multi_step_decay '
                                                             'multiplies lr by decay_rate'),
        ('lr_epoch_stair', str2bool, False, 'hold the lr constant within each epoch'),
        ('num_cycles', int, 1, 'cosine_decay cycles'),
        ('cycle_decay', float, 1.0, 'peak lr factor from one cosine cycle to the next'),
    ]),
    ('loss', [
        ('loss', str, 'CE', 'CE: soft-target cross entropy (targets carry smoothing and mixing)'),
        ('label_smoothing', float, 0.0, 'label smoothing'),
        ('aux_factor', float, 0.0, 'auxiliary-head loss factor (MindCV); CoaT has none: only 0'),
        ('reduction', str, 'mean', 'loss reduction over the batch; only mean here'),
    ]),
    ('amp', [
        ('amp_level', str, 'O0', 'O0/O2/O3 on Ascend and GPU; the CPU always runs O0 (float32)'),
        ('loss_scale_type', str, 'fixed', 'fixed, dynamic or none'),
        ('loss_scale', float, 1.0, 'initial (dynamic) or constant (fixed) loss scale'),
        ('drop_overflow_update', str2bool, False, 'skip steps whose gradients overflow'),
        ('val_amp_level', str, 'O0', 'amp level of validate.py\'s network on Ascend/GPU (the CPU '
                                      'evaluates in float32; train.py validates its training '
                                      'network, as MindCV)'),
        ('amp_cast_list', optional(str), None, "MindCV's custom amp cast list; only None here"),
    ]),
]

KEYS = {key: (typ, default) for _, entries in SCHEMA for key, typ, default, _ in entries}
# flags that mean True when given without a value (MindCV: nargs='?', const=True)
BARE_TRUE = {key for key, (typ, _) in KEYS.items() if typ is str2bool} | {'pretrained'}


def create_parser():
    """The full parser (also used by validate.py): ``-c/--config`` plus one flag per key, all
    defaulting to SUPPRESS so that only what the user typed overrides the YAML."""
    parser = argparse.ArgumentParser(
        description='Train CoaT with MindSpore', allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-c', '--config', default=None, help='YAML file; flags override it')
    for group_name, entries in SCHEMA:
        group = parser.add_argument_group(group_name)
        for key, typ, default, text in entries:
            bare = dict(nargs='?', const=True) if key in BARE_TRUE else {}
            group.add_argument('--' + key, type=typ, default=argparse.SUPPRESS,
                               help=f'{text} (default: {default})', **bare)
    return parser


def closest_key(key):
    match = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.0)
    return match[0] if match else None


def _unknown(key, where):
    return ConfigError(f"unknown config key '{key}' in {where}; did you mean '{closest_key(key)}'?")


def coerce(key, value):
    """A YAML value converted like the same value typed on the command line."""
    typ = KEYS[key][0]
    if value is None or (typ is literal and not isinstance(value, str)):
        return value
    return typ(value)


# A config file is a page of settings: these bounds stop a file that is not one (a binary, or a
# few hundred bytes of nested YAML aliases that expand to billions of nodes) before it is used.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _count_nodes(value, budget):
    """Nodes in ``value`` with aliases expanded, counting down from ``budget``; stops (returns a
    negative number) as soon as the budget is spent, so an alias bomb is never walked whole."""
    budget -= 1
    if isinstance(value, dict):
        items = [x for kv in value.items() for x in kv]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return budget
    for item in items:
        if budget < 0:
            break
        budget = _count_nodes(item, budget)
    return budget


def load_yaml(path):
    try:
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_YAML_BYTES >> 20} MB: not "
                              "a config file")
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8')
        data = yaml.safe_load(text) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?)") from None
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    if _count_nodes(data, MAX_YAML_NODES) < 0:
        raise ConfigError(f"config file {path} expands to more than {MAX_YAML_NODES} values "
                          "(nested YAML aliases?): not a config file")
    out = {}
    for key, value in data.items():
        if key not in KEYS:
            raise _unknown(key, path)
        try:
            out[key] = coerce(key, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad value for '{key}' in {path}: {e}") from None
    return out


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pair(low, high):
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number, v)) \
        and low <= v[0] <= v[1] <= high


# key -> (test, what the value must be); checked before anything is built or compiled
RANGES = {
    'mode': (lambda v: v in (0, 1), '0 (graph) or 1 (PyNative)'),
    'val_interval': (lambda v: v >= 1, 'at least 1'),
    'log_interval': (lambda v: v >= 1, 'at least 1'),
    'num_parallel_workers': (lambda v: v >= 1, 'at least 1'),
    'batch_size': (lambda v: v >= 1, 'at least 1'),
    'scale': (_pair(0.0, 1.0), 'two numbers 0 <= min <= max <= 1'),
    'ratio': (_pair(1e-6, float('inf')), 'two numbers 0 < min <= max'),
    'hflip': (lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    'vflip': (lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    're_prob': (lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    're_scale': (_pair(0.0, 1.0), 'two numbers 0 <= min <= max <= 1'),
    're_ratio': (_pair(1e-6, float('inf')), 'two numbers 0 < min <= max'),
    're_max_attempts': (lambda v: v >= 1, 'at least 1'),
    'num_samples': (lambda v: v is None or v >= 1, 'at least 1 (or None: all)'),
    'crop_pct': (lambda v: v is None or 0 < v <= 1, 'in (0, 1]'),
    'mixup': (lambda v: v >= 0, 'at least 0 (0: off)'),
    'cutmix': (lambda v: v >= 0, 'at least 0 (0: off)'),
    'cutmix_prob': (lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    'mixup_switch_prob': (lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    'aug_repeats': (lambda v: v >= 0, 'at least 0'),
    'num_classes': (lambda v: v is None or v >= 1, 'at least 1 (or None)'),
    'in_channels': (lambda v: v >= 1, 'at least 1'),
    'drop_rate': (lambda v: v is None or 0 <= v < 1, 'in [0, 1) (or None)'),
    'drop_path_rate': (lambda v: v is None or 0 <= v < 1, 'in [0, 1) (or None)'),
    'keep_checkpoint_max': (lambda v: v >= 1, 'at least 1'),
    'ckpt_save_interval': (lambda v: v >= 1, 'at least 1'),
    'epoch_size': (lambda v: v >= 1, 'at least 1'),
    'ema_decay': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'weight_decay': (lambda v: v >= 0, 'at least 0'),
    'betas': (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number, v))
              and all(0 <= b < 1 for b in v), 'two numbers in [0, 1)'),
    'eps': (lambda v: v > 0, 'above 0'),
    'clip_value': (lambda v: v > 0, 'above 0'),
    'lr': (lambda v: v > 0, 'above 0'),
    'lr_base_batch': (lambda v: v is None or v >= 1, 'at least 1 (or None)'),
    'min_lr': (lambda v: v >= 0, 'at least 0'),
    'warmup_epochs': (lambda v: v >= 0, 'at least 0'),
    'warmup_lr': (lambda v: v is None or v >= 0, 'at least 0 (or None)'),
    'warmup_factor': (lambda v: v >= 0, 'at least 0'),
    'decay_epochs': (lambda v: v is None or v > 0, 'above 0 (or None)'),
    'cooldown_epochs': (lambda v: v >= 0, 'at least 0'),
    'label_smoothing': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'loss_scale': (lambda v: v > 0, 'above 0'),
}
# keys whose value is a structure, not a number: key -> (test, what it must be)
SHAPES = {
    'model_kwargs': (lambda v: v is None or isinstance(v, dict) and all(isinstance(k, str)
                                                                         for k in v),
                     'a mapping of architecture arguments, e.g. {embed_dims: [16, 16, 16, 16]}'),
    're_value': (lambda v: v == 'random' or _number(v) or isinstance(v, (list, tuple)) and
                 len(v) > 0 and all(map(_number, v)),
                 "a number, one number per channel, or 'random'"),
    're_sampling': (lambda v: v in ('mindspore', 'timm'), 'mindspore or timm'),
}


def check_ranges(cfg):
    """ConfigError (one line) for the first value outside its range; then the relations between
    values (warmup within the run)."""
    for key, (test, what) in RANGES.items():
        value = getattr(cfg, key)
        numeric = value is None or _number(value) or isinstance(value, (list, tuple))
        try:
            ok = numeric and test(value)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {value!r}")
    for key, (test, what) in SHAPES.items():
        if not test(getattr(cfg, key)):
            raise ConfigError(f"{key} must be {what}, got {getattr(cfg, key)!r}")
    if cfg.warmup_epochs > cfg.epoch_size:
        raise ConfigError(f"warmup_epochs {cfg.warmup_epochs} is longer than the run "
                          f"(epoch_size {cfg.epoch_size})")


# MindCV datasets its own downloader reads (mindcv.data.create_dataset); here only image folders
MINDCV_DOWNLOAD_DATASETS = ('mnist', 'cifar10', 'cifar100')
IMAGE_FOLDER_DATASETS = ('imagenet', 'imagefolder')
AMP_LEVELS = ('O0', 'O1', 'O2', 'O3')


def check_data_source(cfg):
    """dataset and dataset_download: this package reads image folders only."""
    name = str(cfg.dataset).lower()
    if cfg.dataset_download:
        raise ConfigError("dataset_download: True is not available here: mindcoat reads image "
                          "folders and downloads no dataset (MindCV downloads only MNIST/CIFAR); "
                          "put the images in DATA_DIR/<split>/<class>/ and set dataset_download: "
                          "False")
    if name in MINDCV_DOWNLOAD_DATASETS:
        raise ConfigError(f"dataset '{cfg.dataset}' is read by MindCV's own downloader, not here: "
                          f"write it out as DATA_DIR/train/<class>/<image> and DATA_DIR/val/"
                          f"<class>/<image> (e.g. with MindCV or torchvision) and set dataset: "
                          f"imagefolder")
    if name not in IMAGE_FOLDER_DATASETS:
        raise ConfigError(f"dataset '{cfg.dataset}': choose imagenet or imagefolder (both read "
                          f"DATA_DIR/<split>/<class>/<image>)")


def check_evaluation(cfg):
    """What validate.py cannot do, as one ConfigError, before anything is built."""
    check_data_source(cfg)
    if cfg.val_amp_level not in AMP_LEVELS:
        raise ConfigError(f"val_amp_level must be one of {', '.join(AMP_LEVELS)}, got "
                          f"'{cfg.val_amp_level}'")


def check_training(cfg):
    """MindCV keys whose non-default values train.py cannot honour: one ConfigError each, saying
    what to do, before anything is built or compiled."""
    check_evaluation(cfg)
    refusals = (
        (cfg.aug_splits > 0, f"aug_splits {cfg.aug_splits} (AugMix splits with their JSD loss) "
                             f"is not available here: set aug_splits: 0 (RandAugment via "
                             f"auto_augment is)"),
        (cfg.layer_decay is not None, f"layer_decay {cfg.layer_decay} (layer-wise lr decay) is "
                                      f"not available here: set layer_decay: null"),
        (cfg.gradient_accumulation_steps > 1,
         f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} is not available here: "
         f"reach the same global batch with batch_size or more devices (and set "
         f"gradient_accumulation_steps: 1)"),
        (cfg.aux_factor != 0, f"aux_factor {cfg.aux_factor}: CoaT has no auxiliary head; set "
                              f"aux_factor: 0"),
        (str(cfg.reduction).lower() != 'mean', f"reduction '{cfg.reduction}' is not available "
                                               f"here: the loss is the batch mean (set "
                                               f"reduction: mean)"),
        (cfg.amp_cast_list is not None, "amp_cast_list is not available here: under O2 mindcoat "
                                        "keeps LayerNorm and softmax in float32 itself; remove "
                                        "amp_cast_list"),
        (cfg.resume_opt and bool(cfg.ckpt_path),
         "resume_opt with ckpt_path is MindCV's way to continue a run: here use --resume "
         f"{cfg.ckpt_path} (a mindcoat training checkpoint: weights, EMA, optimizer, step and "
         "epoch) instead of --ckpt_path and --resume_opt"),
        (str(cfg.loss).lower() != 'ce', f"loss '{cfg.loss}': only CE (cross entropy on "
                                        f"smoothed, mixed soft targets) is available here"),
        (str(cfg.loss_scale_type).lower() not in ('fixed', 'dynamic', 'none'),
         f"loss_scale_type '{cfg.loss_scale_type}' is not available here: set fixed, dynamic "
         f"(what MindSpore's Model picks itself under O2/O3 for MindCV's auto) or none"),
        (cfg.num_samples is not None and cfg.aug_repeats > 1,
         "num_samples and aug_repeats cannot be set together (as in MindCV): set one of them "
         "to its default"),
    )
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)
    if cfg.amp_level not in AMP_LEVELS:
        raise ConfigError(f"amp_level must be one of {', '.join(AMP_LEVELS)}, got "
                          f"'{cfg.amp_level}'")
    if cfg.ckpt_save_policy not in ('latest_k', 'top_k'):
        raise ConfigError(f"ckpt_save_policy must be latest_k or top_k, got "
                          f"'{cfg.ckpt_save_policy}'")
    if cfg.auto_augment and str(cfg.auto_augment).lower() != 'none':
        from .data.augment import parse_rand_augment  # MindCV's autoaug/augmix/...: one line
        try:
            parse_rand_augment(cfg.auto_augment)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def parse_config(argv=None, parser=None):
    """Parses ``argv`` (default: sys.argv[1:]) into an ``argparse.Namespace`` holding every key.
    Raises ConfigError with a one-line message on an unknown key or a bad value."""
    parser = parser or create_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        if arg.startswith('--') and arg[2:].split('=')[0] not in KEYS and \
                arg[2:].split('=')[0] not in ('config', 'help'):
            raise _unknown(arg[2:].split('=')[0], 'the command line')
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:  # --help
            raise
        raise ConfigError('bad command line (see the message above)') from None
    values = {key: default for key, (_, default) in KEYS.items()}
    from_file = load_yaml(args.config) if args.config else {}
    values.update(from_file)
    typed = {k: v for k, v in vars(args).items() if k != 'config'}
    values.update(typed)
    values['config'] = args.config
    cfg = argparse.Namespace(**values)
    check_ranges(cfg)
    # what the user typed, for tools that let a checkpoint's own values win over the YAML's
    cfg.command_line = argparse.Namespace(**typed)
    # every key the YAML or the command line set (the rest are parser defaults): train.py counts
    # the classes itself when num_classes was set by neither
    cfg.given = sorted(set(from_file) | set(typed))
    return cfg
