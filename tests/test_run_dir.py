"""The run folder: another run is never overwritten or truncated without --resume/--overwrite;
killed writes leave no temporary files behind; a failed write (full disk) is one line and keeps
the previous checkpoint; keep_checkpoint_max counts the files already on disk."""
import os
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest

from mindcoat.engine import CheckpointKeeper, EpochLog, prepare_run_dir, save_checkpoint
from mindcoat.errors import RunDirError
from train_helpers import REPO, env, make_color_folder, run_train

NAME = 'coat_lite_tiny'


def _params(value):
    return [ms.Parameter(ms.Tensor(np.full((4, 3), value, np.float32)), name='w')]


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    folder = str(tmp_path / 'run')
    prepare_run_dir(folder, NAME, resuming=False, overwrite=False)  # new folder: fine
    EpochLog(folder).append({'epoch': 1})
    save_checkpoint(os.path.join(folder, f'{NAME}-1.ckpt'), _params(1.0), 1, 1, 0.0, {})
    with pytest.raises(RunDirError, match='already holds a run .*--resume .*--overwrite True'):
        prepare_run_dir(folder, NAME, resuming=False, overwrite=False)
    os.makedirs(os.path.join(folder, 'summary'))  # --summary True's SummaryRecord files
    with open(os.path.join(folder, 'summary', 'events.summary.1_MS'), 'wb') as f:
        f.write(b'epochs 1')
    prepare_run_dir(folder, NAME, resuming=True, overwrite=False)
    assert os.path.exists(os.path.join(folder, f'{NAME}-1.ckpt'))
    assert os.listdir(os.path.join(folder, 'summary')) == ['events.summary.1_MS']
    prepare_run_dir(folder, NAME, resuming=False, overwrite=True)
    assert os.listdir(folder) == []  # the old run's figures do not mix into the new run's


def test_mindcv_resume_idiom_is_refused_before_anything_is_written(tmp_path):
    """--ckpt_path <latest> --ckpt_save_dir <same dir> restarted at epoch 1 and overwrote the
    run's log and checkpoints; now it is one line and the folder is untouched."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 1))
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'log.jsonl').write_text('{"epoch": 1}\n{"epoch": 2}\n')
    save_checkpoint(str(out / f'{NAME}-latest.ckpt'), _params(2.0), 2, 2, 0.0, {})
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    proc = run_train(['--data_dir', data, '--ckpt_save_dir', str(out), '--ckpt_path',
                      str(out / f'{NAME}-latest.ckpt'), '--device_target', 'CPU', '--opt',
                      'adamw'], cwd=str(tmp_path), check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'already holds a run' in err[0] and '--resume' in err[0], err
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    folder = str(tmp_path)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True).stdout.strip()
    stale = os.path.join(folder, f'.{NAME}-latest.ckpt.{dead}.tmp.ckpt')
    stale_ms = os.path.join(folder, f'.{NAME}-latest.ckpt.{dead}.tmp.tmp')  # MindSpore's own
    live = os.path.join(folder, f'.{NAME}-3.ckpt.{os.getpid()}.tmp.ckpt')
    for path in (stale, stale_ms, live):
        with open(path, 'wb') as f:
            f.write(b'partial')
    prepare_run_dir(folder, NAME, resuming=False, overwrite=False)
    assert not os.path.exists(stale) and not os.path.exists(stale_ms)
    assert os.path.exists(live)


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    """A file-size limit makes every write past 64 KB fail with EFBIG, as a full disk fails with
    ENOSPC: the error is one line, no temporary file is left, the old file is intact."""
    path = tmp_path / f'{NAME}-latest.ckpt'
    save_checkpoint(str(path), _params(1.0), 1, 1, 0.0, {})
    before = path.read_bytes()
    script = textwrap.dedent(f'''
        import resource, signal, sys
        import mindspore as ms, numpy as np
        from mindcoat.engine import save_checkpoint
        from mindcoat.errors import CheckpointWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        big = [ms.Parameter(ms.Tensor(np.ones((256, 256), np.float32)), name='w')]
        try:
            save_checkpoint({str(path)!r}, big, 2, 2, 0.0, {{}})
        except CheckpointWriteError as e:
            print(e)
            sys.exit(3)
    ''')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert '\n' not in line and 'cannot write checkpoint' in line and 'is kept' in line
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize('policy', ['latest_k', 'top_k'])
def test_keep_checkpoint_max_counts_the_files_on_disk(tmp_path, policy):
    """After a resume the keeper knew only the files it wrote itself, so the older ones were
    never pruned."""
    folder = str(tmp_path)
    for epoch in range(1, 6):
        save_checkpoint(os.path.join(folder, f'{NAME}-{epoch}.ckpt'), _params(epoch), epoch,
                        epoch, 0.0, {})
    scores = {1: 50.0, 2: 90.0, 3: 10.0, 4: 20.0, 5: 30.0}
    keeper = CheckpointKeeper(folder, NAME, keep_max=3, policy=policy, scores=scores)

    def save(p):
        save_checkpoint(p, _params(6.0), 6, 6, 0.0, {})
    keeper.save_epoch(6, 40.0, save)
    numbered = sorted(int(n[len(NAME) + 1:-5]) for n in os.listdir(folder)
                      if n[len(NAME) + 1:-5].isdigit())
    assert numbered == ([4, 5, 6] if policy == 'latest_k' else [1, 2, 6])


def test_epoch_log_keeps_what_a_resume_continues_from(tmp_path):
    log = EpochLog(str(tmp_path))
    for epoch in range(1, 5):
        log.append({'epoch': epoch, 'train_loss': float(epoch)})
    assert [r['epoch'] for r in log.keep_until(2)] == [1, 2]
    log.append({'epoch': 3, 'train_loss': 0.5})
    assert [(r['epoch'], r['train_loss']) for r in log.records()] == [(1, 1.0), (2, 2.0),
                                                                    (3, 0.5)]
