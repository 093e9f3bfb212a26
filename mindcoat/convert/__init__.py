"""Load CoaT weights from any source into a mindcoat model, or convert them to a MindSpore .ckpt.

Sources: the official mlpc-ucsd/CoaT ``.pth`` files, timm's ``.pth``/``.safetensors``, MindCV's
``.ckpt`` and mindcoat's own checkpoints (EMA under 'ema.*'). No file's code is ever run.
"""
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .mapping import canonical_name, select_weights, to_mindcoat
from .readers import CheckpointError, read_any

__all__ = ['CheckpointError', 'LoadReport', 'read_weights', 'load_weights', 'convert_checkpoint']

# Keys the reference writes but never uses: the stage-1 final norm (and in CoaT-Lite the
# stage-2/3 norms); a backbone (features_only) also has no use for the classifier.
_UNUSED = re.compile(r'^norm[1-3]\.')
_CLASSIFIER = re.compile(r'^(norm\d|aggregate|head)\.')


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


def read_weights(path, use_ema=False):
    """Reads any supported file into ({mindcoat name: array}, alias conflicts)."""
    return to_mindcoat(select_weights(read_any(str(path)), use_ema, str(path)))


def _is_training_state(key, value, param_names):
    """Optimizer moments, step counters, loss scale: keys ending in a parameter name, or scalars."""
    if not isinstance(value, np.ndarray) or value.ndim == 0 or value.size == 1:
        return True
    return any(key.endswith('.' + p) or key.endswith('.' + canonical_name(p)) for p in param_names)


def load_weights(model, path, use_ema=False, log=print):
    """Loads weights into ``model`` in place and returns a LoadReport (also passed to ``log``).
    A shape mismatch is an error, except for the classifier head when num_classes differs:
    the head then keeps its fresh initialisation."""
    import mindspore as ms
    weights, conflicts = read_weights(path, use_ema)
    report = LoadReport(f"{path}{' (EMA)' if use_ema else ''}", alias_conflicts=conflicts)
    params = {p.name: p for p in model.get_parameters()}
    mismatched, assignments = [], []
    for key, value in weights.items():
        param = params.get(key)
        if param is None:
            if _UNUSED.match(key) or (getattr(model, 'features_only', False)
                                      and _CLASSIFIER.match(key)):
                report.ignored.append(key)
            elif _is_training_state(key, value, params):
                report.training_state += 1
            else:
                report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(param.shape):
            if value.size == int(np.prod(param.shape)) and \
                    [d for d in value.shape if d != 1] == [d for d in param.shape if d != 1]:
                value = value.reshape(param.shape)  # e.g. Conv1d (1, 3, 1, 1) vs (1, 3, 1)
            elif key.startswith('head.'):
                report.head_reinitialised = (f"checkpoint head {key} is {tuple(value.shape)}, "
                                             f"model needs {tuple(param.shape)}")
                continue
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                                  f"{tuple(param.shape)}")
                continue
        assignments.append((param, value))
        report.loaded.append(key)
    # checked before anything is assigned: a refused file leaves the model as it was
    if mismatched:
        raise CheckpointError(f"{path} does not fit {getattr(model, 'name', 'this model')} "
                              f"({len(mismatched)} shape mismatches, e.g. {mismatched[0]}); "
                              "is it a checkpoint of another variant?")
    if not report.loaded:
        raise CheckpointError(f"{path}: no CoaT weights matched the model (first keys: "
                              f"{', '.join(list(weights)[:5])})")
    for param, value in assignments:
        param.set_data(ms.Tensor(np.ascontiguousarray(value), dtype=param.dtype))
    loaded = set(report.loaded)
    report.missing = [n for n in params if n not in loaded and
                      not (report.head_reinitialised and n.startswith('head.'))]
    for line in report.lines():
        log(line)
    return report


def convert_checkpoint(src, model_name, out, use_ema=False, num_classes=1000, log=print, **kwargs):
    """Reads ``src`` (any supported format) and writes a MindSpore checkpoint for ``model_name``."""
    import mindspore as ms
    from ..models import create_model
    model = create_model(model_name, num_classes=num_classes, **kwargs)
    report = load_weights(model, src, use_ema=use_ema, log=log)
    # MindSpore appends '.ckpt' to names without it, so the temporary name keeps the suffix
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.getpid()}.partial.ckpt")
    ms.save_checkpoint(model, tmp)
    os.replace(tmp, out)  # never leave a half-written checkpoint under the final name
    log(f"wrote {out}")
    return report
