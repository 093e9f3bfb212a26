"""Load CoaT weights from any source into a mindcoat model, and read what a file says about the
model it belongs to.

Sources: the official mlpc-ucsd/CoaT ``.pth`` files (bare state dicts and the trainer's
checkpoints), timm's ``.pth``/``.safetensors``, MindCV's ``.ckpt`` and mindcoat's own checkpoints
(EMA under 'ema.*'). No file's code is ever run, and a file is checked whole (names, shapes,
dtypes, architecture) before the first parameter is assigned.
"""
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from ..models.registry import ARCHS
from .checkpoint import TRAIN_FORMAT, TRAIN_SETTINGS
from .mapping import canonical_name, select_weights, to_mindcoat
from .readers import as_numpy, read_any

# Keys the reference writes but never uses: the stage-1 final norm (and in CoaT-Lite the
# stage-2/3 norms); a backbone (features_only) also has no use for the classifier.
_UNUSED = re.compile(r'^norm[1-3]\.')
_CLASSIFIER = re.compile(r'^(norm\d|aggregate|head)\.')
# fewer matched parameters than this share is not this model's file, even with strict=False
_MIN_SHARE = 0.5
# What training scripts store beside the weights, and nothing else, is skipped as training state.
# mindcoat's trainer: anything under its own namespaces.
_TRAIN_NAMESPACES = ('optimizer.', 'train_step.', 'loss_scaler.')
# MindSpore's and MindCV's optimizers (each one MindCV's create_optimizer builds) and EMA: a
# copy of a parameter under '<prefix>.'
_STATE_COPIES = frozenset({
    'ema', 'adam_m', 'adam_v', 'moment1', 'moment2', 'moment3', 'vhat', 'moments', 'accum',
    'stat', 'lion_m', 'nadam_m', 'nadam_v', 'prev_gradient', 'mean_grad', 'mean_square',
    'moment', 'lamb_m', 'lamb_v'})
# their counters and hyper-parameters, the loss scale cell's, MindCV's EMA update count
# ('updates'), and the values a mindcoat trainer checkpoint appends
_STATE_SCALARS = frozenset({
    'global_step', 'learning_rate', 'beta1_power', 'beta2_power', 'mu_schedule', 'momentum',
    'scale_sense', 'current_iterator_step', 'last_overflow_iterator_step', 'updates',
    'ema_updates', 'epoch', 'best_top1'})
ALLOW_NONFINITE_ENV = 'MINDCOAT_ALLOW_NONFINITE'


@dataclass
class LoadReport:
    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    training_state: int = 0
    head_reinitialised: str = ''
    alias_conflicts: list = field(default_factory=list)

    def lines(self):
        total = len(self.loaded) + len(self.missing)
        out = [f"loaded {len(self.loaded)}/{total} parameters from {self.source}"]
        if self.head_reinitialised:
            out.append(f"classifier re-initialised: {self.head_reinitialised}")
        if self.missing:
            out.append(f"missing from the checkpoint ({len(self.missing)}, left as initialised): "
                       + _preview(self.missing))
        if self.unexpected:
            out.append(f"unexpected keys ({len(self.unexpected)}, not used): "
                       + _preview(self.unexpected))
        if self.ignored:
            out.append(f"ignored keys the model does not use ({len(self.ignored)}): "
                       + _preview(self.ignored))
        if self.alias_conflicts:
            out.append("warning: shared-module copies differ from the canonical copy "
                       f"(canonical used): {_preview(self.alias_conflicts)}")
        return out


def _preview(names, n=6):
    return ', '.join(names[:n]) + (f', ... (+{len(names) - n})' if len(names) > n else '')


def read_weights(path, use_ema=False, max_gb=None):
    """Reads any supported file into ({mindcoat name: array}, alias conflicts). Only the selected
    weights are read from disk (a trainer checkpoint's optimizer state is checked, not read)."""
    selected = select_weights(read_any(path, max_gb), use_ema, str(path))
    return to_mindcoat({k: as_numpy(v) for k, v in selected.items()})


