"""A run's output folder (``ckpt_save_dir``): its checkpoints, ``log.jsonl`` (one JSON line per
epoch) and ``train.log`` (what the trainer printed). A folder that already holds a run is only
continued with ``--resume`` or replaced with ``--overwrite``, never silently truncated; temporary
files of writes that were killed are removed at start-up."""
import glob
import json
import os
import re
import shutil

from ..errors import ConfigError, RunDirError
from ..fileio import remove_stale_temporaries, write_text


def checkpoint_files(folder, model_name):
    """{epoch: path} of the numbered checkpoints ``<model>-<epoch>.ckpt`` in ``folder``."""
    pattern = re.compile(re.escape(model_name) + r'-(\d+)\.ckpt$')
    found = {}
    for path in glob.glob(os.path.join(glob.escape(folder), f'{glob.escape(model_name)}-*.ckpt')):
        m = pattern.match(os.path.basename(path))
        if m:
            found[int(m.group(1))] = path
    return found


_RUN_CHECKPOINT = re.compile(r'^.+-(\d+|latest|best)\.ckpt$')


def run_files(folder):
    """The files of a run in ``folder``: its logs, its resolved config and the checkpoints of any
    model (``<model>-<epoch|latest|best>.ckpt``)."""
    if not os.path.isdir(folder):
        return []
    names = sorted(os.listdir(folder))
    return [os.path.join(folder, n) for n in names
            if n in ('log.jsonl', 'run.yaml') or _RUN_CHECKPOINT.match(n)]


def check_run_dir(folder, model_name, resuming, overwrite):
    """RunDirError if ``folder`` holds a run and neither ``resuming`` it (its own checkpoint is
    being continued) nor ``overwrite``; else the files of that run (what ``overwrite``
    replaces). Writes nothing: called before the model is built."""
    old = run_files(folder)
    if old and not resuming and not overwrite:
        latest = next((p for p in old if p.endswith('-latest.ckpt')),
                      os.path.join(folder, model_name + '-latest.ckpt'))
        raise RunDirError(
            f"{folder} already holds a run ({len(old)} file(s), e.g. {os.path.basename(old[0])}): "
            f"continue it with --resume {latest}, replace it with --overwrite True, or choose "
            "another --ckpt_save_dir")
    return [] if resuming else old


def prepare_run_dir(folder, model_name, resuming, overwrite):
    """Creates ``folder`` for the run once the model is built (a failed start leaves an earlier
    run as it was): with ``overwrite`` the earlier run's logs, checkpoints and --summary files
    are deleted first; temporaries of killed writes are removed."""
    old = check_run_dir(folder, model_name, resuming, overwrite)
    for path in old + ([os.path.join(folder, 'train.log')] if old else []):
        if os.path.exists(path):
            os.remove(path)
    if old and os.path.isdir(os.path.join(folder, 'summary')):
        shutil.rmtree(os.path.join(folder, 'summary'))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)


def write_run_config(folder, config):
    """The run's resolved config, as run.yaml in its folder (the checkpoints carry it too)."""
    import yaml
    plain = json.loads(json.dumps(config, default=str))  # tuples as lists, no Python objects
    write_text(os.path.join(folder, 'run.yaml'), yaml.safe_dump(plain, sort_keys=False))


class EpochLog:
    """log.jsonl: one record per finished epoch. Each record is written and flushed to disk
    before that epoch's checkpoints, so the log never lacks an epoch a checkpoint holds; on
    resume the records of epochs that will run again are dropped."""

    def __init__(self, folder):
        self.path = os.path.join(folder, 'log.jsonl')

    def records(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_until(self, epoch):
        kept = [r for r in self.records() if r['epoch'] <= epoch]
        write_text(self.path, ''.join(json.dumps(r) + '\n' for r in kept))
        return kept

    def copy_from(self, folder, epoch):
        """Starts this log with the records of ``folder``'s log up to ``epoch`` (a run continued
        in another folder keeps its history)."""
        source = EpochLog(folder)
        write_text(self.path, ''.join(json.dumps(r) + '\n' for r in source.records()
                                      if r['epoch'] <= epoch))

    def append(self, record):
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())


class CheckpointKeeper:
    """Names and prunes the files of a run: ``<model>-<epoch>.ckpt`` every ``interval`` epochs
    (the newest ``keep_max`` by 'latest_k', the best ``keep_max`` by val top-1 by 'top_k'),
    ``<model>-best.ckpt`` and ``<model>-latest.ckpt`` (the resume point)."""

    def __init__(self, folder, model_name, interval=1, keep_max=10, policy='latest_k',
                 scores=None):
        """``scores``: {epoch: val top-1} of the epochs already logged (a resumed run), so the
        numbered checkpoints already on disk count towards ``keep_max``."""
        if policy not in ('latest_k', 'top_k'):
            raise ConfigError(f"ckpt_save_policy must be latest_k or top_k, got '{policy}'")
        self.folder, self.name = folder, model_name
        self.interval, self.keep_max, self.policy = max(interval, 1), keep_max, policy
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
