"""Training checkpoints: written atomically (temporary file + rename), so a kill at any moment
leaves the previous file intact.

One file holds everything a resume needs: the model parameters under their own names (what
``mindcoat.weights.load_weights`` and ``create_model(checkpoint_path=...)`` read), the EMA as
``ema.<name>``, the AdamW moments and step as ``optimizer.*``, the loss scaler as
``loss_scaler.*``, the step's global step (the index into its lr schedule) as
``train_step.global_step``, and, as appended values, the completed epoch, the global step, the
best top-1 and the config (JSON). Resume points are epoch boundaries. Files are written with
MindSpore's CRC and read with the CRC check, so a damaged file is refused instead of loading
wrong values.
"""
import json
import logging
import os
from contextlib import contextmanager

import mindspore as ms

from ..errors import ResumeError
from ..weights.checkpoint import TRAIN_FORMAT, save_ckpt

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


@contextmanager
def _quiet_mindspore_log():
    """MindSpore logs its own ERROR line before raising on a bad file; ours says it in one."""
    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()
    except (ImportError, AttributeError):
        yield
        return
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def save_checkpoint(path, params, epoch, global_step, best_top1, config):
    """``params``: Parameters (names as stored). Writes ``path`` atomically, with a CRC; on
    failure CheckpointWriteError (one line) and ``path`` keeps its previous content."""
    save_ckpt(path, params, {'format': TRAIN_FORMAT, 'epoch': int(epoch),
                             'global_step': int(global_step), 'best_top1': float(best_top1),
                             'config': json.dumps(config, default=str)})


def load_training_state(path, params):
    """Restores every Parameter in ``params`` from a training checkpoint; returns
    (epoch, global_step, best_top1)."""
    if not os.path.isfile(path):
        raise ResumeError(f"resume checkpoint not found: {path}")
    try:
        with _quiet_mindspore_log():
            stored = ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError, OSError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if reason.startswith('Failed to read the checkpoint file'):  # MindSpore's CRC/parse error
            reason = 'the file is damaged (CRC check failed or unreadable)'
        raise ResumeError(f"cannot resume from {path}: {reason}; resume from an earlier "
                          f"checkpoint of the run") from None
    if str(stored.get('format', '')) != TRAIN_FORMAT:
        raise ResumeError(f"{path} is not a mindcoat training checkpoint (use --ckpt_path to "
                          f"start from its weights instead)")
    if GLOBAL_STEP not in stored and 'global_step' in stored:  # written before it was a Parameter
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
    for p in params:
        value = stored[p.name]
        if tuple(value.shape) != tuple(p.shape):
            raise ResumeError(f"{path} does not match this run: '{p.name}' has shape "
                              f"{tuple(value.shape)}, the run has {tuple(p.shape)}")
        p.set_data(value.astype(p.dtype))
    return (int(stored['epoch'].asnumpy()), int(stored['global_step'].asnumpy()),
            float(stored['best_top1'].asnumpy()))