# ------------------------------------------------------------------------ architecture check
def architecture(shapes):
    """What the parameter shapes say about a CoaT: embed_dims, serial_depths, parallel_depth,
    mlp_ratios (fields the names do not show are left out)."""
    dims = [shapes[f'cls_token{i}'][-1] for i in range(1, 5) if f'cls_token{i}' in shapes]
    depths, parallel = [0, 0, 0, 0], set()
    for name in shapes:
        m = re.match(r'serial_blocks([1-4])\.(\d+)\.', name)
        if m:
            stage = int(m.group(1)) - 1
            depths[stage] = max(depths[stage], int(m.group(2)) + 1)
        m = re.match(r'parallel_blocks\.(\d+)\.', name)
        if m:
            parallel.add(int(m.group(1)))
    out = {'serial_depths': tuple(depths), 'parallel_depth': len(parallel)}
    if len(dims) == 4:
        out['embed_dims'] = tuple(dims)
        hidden = [shapes.get(f'serial_blocks{i + 1}.0.mlp.fc1.weight', (0,))[0] for i in range(4)]
        if all(hidden):
            out['mlp_ratios'] = tuple(h / d for h, d in zip(hidden, dims))
    return out


def _describe(arch):
    return ', '.join(f"{k}={v}" for k, v in arch.items() if k != 'mlp_ratios')


def likely_variant(arch):
    """Registered variants whose architecture matches ``arch``, read off ARCHS without building
    a model."""
    names = []
    for name, cfg in ARCHS.items():
        mine = {'embed_dims': tuple(cfg['embed_dims']),
                'serial_depths': tuple(cfg['serial_depths']),
                'parallel_depth': cfg['parallel_depth'],
                'mlp_ratios': tuple(float(r) for r in cfg['mlp_ratios'])}
        if all(mine[k] == arch[k] for k in arch):
            names.append(name)
    return names


def _check_architecture(model, path, weights, params):
    """Another variant's file is refused with the variant it holds."""
    theirs = architecture({k: tuple(v.shape) for k, v in weights.items()})
    ours = architecture({k: tuple(p.shape) for k, p in params.items()})
    if theirs.get('embed_dims') is None or not any(theirs['serial_depths']):
        return  # too little of a CoaT in the file to tell; the name checks decide
    # a stage or the parallel blocks absent from the file is a partial file (the missing-key
    # check reports it), not another variant
    seen = dict(theirs, serial_depths=tuple(t or o for t, o in zip(theirs['serial_depths'],
                                                                    ours['serial_depths'])),
                parallel_depth=theirs['parallel_depth'] or ours['parallel_depth'])
    if all(seen[k] == ours.get(k, seen[k]) for k in seen):
        return
    names = likely_variant(theirs)
    model_name = getattr(model, 'name', 'this model')
    if names:
        raise CheckpointError(
            f"{path} holds {' or '.join(names)} weights ({_describe(theirs)}), not "
            f"{model_name} ({_describe(ours)}); load it into model {names[0]} (the model "
            f"name: --model / -m {names[0]}, create_model('{names[0]}'))")
    raise CheckpointError(
        f"{path} holds weights of a CoaT that is not {model_name}: the file has "
        f"{_describe(theirs)}, the model {_describe(ours)}; no registered variant matches, "
        "give the model those architecture overrides (--model_kwargs, or create_model's "
        "keyword arguments)")


# ----------------------------------------------------------------------- what a file says


def checkpoint_info(path, max_gb=None):
    """What ``path`` says about the model it belongs to, read through the same safe readers as
    load_weights. Always 'format' ('mindcoat-train-v1' for trainer checkpoints, else 'weights');
    from the tensors: 'num_classes' (rows of head.weight), 'in_channels' and 'model' when one
    registered variant has this architecture; from a trainer checkpoint's stored config also
    'model', 'model_kwargs', 'image_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean',
    'std' and 'class_names' where set. Keys that cannot be known are absent. 'has_ema': whether
    the file holds EMA weights too (what load_weights(..., use_ema=True) would load)."""
    tree = read_any(path, max_gb)
    shapes = {canonical_name(k): tuple(v.shape)
              for k, v in select_weights(tree, False, str(path)).items()}
    info = dict(_from_shapes(shapes), format='weights', has_ema=_has_ema(tree, path))
    if isinstance(tree, dict) and str(tree.get('format', '')) == TRAIN_FORMAT:
        info['format'] = TRAIN_FORMAT
        info.update(_from_train_config(tree.get('config'), path, info.get('num_classes')))
    return info


def _has_ema(tree, path):
    try:
        select_weights(tree, True, str(path))
    except CheckpointError:
        return False
    return True


