"""Training curves of a run as one PNG: loss, learning rate, top-1 and top-5 per epoch.

    python -m mindcoat.plot RUN_DIR [-o curves.png]

Reads RUN_DIR/log.jsonl, the one JSON object per epoch train.py appends (epoch, train_loss, lr,
val_loss, val_top1, val_top5 and, with --ema, ema_val_*). Validation points appear only for the
epochs that validated. Needs matplotlib, an optional extra: pip install 'mindcoat[plot]'.
"""
import argparse
import json
import math
import os
import sys

from .cli import run
from .errors import UsageError
from .fileio import atomic_output

INSTALL_HINT = ("python -m mindcoat.plot needs matplotlib, which is not installed: "
                "pip install 'mindcoat[plot]' (or pip install matplotlib)")
# (title, [(log.jsonl key, legend label)]) per panel
PANELS = (('loss', [('train_loss', 'train'), ('val_loss', 'val'), ('ema_val_loss', 'EMA val')]),
          ('learning rate', [('lr', 'lr')]),
          ('top-1 (%)', [('val_top1', 'val'), ('ema_val_top1', 'EMA val')]),
          ('top-5 (%)', [('val_top5', 'val'), ('ema_val_top5', 'EMA val')]))


def read_log(path):
    """The records of a log.jsonl, in epoch order; UsageError naming the file and line for a
    missing, empty, non-regular or malformed file."""
    if not os.path.exists(path):
        raise UsageError(f"{path} not found: give the run's folder (its --ckpt_save_dir), "
                         "which holds log.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a regular file")
    records = []
    with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                records.append(_record(line, path, number))
    if not records:
        raise UsageError(f"{path} holds no epochs yet (the first line is written when epoch 1 "
                         "ends)")
    return sorted(records, key=lambda r: r['epoch'])


def _record(line, path, number):
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get('epoch'), int) or \
            isinstance(record.get('epoch'), bool):
        raise UsageError(f"{path} line {number} is not an epoch record (a JSON object with an "
                         f"integer 'epoch'): {line.strip()[:60]}")
    return record


def series(records, key):
    """(epochs, values) of the records that hold a finite number under ``key``."""
    points = [(r['epoch'], float(r[key])) for r in records
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
              and math.isfinite(r[key])]
    return [e for e, _ in points], [v for _, v in points]


def import_pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or UsageError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    matplotlib.use('Agg')  # no display needed (servers, CI)
    import matplotlib.pyplot as plt
    return plt


def plot_records(records, title=''):
    """A 2 x 2 figure of PANELS; a panel with no data says so instead of staying blank."""
    plt = import_pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (name, keys) in zip(axes.flat, PANELS):
        drawn = 0
        for key, label in keys:
            x, y = series(records, key)
            if x:
                ax.plot(x, y, marker='o' if len(x) < 30 else None, markersize=3, label=label)
                drawn += 1
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if drawn > 1:
            ax.legend()
        if not drawn:
            ax.text(0.5, 0.5, 'not in log.jsonl\n(no validation run?)', ha='center',
                    va='center', transform=ax.transAxes, color='gray')
    from matplotlib.ticker import MaxNLocator
    for ax in axes[1]:
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.2
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def check_output(out):
    """``out`` if a PNG can be written there, else UsageError (checked before any drawing)."""
    if os.path.isdir(out):
        raise UsageError(f"-o {out} is a directory; name the PNG file to write")
    if os.path.exists(out) and not os.path.isfile(out):
        raise UsageError(f"-o {out} exists and is not a regular file; name another file")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"-o {out}: folder {folder} does not exist")
    return out


def save_figure(fig, out):
    with atomic_output(check_output(out), suffix='.png') as tmp:
        fig.savefig(tmp, dpi=100)
    return out


def build_parser():
    p = argparse.ArgumentParser(prog='python -m mindcoat.plot',
                                description='Plot loss, lr, top-1 and top-5 per epoch of a run.')
    p.add_argument('run_dir', help='the run folder (--ckpt_save_dir) holding log.jsonl')
    p.add_argument('-o', '--output', help='PNG to write (default: RUN_DIR/curves.png)')
    return p


def _main(argv):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.run_dir):
        raise UsageError(f"{args.run_dir} is not a folder; give the run's --ckpt_save_dir")
    out = check_output(args.output or os.path.join(args.run_dir, 'curves.png'))
    records = read_log(os.path.join(args.run_dir, 'log.jsonl'))
    import_pyplot()  # a missing matplotlib is said before any work
    fig = plot_records(records, title=os.path.basename(os.path.abspath(args.run_dir)))
    save_figure(fig, out)
    print(f"wrote {out} ({len(records)} epochs)")
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
