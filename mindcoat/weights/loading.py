"""Load CoaT weights from any source into a mindcoat model, and read what a file says about the
model it belongs to.

Sources: the official mlpc-ucsd/CoaT ``.pth`` files (bare state dicts and the trainer's
checkpoints), timm's ``.pth``/``.safetensors``, MindCV's ``.ckpt`` and mindcoat's own checkpoints
(EMA under 'ema.*'). No file's code is ever run, and a file is checked whole (names, shapes,
dtypes, architecture) before the first parameter is assigned.
"""
import json
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
            f"{model_name} ({_describe(ours)}); build {names[0]} (convert with -m {names[0]})")
    raise CheckpointError(
        f"{path} holds weights of a CoaT that is not {model_name}: the file has "
        f"{_describe(theirs)}, the model {_describe(ours)}; no registered variant matches, "
        "build the model with those model_kwargs")


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
    """Optimizer moments, step counters, loss scale, EMA copies: scalars, or a parameter's name
    (any of its spellings) under a prefix such as 'adam_m.', 'optimizer.moment1.', 'ema.'."""
    if value.ndim == 0 or value.size == 1:
        return True
    parts = key.split('.')
    for i in range(1, len(parts)):
        tail = '.'.join(parts[i:])
        if canonical_name(tail) in param_names or _UNUSED.match(tail):
            return True
    return False


def _fit(key, value, param):
    """``value`` shaped for ``param``, or None if the shapes differ."""
    if tuple(value.shape) == tuple(param.shape):
        return value
    if value.size == int(np.prod(param.shape)) and \
            [d for d in value.shape if d != 1] == [d for d in param.shape if d != 1]:
        return value.reshape(param.shape)  # e.g. Conv1d (1, 3, 1, 1) vs (1, 3, 1)
    return None


def _plan(model, path, weights, report, strict):
    """Every check, then the (parameter, value) pairs to assign. Raises before any assignment."""
    params = {p.name: p for p in model.get_parameters()}
    _check_architecture(model, path, weights, params)
    features_only = getattr(model, 'features_only', False)
    assignments, mismatched, bad_dtype = [], [], []
    for key, value in weights.items():
        param = params.get(key)
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
        if fitted is None and key.startswith('head.') and not features_only:
            report.head_reinitialised = (f"checkpoint head {key} is {tuple(value.shape)}, "
                                         f"model needs {tuple(param.shape)}")
            continue
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
    with its name). The one exception is the classifier head when num_classes differs: it keeps
    its fresh initialisation, with a line saying so. ``strict=False`` accepts unexpected and
    missing keys (at least half of the parameters must still be found). ``max_gb`` caps the
    bytes the file may inflate to (default ${MINDCOAT_MAX_CHECKPOINT_GB} or 2)."""
    import mindspore as ms
    weights, conflicts = read_weights(path, use_ema, max_gb=max_gb)
    report = LoadReport(f"{path}{' (EMA)' if use_ema else ''}", alias_conflicts=conflicts)
    assignments = _plan(model, path, weights, report, strict)
    for param, value in assignments:
        param.set_data(ms.Tensor(np.ascontiguousarray(value), dtype=param.dtype))
    for line in report.lines():
        log(line)
    return report
