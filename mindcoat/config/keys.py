"""Every configuration key, once: one row each, in the order of the YAML files.

A row gives the key's name, how a value is read (YAML or command line), its default, the values
it may take, MindCV's default (or that MindCV has no such key) with how this package differs,
and a line of help. The parser (``mindcoat.config.parse``), the value checks and docs/config.md
(``python -m mindcoat.config --markdown``) are all made from this table.

Defaults are MindCV's (its config.py), so a MindCV YAML that leaves a key out means what it means
there. The exceptions widen MindCV's meaning without changing a MindCV run, and say so in their
row.
"""
import argparse
import ast
import math
from dataclasses import dataclass

import yaml


# --------------------------------------------------------------------------- value readers
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
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    if text[:1] in '{[':  # YAML flow syntax, as in the config files: {embed_dims: [16, 16]}
        try:
            return yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):
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


def integer(value):
    """An int; a float with no fraction (YAML's 1.0e+2) is accepted, 2.5 is not."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    return int(value)


def number(value):
    """A finite float (.inf and .nan are refused: no setting means them)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, got {value}")
    return out


# ----------------------------------------------------------------------------- value checks
def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Check:
    """A test a value must pass and what it must be (said in the error and in the docs);
    ``message(value)``, when given, says more than "must be"."""
    test: object
    what: str
    message: object = None

    def problem(self, name, value):
        """None if ``value`` passes, else the one-line error."""
        try:
            ok = bool(self.test(value))
        except (TypeError, ValueError):
            ok = False
        if ok:
            return None
        return self.message(value) if self.message else f"{name} must be {self.what}, got " \
                                                         f"{value!r}"


def between(low, high, low_open=False, high_open=False):
    def test(v):
        return _is_number(v) and (low < v if low_open else low <= v) and \
            (v < high if high_open else v <= high)
    left, right = '(' if low_open else '[', ')' if high_open else ']'
    return Check(test, f'in {left}{low:g}, {high:g}{right}')


def at_least(n, most=None):
    return Check(lambda v: _is_number(v) and n <= v and (most is None or v <= most),
                 f'at least {n}' + (f' and at most {most:,}' if most is not None else ''))


def above(n, most=None):
    return Check(lambda v: _is_number(v) and v > n and (most is None or v <= most),
                 f'above {n}' + (f' and at most {most:g}' if most is not None else ''))


def pair(low, high, low_open=False):
    def test(v):
        return isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)) \
            and (low < v[0] if low_open else low <= v[0]) and v[0] <= v[1] <= high
    return Check(test, f'two numbers {low:g} {"<" if low_open else "<="} min <= max' +
                 (f' <= {high:g}' if math.isfinite(high) else ''))


def choice(*values, what=None):
    listed = ' or '.join(map(str, values)) if len(values) < 3 else \
        'one of ' + ', '.join(map(str, values))
    return Check(lambda v: v in values, what or listed)


def maybe(check):
    """None, or a value passing ``check``."""
    return Check(lambda v: v is None or check.test(v), f'{check.what} (or None)')


def refused(bad, message):
    """For what training cannot honour: ``bad(value)`` True refuses it with ``message`` (a
    template of ``value``)."""
    return Check(lambda v: not bad(v), '', lambda v: message.format(value=v))


PROBABILITY = between(0, 1)
# a batch, an epoch count or a worker count beyond these is a typo, not a run
MAX_BATCH = 1 << 20
MAX_EPOCHS = 100_000


# ---------------------------------------------------------------------------------- the table
NOT_IN_MINDCV = object()  # ``mindcv`` of a key only this package has


@dataclass(frozen=True)
class Key:
    name: str
    type: object            # reads a YAML or command-line value
    default: object
    help: str
    group: str = ''
    check: Check = None     # what every value must be (checked for every command)
    mindcv: object = None   # MindCV's default, or NOT_IN_MINDCV
    differs: str = ''       # how this package's meaning differs from MindCV's ('' = the same)
    refuse: Check = None    # what training cannot honour (checked by check_training)
    resume_free: bool = False  # may differ from the run's own value when resuming it

    @property
    def bare_true(self):
        """A flag that means True when given without a value (MindCV: nargs='?', const=True)."""
        return self.type is str2bool or self.name == 'pretrained'