def _from_shapes(shapes):
    info = {}
    if len(shapes.get('head.weight', ())) == 2:
        info['num_classes'] = shapes['head.weight'][0]
    if len(shapes.get('patch_embed1.proj.weight', ())) == 4:
        info['in_channels'] = shapes['patch_embed1.proj.weight'][1]
    arch = architecture(shapes)
    names = likely_variant(arch) if 'embed_dims' in arch else []
    if len(names) == 1:
        info['model'] = names[0]
    return info


def _from_train_config(text, path, num_classes):
    """The settings a trainer checkpoint stored (its config as JSON), None values left out."""
    try:
        config = json.loads(str(text))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a mindcoat training checkpoint whose stored config is "
                              "not a JSON object; the file is damaged")
    out = {mine: config[theirs] for theirs, mine in TRAIN_SETTINGS.items()
           if config.get(theirs) is not None}
    names = out.get('class_names')
    if names is not None and not (isinstance(names, list) and len(names) == num_classes and
                                  all(isinstance(n, str) for n in names)):
        del out['class_names']  # names that do not fit the head name nothing
    return out


# ------------------------------------------------------------------------------------ loading
def _is_training_state(key, value, param_names):
    """Optimizer moments and counters, EMA copies, loss scale, step counters: a name under one of
    mindcoat's training namespaces, a parameter's name (any of its spellings) under a known
    optimizer / EMA prefix, or a known scalar."""
    if key.startswith(_TRAIN_NAMESPACES):
        return True
    if key in _STATE_SCALARS:
        return value.size == 1
    prefix, _, tail = key.partition('.')
    return prefix in _STATE_COPIES and bool(canonical_name(tail) in param_names or
                                            _UNUSED.match(tail))


def _fit(key, value, param):
    """``value`` shaped for ``param``, or None if the shapes differ."""
    if tuple(value.shape) == tuple(param.shape):
        return value
    if value.size == int(np.prod(param.shape)) and \
            [d for d in value.shape if d != 1] == [d for d in param.shape if d != 1]:
        return value.reshape(param.shape)  # e.g. Conv1d (1, 3, 1, 1) vs (1, 3, 1)
    return None


def _head_verdict(model, path, weights, params):
    """(note, refusal) about the file's classifier. Both '' when it fits the model (or either
    has none); a note for the report when it is a whole head for another number of classes,
    which keeps its fresh initialisation; a refusal (the error message) for any other head,
    half of one included: a head is used whole or not at all."""
    keys = [k for k in ('head.weight', 'head.bias') if k in params]
    present = [k for k in keys if k in weights]
    if 'head.weight' not in params or not present or (
            present == keys and all(_fit(k, weights[k], params[k]) is not None for k in keys)):
        return '', ''
    ours = {k: tuple(params[k].shape) for k in keys}
    theirs = {k: tuple(weights[k].shape) if k in weights else None for k in keys}
    if _another_head(theirs, ours):
        return f"checkpoint head.weight is {theirs['head.weight']}, model needs " \
               f"{ours['head.weight']}", ''
    found = ', '.join(f"{k} {theirs[k] or 'absent'}" for k in keys)
    needed = ', '.join(f"{k} {ours[k]}" for k in keys)
    return '', (f"{path}: its classifier ({found}) fits neither "
                f"{getattr(model, 'name', 'this model')} ({needed}) nor another number of "
                f"classes with {ours['head.weight'][1]} input features; the file is damaged or "
                "belongs to another model")


def _another_head(theirs, ours):
    """Whether the file's head shapes are (K, in_features) and (K,) for a K of its own."""
    weight, (classes, features) = theirs['head.weight'], ours['head.weight']
    if weight is None or len(weight) != 2 or weight[1] != features or weight[0] == classes:
        return False
    return 'head.bias' not in ours or theirs['head.bias'] == (weight[0],)


