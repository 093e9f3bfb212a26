"""Training checkpoints: written atomically (temporary file + rename), so a kill at any moment
leaves the previous file intact.

One file holds everything a resume needs: the model parameters under their own names (what
``mindcoat.convert.load_weights`` and ``create_model(checkpoint_path=...)`` read), the EMA as
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
import re
from contextlib import contextmanager

import mindspore as ms

FORMAT = 'mindcoat-train-v1'


class ResumeError(ValueError):
    """A file that cannot be resumed from, reported as one line."""


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


# ours (.<name>.<pid>.tmp.ckpt) and the one MindSpore writes on its way to it (...tmp.tmp)
_TEMPORARY = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp\.(ckpt|tmp)$')


def _temporary_path(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}.tmp.ckpt')


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_partial(tmp):
    _remove(tmp)
    _remove(tmp[:-len('.ckpt')] + '.tmp')  # MindSpore's own temporary on the way to ``tmp``


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Deletes the temporary files of checkpoint writes whose process is gone (killed mid-write);
    a write still in progress (another live process) is left alone."""
    for name in os.listdir(folder):
        m = _TEMPORARY.match(name)
        if m and not _alive(int(m.group('pid'))):
            _remove(os.path.join(folder, name))


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (full disk, permissions); the previous file of the
    same name is untouched."""


def save_checkpoint(path, params, epoch, global_step, best_top1, config):
    """``params``: Parameters (names as stored). Writes ``path`` atomically, with a CRC: into a
    temporary file renamed over ``path`` only once complete. On any failure the temporary file is
    removed and CheckpointWriteError (one line) raised; ``path`` keeps its previous content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary_path(path)
    try:
        ms.save_checkpoint([{'name': p.name, 'data': p} for p in params], tmp,
                           append_dict={'format': FORMAT, 'epoch': int(epoch),
                                        'global_step': int(global_step),
                                        'best_top1': float(best_top1),
                                        'config': json.dumps(config, default=str)},
                           crc_check=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as e:
        _remove_partial(tmp)
        reason = getattr(e, 'strerror', None) or (str(e).strip().splitlines() or
                                                  [type(e).__name__])[0]
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; the previous "
                                   f"{os.path.basename(path)} (if any) is kept") from None
    except BaseException:  # interrupted: leave no partial file behind
        _remove_partial(tmp)
        raise


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


class CheckpointKeeper:
    """Names and prunes the files of a run: ``<model>-<epoch>.ckpt`` every ``interval`` epochs
    (the newest ``keep_max`` by 'latest_k', the best ``keep_max`` by val top-1 by 'top_k'),
    ``<model>-best.ckpt`` and ``<model>-latest.ckpt`` (the resume point)."""

    def __init__(self, folder, model_name, interval=1, keep_max=10, policy='latest_k',
                 scores=None):
        """``scores``: {epoch: val top-1} of the epochs already logged (a resumed run), so the
        numbered checkpoints already on disk count towards ``keep_max``."""
        if policy not in ('latest_k', 'top_k'):
            raise ValueError(f"ckpt_save_policy must be latest_k or top_k, got '{policy}'")
        self.folder, self.name = folder, model_name
        self.interval, self.keep_max, self.policy = max(interval, 1), keep_max, policy
        from .run_dir import checkpoint_files
        scores = scores or {}
        self.kept = [(self._score(scores.get(epoch, -1.0), epoch), epoch, path)
                     for epoch, path in checkpoint_files(folder, model_name).items()]

    def _score(self, top1, epoch):
        return top1 if self.policy == 'top_k' else epoch

    def path(self, tag):
        return os.path.join(self.folder, f'{self.name}-{tag}.ckpt')

    def save_epoch(self, epoch, top1, save):
        """``save(path)`` writes one file. Called after epoch ``epoch`` (1-based) ends."""
        if epoch % self.interval == 0:
            path = self.path(epoch)
            save(path)
            self.kept = [k for k in self.kept if k[1] != epoch]  # rewritten after a resume
            self.kept.append((self._score(top1, epoch), epoch, path))
            self.kept.sort(key=lambda k: (k[0], k[1]), reverse=True)
            for _, _, old in self.kept[self.keep_max:]:
                if os.path.exists(old):
                    os.remove(old)
            self.kept = self.kept[:self.keep_max]
        save(self.path('latest'))