SAME = object()  # mindcv=SAME: MindCV's default is this row's default


def _rows(group, *rows):
    out = []
    for row in rows:
        name, typ, default, text = row[:4]
        extra = row[4] if len(row) > 4 else {}
        mindcv = extra.pop('mindcv', SAME)
        out.append(Key(name, typ, default, text, group, mindcv=default if mindcv is SAME
                       else mindcv, **extra))
    return out


def _refusal(bad, message):
    return {'refuse': refused(bad, message)}


MINDCV_DATASETS = ('mnist', 'cifar10', 'cifar100')  # read by MindCV's own downloader


def _dataset_message(value):
    if str(value).lower() in MINDCV_DATASETS:
        return (f"dataset '{value}' is read by MindCV's own downloader, not here: write it out "
                f"as DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image> (e.g. with "
                f"MindCV or torchvision) and set dataset: imagefolder")
    return (f"dataset '{value}': choose imagenet or imagefolder (both read DATA_DIR/<split>/"
            f"<class>/<image>)")


def _optimizer_problem(value):
    from ..optim.factory import optimizer_problem  # the optimizers the library builds
    return optimizer_problem(value)


def _eval_setting(key, what):
    """The data layer's own rule for an eval setting (mindcoat.data.settings), as a Check."""
    def problem(value):
        from ..data.settings import eval_setting_problem
        return eval_setting_problem(key, value)
    return Check(lambda v: problem(v) is None, what, problem)


def _scheduler_message(value):
    from ..optim.scheduler import SCHEDULERS
    return f"unknown scheduler '{value}'; choose one of {', '.join(SCHEDULERS)}"


def _in_library(module, name):
    """A choice whose values the library that implements them lists (read when checked)."""
    def test(value):
        import importlib
        return value in getattr(importlib.import_module(module, __package__), name)
    return test


def _rand_augment_problem(value):
    """The parser's own error for a spec it cannot read (MindCV's autoaug, augmix, ...)."""
    if value is None or str(value).lower() == 'none':
        return None
    from ..data.augment import parse_rand_augment
    try:
        parse_rand_augment(value)
    except ValueError as e:
        return str(e)
    return None


RAND_AUGMENT = Check(lambda v: _rand_augment_problem(v) is None,
                     "a RandAugment spec (rand-m9-mstd0.5-inc1) or none", _rand_augment_problem)


