"""``--resume``: a run's own continuation.

A trainer checkpoint stores the run's resolved config. Resuming restores it: the model, data
settings, optimizer and schedule are the run's own. A flag typed on the command line that
contradicts them is refused in one line, except the keys the table marks free on resume (where
and how the run goes on: devices, workers, logging, checkpoint keeping, data location, and
epoch_size). Values a -c file gives are the run's unless typed. The run continues in the folder
its checkpoint is in; another folder is used only when named on the command line and it holds
no other run.
"""
import os

from ..errors import ConfigError
from .keys import KEYS
from .parse import check_values


def _plain(value):
    """A value as JSON gives it back (tuples are lists), for comparing with a saved one."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(mine, theirs):
    mine, theirs = _plain(mine), _plain(theirs)
    if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and \
            not isinstance(mine, bool) and not isinstance(theirs, bool):
        return float(mine) == float(theirs)
    return mine == theirs


def _shown(value):
    return 'None' if value is None else str(_plain(value))


def restore_run_settings(cfg, saved, path):
    """``cfg`` (parsed, with ``command_line``) given the settings of the run ``path`` continues
    (``saved``: the config stored in that checkpoint). Returns notes for the log; ConfigError
    for a typed flag that contradicts the run."""
    typed = vars(cfg.command_line)
    notes, overridden = [], []
    for name, key in KEYS.items():
        if name not in saved or name in ('resume', 'ckpt_save_dir'):
            continue
        theirs, mine = saved[name], getattr(cfg, name)
        if name in typed:
            if key.resume_free or _same(mine, theirs):
                continue
            raise ConfigError(
                f"--{name} {_shown(mine)} contradicts the run being resumed ({name} "
                f"{_shown(theirs)} in {path}): a resumed run keeps its own settings; drop "
                f"--{name}, or start a new run from its weights with --ckpt_path {path}")
        if not _same(mine, theirs):
            overridden.append(name)
        setattr(cfg, name, theirs)
    check_values(cfg)  # the stored values are checked as typed ones are
    folder = os.path.dirname(os.path.abspath(path))
    if 'ckpt_save_dir' not in typed:
        cfg.ckpt_save_dir = folder
    notes.append(f"resuming {path}: the run's own settings (stored in the checkpoint), in "
                 f"{cfg.ckpt_save_dir}")
    if overridden:
        notes.append(f"the run's values replace what the config file or defaults say for: "
                     f"{', '.join(overridden)}")
    return notes


def same_folder(a, b):
    return os.path.realpath(a) == os.path.realpath(b)
