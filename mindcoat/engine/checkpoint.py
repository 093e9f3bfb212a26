"""Training checkpoints: written atomically (temporary file + rename), so a kill at any moment
leaves the previous file intact.

One file holds everything a resume needs: the model parameters under their own names (what
``mindcoat.weights.load_weights`` and ``create_model(checkpoint_path=...)`` read), the EMA as
``ema.<name>``, the AdamW moments and step as ``optimizer.*``, the loss scaler as
``loss_scaler.*``, the step's global step (the index into its lr schedule) as
``train_step.global_step``, and, as appended values, the completed epoch, the global step, the
best top-1 and the config (JSON). Resume points are epoch boundaries. Files are written with
MindSpore's CRC and read back (by mindcoat's own reader) with the CRC check, so a damaged file is
refused instead of loading wrong values, and so is a state holding NaN or Inf.
"""
import json
import os

import mindspore as ms
import numpy as np

from ..errors import CheckpointError, ResumeError
from ..weights.checkpoint import TRAIN_FORMAT, save_ckpt
from ..weights.loading import first_nonfinite, nonfinite_hint
from ..weights.readers import read_mindspore_ckpt

GLOBAL_STEP = 'train_step.global_step'


def training_state(model, optimizer, ema=None, loss_scaler=None, step=None):
    """Every Parameter a resume restores: the model's, the optimizer's moments and step, the EMA
    and its update counter, the loss scaler's scale and counter (renamed ``loss_scaler.*``) and
    the train step's global step."""
    state = list(model.get_parameters()) + optimizer.state_params()
    state += [step.global_step] if step is not None else []
    state += list(ema.ema) + ema.state_params() if ema is not None else []
    for name in ('scale_value', 'counter'):
        p = getattr(loss_scaler, name, None)
        if isinstance(p, ms.Parameter):
            p.name = 'loss_scaler.' + name
            state.append(p)
    return state


def save_checkpoint(path, params, epoch, global_step, best_top1, config):
    """``params``: Parameters (names as stored). Writes ``path`` atomically, with a CRC; on
    failure CheckpointWriteError (one line) and ``path`` keeps its previous content."""
    save_ckpt(path, params, {'format': TRAIN_FORMAT, 'epoch': int(epoch),
                             'global_step': int(global_step), 'best_top1': float(best_top1),
                             'config': json.dumps(config, default=str)})


def _read_stored(path):
    """{name: ms.Tensor, or str for the appended strings} of a training checkpoint, read by
    mindcoat's own .ckpt reader (MindSpore's crashes on some damaged files); its CRC is
    checked."""
    try:
        values = read_mindspore_ckpt(path)
    except CheckpointError as e:
        reason = str(e)
        reason = reason[len(f"{path}: "):] if reason.startswith(f"{path}: ") else reason
        raise ResumeError(f"cannot resume from {path}: {reason}; resume from an earlier "
                          f"checkpoint of the run") from None
    return {k: ms.Tensor(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}


def _refuse_nonfinite(path, stored, params):
    """A state holding NaN or Inf would train on from broken weights."""
    bad = first_nonfinite((p.name, stored[p.name].asnumpy()) for p in params)
    if bad is not None:
        raise ResumeError(f"cannot resume from {path}: '{bad}' holds NaN or Inf values; resume "
                          f"from an earlier checkpoint of the run. {nonfinite_hint()}")


def load_training_state(path, params):
    """Restores every Parameter in ``params`` from a training checkpoint; returns
    (epoch, global_step, best_top1)."""
    if not os.path.isfile(path):
        raise ResumeError(f"resume checkpoint not found: {path}")
    stored = _read_stored(path)
    if str(stored.get('format', '')) != TRAIN_FORMAT:
        raise ResumeError(f"{path} is not a mindcoat training checkpoint (use --ckpt_path to "
                          f"start from its weights instead)")
    # older files hold the global step only as an appended value
    if GLOBAL_STEP not in stored and 'global_step' in stored:
        stored[GLOBAL_STEP] = ms.Parameter(stored['global_step'].astype(ms.int32),
                                           name=GLOBAL_STEP)
    if 'ema_updates' not in stored and any(k.startswith('ema.') for k in stored):
        # written before the EMA counted its updates: that EMA followed every step (timm's)
        stored['ema_updates'] = ms.Parameter(stored['global_step'].astype(ms.float32),
                                             name='ema_updates')
    missing = [p.name for p in params if p.name not in stored]
    if missing:
        raise ResumeError(f"{path} does not match this run: {len(missing)} entries missing, "
                          f"e.g. '{missing[0]}' (another model or ema/loss-scale setting?)")
    _refuse_nonfinite(path, stored, params)
    wrong = [p for p in params if tuple(stored[p.name].shape) != tuple(p.shape)]
    if wrong:  # checked whole before the first assignment: a refused file changes nothing
        p = wrong[0]
        raise ResumeError(f"{path} does not match this run: '{p.name}' has shape "
                          f"{tuple(stored[p.name].shape)}, the run has {tuple(p.shape)}")
    for p in params:
        p.set_data(stored[p.name].astype(p.dtype))
    return (int(stored['epoch'].asnumpy()), int(stored['global_step'].asnumpy()),
            float(stored['best_top1'].asnumpy()))
