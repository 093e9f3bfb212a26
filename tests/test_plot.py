"""python -m mindcoat.plot: the PNG's panels hold log.jsonl's values (records with the fields
train.py writes, validation on some epochs only); a missing matplotlib, a missing, empty or
malformed log and a bad -o are one line each."""
import json
import math
import sys

import pytest

from mindcoat.plot import INSTALL_HINT, main, plot_records, read_log


def record(epoch, validated):
    """A log.jsonl line as train.py writes it (train_one_epoch + evaluate_run, with EMA)."""
    r = {'epoch': epoch, 'train_loss': 2.3 - 0.1 * epoch, 'lr': 1e-3 / epoch, 'epoch_time': 5.0,
         'images_per_sec': 40.0, 'overflow_steps': 0, 'train_skipped': 0}
    if validated:
        r.update(val_loss=2.0 - 0.1 * epoch, val_top1=10.0 * epoch, val_top5=15.0 * epoch,
                 val_images=100, val_skipped=0, ema_val_loss=2.1 - 0.1 * epoch,
                 ema_val_top1=9.0 * epoch, ema_val_top5=14.0 * epoch)
    return r


@pytest.fixture
def run_dir(tmp_path):
    records = [record(e, validated=e % 2 == 0) for e in range(1, 7)]
    records[2]['train_loss'] = float('nan')  # a NaN epoch is left out, not plotted as 0
    folder = tmp_path / 'run'
    folder.mkdir()
    # the epochs out of order and a blank line: the plot sorts and skips
    lines = [json.dumps(r) for r in records[3:] + records[:3]]
    (folder / 'log.jsonl').write_text('\n'.join(lines[:2]) + '\n\n' + '\n'.join(lines[2:]) + '\n')
    return folder, records


def test_png_panels_hold_the_logged_values(run_dir, tmp_path, capsys):
    pytest.importorskip('matplotlib')
    from matplotlib.image import imread
    folder, records = run_dir
    out = tmp_path / 'curves.png'
    assert main([str(folder), '-o', str(out)]) == 0
    assert capsys.readouterr().out.strip() == f'wrote {out} (6 epochs)'
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert imread(str(out)).shape[:2] == (700, 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['curves.png', 'run']  # no temp left
    fig = plot_records(read_log(str(folder / 'log.jsonl')))
    drawn = {(ax.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
             for ax in fig.axes for line in ax.get_lines()}
    kept = [r for r in records if not math.isnan(r['train_loss'])]
    validated = [r for r in records if 'val_top1' in r]
    assert drawn[('loss', 'train')] == ([r['epoch'] for r in kept], [r['train_loss'] for r in kept])
    assert drawn[('learning rate', 'lr')] == ([r['epoch'] for r in records],
                                              [r['lr'] for r in records])
    for title, key in (('top-1 (%)', 'val_top1'), ('top-5 (%)', 'val_top5'), ('loss', 'val_loss')):
        assert drawn[(title, 'val')] == ([2, 4, 6], [r[key] for r in validated])
        assert drawn[(title, 'EMA val')] == ([2, 4, 6], [r['ema_' + key] for r in validated])


def run_cli(argv):
    return main(argv)


def test_missing_matplotlib_says_how_to_install(run_dir, monkeypatch, capsys):
    """matplotlib made unimportable (None in sys.modules is Python's import blocker), whether or
    not it is installed here."""
    for name in [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    folder, _ = run_dir
    assert run_cli([str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f'error: {INSTALL_HINT}'
    assert "pip install 'mindcoat[plot]'" in INSTALL_HINT
    assert not (folder / 'curves.png').exists()


@pytest.mark.parametrize('content, words', [
    (None, 'log.jsonl not found'),
    ('', 'holds no epochs yet'),
    ('{"epoch": 1, "train_loss": 2.3}\n{"epoch": 2, "train_lo', 'line 2 is not an epoch record'),
    ('[1, 2]\n', 'line 1 is not an epoch record'),
    ('{"epoch": "one"}\n', 'line 1 is not an epoch record'),
    ('\xff\xfe binary', 'line 1 is not an epoch record'),
])
def test_bad_log_is_one_line(tmp_path, capsys, content, words):
    if content is not None:
        (tmp_path / 'log.jsonl').write_text(content, encoding='latin-1')
    assert run_cli([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / 'curves.png').exists()


def test_bad_run_dir_or_output_is_one_line(run_dir, tmp_path, capsys):
    folder, _ = run_dir
    for argv, words in (([str(tmp_path / 'nope')], 'is not a folder'),
                        ([str(folder), '-o', str(tmp_path)], 'is a directory'),
                        ([str(folder), '-o', str(tmp_path / 'no' / 'x.png')], 'does not exist')):
        assert run_cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
