"""Training checkpoints: written atomically (temporary file + rename), so a kill at any moment
leaves the previous file intact.

One file holds everything a resume needs: the model parameters under their own names (what
``mindcoat.convert.load_weights`` and ``create_model(checkpoint_path=...)`` read), the EMA as
``ema.<name>``, the AdamW moments and step as ``optimizer.*``, the loss scaler as
``loss_scaler.*``, and, as appended values, the completed epoch, the global step, the best top-1
and the config (JSON). Resume points are epoch boundaries. Files are written with MindSpore's
CRC and read with the CRC check, so a damaged file is refused instead of loading wrong values.
"""
import json
import logging
import os
from contextlib import contextmanager

import mindspore as ms

FORMAT = 'mindcoat-train-v1'


class ResumeError(ValueError):
    """A file that cannot be resumed from, reported as one line."""


def training_state(model, optimizer, ema=None, loss_scaler=None):
    """Every Parameter a resume restores: the model's, the optimizer's moments and step, the EMA
    and the loss scaler's scale and counter (renamed ``loss_scaler.*``)."""
    state = list(model.get_parameters()) + optimizer.state_params()
    state += list(ema.ema) if ema is not None else []
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
    """``params``: Parameters (names as stored). Writes ``path`` atomically, with a CRC."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.tmp.ckpt')
    ms.save_checkpoint([{'name': p.name, 'data': p} for p in params], tmp,
                       append_dict={'format': FORMAT, 'epoch': int(epoch),
                                    'global_step': int(global_step),
                                    'best_top1': float(best_top1),
                                    'config': json.dumps(config, default=str)},
                       crc_check=True)
    os.replace(tmp, path)


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
    if str(stored.get('format', '')) != FORMAT:
        raise ResumeError(f"{path} is not a mindcoat training checkpoint (use --ckpt_path to "
                          f"start from its weights instead)")
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


class CheckpointKeeper:
    """Names and prunes the files of a run: ``<model>-<epoch>.ckpt`` every ``interval`` epochs
    (the newest ``keep_max`` by 'latest_k', the best ``keep_max`` by val top-1 by 'top_k'),
    ``<model>-best.ckpt`` and ``<model>-latest.ckpt`` (the resume point)."""

    def __init__(self, folder, model_name, interval=1, keep_max=10, policy='latest_k'):
        if policy not in ('latest_k', 'top_k'):
            raise ValueError(f"ckpt_save_policy must be latest_k or top_k, got '{policy}'")
        self.folder, self.name = folder, model_name
        self.interval, self.keep_max, self.policy = max(interval, 1), keep_max, policy
        self.kept = []  # (score, epoch, path)

    def path(self, tag):
        return os.path.join(self.folder, f'{self.name}-{tag}.ckpt')

    def save_epoch(self, epoch, top1, save):
        """``save(path)`` writes one file. Called after epoch ``epoch`` (1-based) ends."""
        if epoch % self.interval == 0:
            path = self.path(epoch)
            save(path)
            self.kept.append((top1 if self.policy == 'top_k' else epoch, epoch, path))
            self.kept.sort(key=lambda k: (k[0], k[1]), reverse=True)
            for _, _, old in self.kept[self.keep_max:]:
                if os.path.exists(old):
                    os.remove(old)
            self.kept = self.kept[:self.keep_max]
        save(self.path('latest'))