KEYS_TABLE = (
    _rows('system',
          ('mode', integer, 0, '0: graph mode, 1: PyNative mode',
           dict(check=choice(0, 1, what='0 (graph) or 1 (PyNative)'))),
          ('device_target', str, 'auto', 'Ascend, GPU, CPU, or auto (what MindSpore finds)',
           dict(check=choice('auto', 'Ascend', 'GPU', 'CPU'), mindcv='Ascend',
                differs='default auto: the device MindSpore finds')),
          ('jit_level', optional(str), None, 'graph kernel level; default O2 on Ascend, O0 '
           'elsewhere', dict(check=maybe(choice('O0', 'O1', 'O2')), mindcv=NOT_IN_MINDCV)),
          ('distribute', str2bool, False, 'data parallel over the msrun workers',
           dict(differs='distribute without msrun, or msrun workers without distribute: one '
                        'line')),
          ('val_while_train', str2bool, False, 'validate every val_interval epochs'),
          ('val_interval', integer, 1, 'epochs between validations (the last epoch is always '
           'validated)', dict(check=at_least(1))),
          ('log_interval', integer, 100, 'steps between log lines and between reads of the '
           'device-side loss', dict(check=at_least(1))),
          ('summary', str2bool, False, 'MindSpore SummaryRecord data per epoch in '
           'ckpt_save_dir/summary/', dict(mindcv=NOT_IN_MINDCV)),
          ('seed', integer, 42, "seeds the weights (the same on every rank), then seed + rank "
           "each rank's drop-path masks; the data order and augmentation",
           dict(check=at_least(0, 2 ** 32 - 1), differs='the random streams differ from '
                                                        "MindCV's")),
          ),
    _rows('dataset',
          ('dataset', str, 'imagenet', 'imagenet or imagefolder: DATA_DIR/<split>/<class>/'
           '<image>', dict(check=Check(lambda v: str(v).lower() in ('imagenet', 'imagefolder'),
                                       'imagenet or imagefolder', _dataset_message),
                           differs="mnist, cifar10, cifar100 (MindCV's downloader) are refused: "
                                   "write them out as image folders")),
          ('data_dir', optional(str), None, 'root holding the train and val folders',
           dict(mindcv='./', differs='no default: a missing --data_dir is one line')),
          ('train_split', str, 'train', 'training folder under data_dir'),
          ('val_split', str, 'val', 'validation folder under data_dir'),
          ('dataset_download', str2bool, False, 'must be False: data_dir holds the image '
           'folders', dict(check=refused(
               lambda v: v is not False, 'dataset_download: True is not available here: '
                                         'mindcoat reads image folders and downloads no dataset '
                                         '(MindCV downloads only MNIST/CIFAR); put the images in '
                                         'DATA_DIR/<split>/<class>/ and set dataset_download: '
                                         'False'), differs='True is refused (nothing is '
                                                           'downloaded)')),
          ('num_parallel_workers', integer, 8, 'dataset workers per process (capped at the '
           'CPUs the process may use, with a note)', dict(check=at_least(1, 1024))),
          ('shuffle', str2bool, True, 'shuffle the training set every epoch'),
          ('num_samples', optional(integer), None, 'train on this many images per epoch and '
           'device, a new seeded subset each epoch (None: all)',
           dict(check=maybe(at_least(1)))),
          ('eval_shuffle', str2bool, False, 'read the evaluation images in a seeded random '
           'order (same results)'),
          ('batch_size', integer, 128, 'images per device per step',
           dict(check=at_least(1, MAX_BATCH))),
          ('drop_remainder', str2bool, True, 'drop the last incomplete training batch '
           '(evaluation keeps it)'),
          ),
    _rows('augmentation',
          ('image_resize', optional(integer), None, "input size, a multiple of 32 (None: the "
           "variant's, 224 or 384)",
           dict(check=_eval_setting('image_resize', 'a positive multiple of 32 (CoaT downsamples '
                                                    'by 32), at most 4096 (or None)'),
                mindcv=224, differs="default None: the variant's size")),
          ('scale', literal, (0.08, 1.0), 'RandomResizedCrop area range',
           dict(check=pair(0.0, 1.0))),
          ('ratio', literal, (0.75, 1.333), 'RandomResizedCrop aspect range',
           dict(check=pair(0.0, float('inf'), low_open=True))),
          ('hflip', number, 0.5, 'horizontal flip probability', dict(check=PROBABILITY)),
          ('vflip', number, 0.0, 'vertical flip probability (after the horizontal one)',
           dict(check=PROBABILITY)),
          ('color_jitter', optional(number), 0.4, 'ColorJitter strength (brightness, contrast, '
           'saturation), used only without auto_augment', dict(check=maybe(at_least(0)))),
          ('interpolation', optional(str), None, "bicubic, bilinear, nearest, lanczos, hamming "
           "or random (None: the variant's bicubic)",
           dict(check=_eval_setting('interpolation', 'bicubic, bilinear, nearest, lanczos, '
                                                     'hamming or random (or None)'),
                mindcv='bilinear', differs="default None: the variant's bicubic (the official "
                                           "transform)")),
          ('auto_augment', optional(str), None, "RandAugment spec (timm's rand-m9-mstd0.5-inc1 "
           "or MindCV's randaug-...), or none",
           dict(check=RAND_AUGMENT, differs='autoaug, 3a, augmix and trivialaugwide are '
                                            'refused')),
          ('re_prob', number, 0.0, 'random erasing probability (after normalisation)',
           dict(check=PROBABILITY)),
          ('re_scale', literal, (0.02, 0.33), 'random erasing area range',
           dict(check=pair(0.0, 1.0))),
          ('re_ratio', literal, (0.3, 3.3), 'random erasing aspect range',
           dict(check=pair(0.0, float('inf'), low_open=True))),
          ('re_value', literal, 0, "random erasing fill, written into the normalised image: a "
           "number (0: the mean pixel), one number per channel, or 'random' (per-pixel N(0, 1) "
           "noise)", dict(check=Check(lambda v: v == 'random' or _is_number(v) or
                                      isinstance(v, (list, tuple)) and 0 < len(v) <= 64 and
                                      all(map(_is_number, v)),
                                      "a number, one number per channel, or 'random'"))),
          ('re_max_attempts', integer, 10, 'random erasing tries per image to fit a box',
           dict(check=at_least(1, 1000))),
          ('re_sampling', str, 'mindspore', "how the erased box is drawn: mindspore (MindCV's: "
           "aspect uniform in re_ratio) or timm (aspect log-uniform)",
           dict(check=choice('mindspore', 'timm'), mindcv=NOT_IN_MINDCV)),
          ('aug_splits', integer, 0, 'AugMix splits (MindCV); only 0 (off) here',
           dict(check=at_least(0), differs='above 0 is refused',
                **_refusal(lambda v: v > 0, 'aug_splits {value} (AugMix splits with their JSD '
                                            'loss) is not available here: set aug_splits: 0 '
                                            '(RandAugment via auto_augment is)'))),
          ('mean', literal, None, "normalisation mean, 0-1 or 0-255 scale (None: the variant's)",
           dict(check=_eval_setting('mean', 'one number per channel (or None)'),
                mindcv=[123.675, 116.28, 103.53], differs="default None: the variant's, the "
                                                          "same ImageNet numbers")),
          ('std', literal, None, "normalisation std, 0-1 or 0-255 scale (None: the variant's)",
           dict(check=_eval_setting('std', 'one positive number per channel (or None)'),
                mindcv=[58.395, 57.12, 57.375], differs="default None: the variant's, the same "
                                                        "ImageNet numbers")),
          ('crop_pct', optional(number), None, "eval center-crop fraction: the short side is "
           "resized to size / crop_pct (None: the variant's 0.875)",
           dict(check=_eval_setting('crop_pct', 'in (0, 1] (or None)'), mindcv=0.875,
                differs="default None: the variant's, 0.875 for every CoaT")),
          ('crop_mode', optional(str), None, "eval resize: center (short side, then crop) or "
           "squash (None: the variant's center)",
           dict(check=_eval_setting('crop_mode', 'center or squash (or None)'),
                mindcv=NOT_IN_MINDCV)),
          ('mixup', number, 0.0, 'Mixup alpha (0: off)', dict(check=at_least(0))),
          ('cutmix', number, 0.0, 'CutMix alpha (0: off)', dict(check=at_least(0))),
          ('cutmix_prob', number, 1.0, 'probability that a batch is mixed at all (Mixup or '
           'CutMix)', dict(check=PROBABILITY)),
          ('mixup_switch_prob', number, 0.5, 'probability of CutMix rather than Mixup',
           dict(check=PROBABILITY, mindcv=NOT_IN_MINDCV)),
          ('aug_repeats', integer, 0, 'repeated augmentation: copies of each image across '
           'ranks (0/1: off)', dict(check=at_least(0, 64),
                                    differs='on one device only with '
                                            'aug_repeats_single_device: True')),
          ('aug_repeats_single_device', str2bool, False, 'apply aug_repeats on one device too '
           '(the official main.py would)', dict(mindcv=NOT_IN_MINDCV)),
          ),
    _rows('model',
          ('model', str, 'coat_lite_tiny', 'variant name (mindcoat.list_models())',
           dict(mindcv='mobilenet_v2_035_224', differs='the eight CoaT names')),
          ('num_classes', optional(integer), None, "classifier size (None: train counts the "
           "training split's class folders; validate and predict read the checkpoint)",
           dict(check=maybe(at_least(1, 1_000_000)))),
          ('in_channels', integer, 3, 'image channels', dict(check=at_least(1, 64))),
          ('drop_rate', optional(number), None, "dropout rate (None: the variant's, 0)",
           dict(check=maybe(between(0, 1, high_open=True)))),
          ('drop_path_rate', optional(number), None, "stochastic depth rate (None: the "
           "variant's, 0)", dict(check=maybe(between(0, 1, high_open=True)))),
          ('model_kwargs', literal, None, 'architecture overrides, e.g. {embed_dims: '
           '[16, 16, 16, 16]}', dict(check=Check(lambda v: v is None or isinstance(v, dict) and
                                                 all(isinstance(k, str) for k in v),
                                                 'a mapping of architecture arguments, e.g. '
                                                 '{embed_dims: [16, 16, 16, 16]}'),
                                     mindcv=NOT_IN_MINDCV)),
          ('pretrained', literal, False, 'True: the official weights (downloaded once into the '
           'cache); or a local weights file (as ckpt_path)',
           dict(check=Check(lambda v: isinstance(v, (bool, str)), 'True, False or a file path'),
                differs='True downloads the official CoaT weights (not MindCV\'s)')),
          ('ckpt_path', optional(str), None, 'weights to start from (fine-tuning), in any '
           'format mindcoat reads; weights only',
           dict(mindcv='', differs="default None rather than '': no checkpoint either way; a "
                                   "folder that holds a run is refused (use --resume)")),
          ('ckpt_use_ema', str2bool, False, 'take the EMA weights from ckpt_path',
           dict(mindcv=NOT_IN_MINDCV)),
          ('resume', optional(str), None, 'a mindcoat training checkpoint to continue exactly',
           dict(mindcv=NOT_IN_MINDCV)),
          ('resume_opt', str2bool, False, 'MindCV: with ckpt_path, restore the optimizer too; '
           'here --resume restores everything', dict(differs='refused with ckpt_path: use '
                                                             '--resume')),
          ('keep_checkpoint_max', integer, 10, 'epoch checkpoints kept',
           dict(check=at_least(1))),
          ('ckpt_save_dir', str, './ckpt', 'the run folder: checkpoints, log.jsonl, train.log',
           dict(differs='a folder holding another run needs --resume or --overwrite True')),
          ('overwrite', str2bool, False, 'replace the run already in ckpt_save_dir (else an '
           'error, unless --resume continues it)', dict(mindcv=NOT_IN_MINDCV)),
          ('ckpt_save_interval', integer, 1, 'epochs between epoch checkpoints',
           dict(check=at_least(1))),
          ('ckpt_save_policy', str, 'latest_k', 'latest_k or top_k (by val top-1)',
           dict(check=choice('latest_k', 'top_k'))),
          ('epoch_size', integer, 90, 'epochs', dict(check=at_least(1, MAX_EPOCHS))),
          ('dataset_sink_mode', str2bool, False, "MindSpore's data sink on Ascend/GPU; the CPU "
           "has none (one log line, then the plain loop)",
           dict(mindcv=True, differs='default False (the plain loop)')),
          ('ema', str2bool, False, 'keep an exponential moving average of the weights'),
          ('ema_decay', number, 0.9999, 'EMA decay per step', dict(check=between(0, 1,
                                                                              high_open=True))),
          ('ema_warmup', str2bool, True, "MindCV's ramp decay * (1 - exp(-n / 2000)); False: "
           "timm's fixed decay", dict(mindcv=NOT_IN_MINDCV)),
          ('layer_decay', optional(number), None, 'layer-wise lr decay (MindCV); only None here',
           dict(differs='refused when set',
                **_refusal(lambda v: v is not None, 'layer_decay {value} (layer-wise lr decay) '
                                                    'is not available here: set layer_decay: '
                                                    'null'))),
          ('gradient_accumulation_steps', integer, 1, 'batches accumulated per update; only 1 '
           'here', dict(check=at_least(1), differs='above 1 is refused',
                        **_refusal(lambda v: v > 1, 'gradient_accumulation_steps {value} is not '
                                                    'available here: reach the same global batch '
                                                    'with batch_size or more devices (and set '
                                                    'gradient_accumulation_steps: 1)'))),
          ),
    _rows('optimizer',
          ('opt', str, 'adam', 'adamw or lion',
           dict(differs="adam (MindCV's default) and MindCV's other optimizers are refused",
                refuse=Check(lambda v: _optimizer_problem(v) is None, '',
                             _optimizer_problem))),
          ('momentum', number, 0.9, 'momentum (sgd/momentum optimizers; unused by adamw and '
           'lion)'),
          ('use_nesterov', str2bool, False, 'Nesterov momentum (unused by adamw and lion)'),
          ('weight_decay', number, 1e-6, 'decoupled weight decay', dict(check=at_least(0))),
          ('filter_bias_and_bn', str2bool, True, 'with weight_decay_filter None: no decay on '
           'class tokens, norms and biases', dict(mindcv=NOT_IN_MINDCV)),
          ('weight_decay_filter', optional(str), 'disable', "MindCV's filter: disable (every "
           "parameter decays), auto or norm_and_bias; None: filter_bias_and_bn decides",
           dict(check=maybe(Check(_in_library('..optim.factory', 'WEIGHT_DECAY_FILTERS'),
                                  'disable, auto or norm_and_bias')),
                differs='None hands the choice to filter_bias_and_bn (the official rule)')),
          ('betas', literal, None, "Adam / Lion betas (None: the optimizer's own, 0.9/0.999 "
           "and 0.9/0.99)", dict(check=maybe(Check(
               lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and
               all(_is_number(b) and 0 <= b < 1 for b in v), 'two numbers in [0, 1)')),
               mindcv=NOT_IN_MINDCV)),
          ('eps', optional(number), None, "AdamW epsilon (None: AdamW's own 1e-8)",
           dict(check=maybe(above(0, 1)), mindcv=1e-10,
                differs="MindCV's AdamW ignores its eps (1e-10, for rmsprop only) and runs at "
                        "1e-8, as None does here; a value you set is used")),
          ('clip_grad', str2bool, False, 'clip gradients by their global norm'),
          ('clip_value', number, 15.0, 'largest global gradient norm',
           dict(check=above(0))),
          ),
    _rows('scheduler',
          ('scheduler', str, 'cosine_decay', "timm_cosine (per epoch, as the official main.py "
           "steps timm's CosineLRScheduler) or MindCV's: cosine_decay, warmup_cosine_decay, "
           "constant, step_decay, multi_step_decay, exponential_decay, polynomial_decay, "
           "one_cycle, cyclic",
           dict(check=Check(_in_library('..optim.scheduler', 'SCHEDULERS'),
                            'one of the names above', _scheduler_message))),
          ('lr', number, 0.001, 'peak learning rate (per lr_base_batch images when that is set)',
           dict(check=above(0))),
          ('lr_base_batch', optional(integer), None, 'when set, lr is per this many images of '
           'global batch and is scaled by global batch / this; None: lr as is',
           dict(check=maybe(at_least(1)), mindcv=NOT_IN_MINDCV)),
          ('min_lr', number, 1e-6, 'floor of the decay', dict(check=at_least(0))),
          ('warmup_epochs', number, 3, 'linear warmup epochs (within the run)',
           dict(check=at_least(0))),
          ('warmup_lr', optional(number), None, 'warmup start lr (None: warmup_factor * lr)',
           dict(check=maybe(at_least(0)), mindcv=NOT_IN_MINDCV)),
          ('warmup_factor', number, 0.0, 'warmup start as a fraction of lr, if warmup_lr is '
           'None', dict(check=at_least(0))),
          ('decay_epochs', optional(number), 100, "decay length in epochs (None: epoch_size - "
           "cooldown_epochs, minus the warmup for MindCV's schedulers)",
           dict(check=maybe(above(0)))),
          ('cooldown_epochs', number, 0, 'final epochs held at min_lr',
           dict(check=at_least(0), mindcv=NOT_IN_MINDCV)),
          ('decay_rate', number, 0.9, 'lr factor of step, multi-step and exponential decay',
           dict(check=above(0))),
          ('multi_step_decay_milestones', literal, [30, 60, 90], 'epochs at which '
           'multi_step_decay multiplies lr by decay_rate',
           dict(check=Check(lambda v: isinstance(v, (list, tuple)) and all(map(_is_number, v)),
                            'a list of epochs'))),
          ('lr_epoch_stair', str2bool, False, 'hold the lr constant within each epoch'),
          ('num_cycles', integer, 1, 'cosine_decay cycles', dict(check=at_least(1))),
          ('cycle_decay', number, 1.0, 'peak lr factor from one cosine cycle to the next',
           dict(check=at_least(0))),
          ),
    _rows('loss',
          ('loss', str, 'CE', 'CE: soft-target cross entropy (targets carry smoothing and '
           'mixing)', dict(differs='BCE is refused',
                           **_refusal(lambda v: str(v).lower() != 'ce',
                                      "loss '{value}': only CE (cross entropy on smoothed, "
                                      "mixed soft targets) is available here"))),
          ('label_smoothing', number, 0.0, 'label smoothing',
           dict(check=between(0, 1, high_open=True))),
          ('aux_factor', number, 0.0, 'auxiliary-head loss factor (MindCV); CoaT has none',
           dict(differs='only 0', **_refusal(lambda v: v != 0,
                                             'aux_factor {value}: CoaT has no auxiliary head; '
                                             'set aux_factor: 0'))),
          ('reduction', str, 'mean', 'loss reduction over the batch; only mean here',
           dict(differs='only mean', **_refusal(lambda v: str(v).lower() != 'mean',
                                                "reduction '{value}' is not available here: the "
                                                "loss is the batch mean (set reduction: mean)"))),
          ),
    _rows('amp',
          ('amp_level', str, 'O0', 'O0, O2 or O3 on Ascend and GPU; the CPU trains in float32',
           dict(check=choice('O0', 'O1', 'O2', 'O3'),
                differs='under O2, LayerNorm and the token softmax stay float32')),
          ('loss_scale_type', str, 'fixed', 'fixed, dynamic or none',
           dict(check=Check(lambda v: str(v).lower() in ('fixed', 'dynamic', 'none'),
                            'fixed, dynamic or none',
                            lambda v: f"loss_scale_type '{v}' is not available here: set fixed, "
                                      f"dynamic (what MindSpore picks itself under O2/O3 for "
                                      f"MindCV's auto) or none"))),
          ('loss_scale', number, 1.0, 'initial (dynamic) or constant (fixed) loss scale',
           dict(check=above(0))),
          ('drop_overflow_update', str2bool, False, 'skip steps whose gradients overflow'),
          ('val_amp_level', str, 'O0', "amp level of validate's network on Ascend/GPU (the CPU "
           "evaluates in float32)", dict(check=choice('O0', 'O1', 'O2', 'O3'))),
          ('amp_cast_list', optional(str), None, "MindCV's custom amp cast list; only None here",
           dict(differs='refused when set',
                **_refusal(lambda v: v is not None, 'amp_cast_list is not available here: under '
                                                    'O2 mindcoat keeps LayerNorm and softmax in '
                                                    'float32 itself; remove amp_cast_list'))),
          ),
)

# What a resumed run may change: where and how it runs, how much it logs and keeps, and how long
# it goes on. Everything else (model, data settings, optimizer, schedule) is the run's own.
RESUME_FREE = ('mode', 'device_target', 'jit_level', 'distribute', 'val_while_train',
               'val_interval', 'log_interval', 'summary', 'data_dir', 'num_parallel_workers',
               'eval_shuffle', 'keep_checkpoint_max', 'ckpt_save_dir', 'overwrite',
               'ckpt_save_interval', 'ckpt_save_policy', 'epoch_size', 'dataset_sink_mode',
               'resume', 'val_amp_level')
KEYS_TABLE = tuple(tuple(Key(**{**vars(key), 'resume_free': key.name in RESUME_FREE})
                         for key in rows) for rows in KEYS_TABLE)
KEYS = {key.name: key for rows in KEYS_TABLE for key in rows}
GROUPS = tuple(rows[0].group for rows in KEYS_TABLE)