def _plan(model, path, weights, report, strict):
    """Every check, then the (parameter, value) pairs to assign. Raises before any assignment."""
    params = {p.name: p for p in model.get_parameters()}
    _check_architecture(model, path, weights, params)
    features_only = getattr(model, 'features_only', False)
    report.head_reinitialised, head_refusal = ('', '') if features_only else \
        _head_verdict(model, path, weights, params)
    assignments, mismatched, bad_dtype = [], [], []
    for key, value in weights.items():
        param = params.get(key)
        # a refused head's misfits are said by the refusal; what fits still counts as found
        if param is not None and key.startswith('head.') and (report.head_reinitialised or (
                head_refusal and _fit(key, value, param) is None)):
            continue
        if param is None:
            if _UNUSED.match(key) or (features_only and _CLASSIFIER.match(key)):
                report.ignored.append(key)
            elif _is_training_state(key, value, params):
                report.training_state += 1
            else:
                report.unexpected.append(key)
            continue
        if value.dtype.kind != 'f':
            bad_dtype.append(f"{key} is {value.dtype}")
            continue
        fitted = _fit(key, value, param)
        if fitted is None:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(param.shape)}")
            continue
        assignments.append((param, fitted))
        report.loaded.append(key)
    name = getattr(model, 'name', 'this model')
    if bad_dtype:
        raise CheckpointError(f"{path}: weights must be real floating point, but "
                              f"{_preview(bad_dtype, 3)}; the file is damaged or not weights")
    if mismatched:
        raise CheckpointError(f"{path} does not fit {name} ({len(mismatched)} shape mismatches, "
                              f"e.g. {mismatched[0]}); is it a checkpoint of another variant?")
    loaded = set(report.loaded)
    report.missing = [n for n in params if n not in loaded and
                      not (report.head_reinitialised and n.startswith('head.'))]
    if len(loaded) < _MIN_SHARE * len(params):
        raise CheckpointError(f"{path}: only {len(loaded)} of {len(params)} parameters of {name} "
                              f"found (first keys in the file: {_preview(list(weights), 4)}); "
                              "not weights for this model")
    if head_refusal:
        raise CheckpointError(head_refusal)
    if strict and report.unexpected:
        raise CheckpointError(f"{path}: {len(report.unexpected)} keys {name} does not have "
                              f"({_preview(report.unexpected, 3)}); another model's file? "
                              "Pass --non_strict (strict=False) to load the rest anyway")
    if strict and report.missing:
        raise CheckpointError(f"{path}: {len(report.missing)} parameters of {name} are missing "
                              f"({_preview(report.missing, 3)}); pass --non_strict "
                              "(strict=False) to keep them as initialised")
    return assignments


def load_weights(model, path, use_ema=False, strict=True, log=print, max_gb=None):
    """Loads weights into ``model`` in place and returns a LoadReport (also passed to ``log``).

    Nothing is assigned unless the whole file fits: every tensor a parameter of the model (or a
    known unused key: the reference's unused final norms, training state), every shape and
    dtype right, and the file's architecture the model's (another variant's file is refused
    with its name), and no NaN or Inf in what is assigned (unless $MINDCOAT_ALLOW_NONFINITE is
    1). The one exception is a classifier head for another num_classes (head.weight (K, the
    model's in-features), head.bias (K,)): it keeps its fresh initialisation, with a line saying
    so; any other head that does not fit is refused. ``strict=False`` accepts unexpected and
    missing keys (at least half of the parameters must still be found). ``max_gb`` caps the
    bytes the file may inflate to (default ${MINDCOAT_MAX_CHECKPOINT_GB} or 2)."""
    import mindspore as ms
    weights, conflicts = read_weights(path, use_ema, max_gb=max_gb)
    report = LoadReport(f"{path}{' (EMA)' if use_ema else ''}", alias_conflicts=conflicts)
    assignments = _plan(model, path, weights, report, strict)
    bad = first_nonfinite((param.name, value) for param, value in assignments)
    if bad is not None:
        raise CheckpointError(f"{path}: weight '{bad}' holds NaN or Inf values (a diverged "
                              f"training?); nothing was loaded. {nonfinite_hint()}")
    for param, value in assignments:
        param.set_data(ms.Tensor(np.ascontiguousarray(value), dtype=param.dtype))
    for line in report.lines():
        log(line)
    return report


# -------------------------------------------------------------------------- non-finite values
def nonfinite_hint():
    return f"Set {ALLOW_NONFINITE_ENV}=1 to load such weights anyway, for debugging"


def first_nonfinite(named):
    """The name of the first floating-point array in ``named`` ((name, array) pairs) that holds
    NaN or Inf; None if there is none or $MINDCOAT_ALLOW_NONFINITE is 1."""
    if os.environ.get(ALLOW_NONFINITE_ENV, '') == '1':
        return None
    for name, value in named:
        if value.dtype.kind in 'fc' and not np.isfinite(value).all():
            return name
    return None
