"""Fine-tuning on your own folder as a user does it, start to end: the shipped fine-tune recipe
trains, validate with the same YAML reproduces the trainer's best accuracy, predict names the
folder's classes; and each trap a new user met before (a recipe's 1000-way head on a 4-class
folder, a resume writing into another run, validate scoring an EMA that never moved, random
weights scored, Ctrl-C) now does the right thing or stops with one line.

The commands are the ones the README shows, run as subprocesses, shrunk only by flags: a tiny
CoaT-Lite at 32 px on a 4-class colour folder, a few epochs."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train_helpers import REPO, TINY, TINY_KWARGS, env, make_color_folder, read_log, run_train

FINETUNE = os.path.join(REPO, 'configs', 'coat', 'finetune.yaml')
RECIPE = os.path.join(REPO, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')
MODEL = 'coat_lite_tiny'
# what makes the recipe tiny; everything else is as shipped
SHRINK = ['--model_kwargs', TINY, '--image_resize', '32', '--batch_size', '8',
          '--num_parallel_workers', '1', '--log_interval', '1000', '--device_target', 'CPU']


def run_cli(module, args, cwd, timeout=900):
    return subprocess.run([sys.executable, '-m', f'mindcoat.{module}'] + [str(a) for a in args],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    return lines[0]


def digest(folder):
    """Every file of ``folder`` with its bytes' hash (to show a run was left alone)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), 'rb') as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def start_weights(tmp_path_factory):
    """A 10-class tiny checkpoint standing in for the official ImageNet weights (this machine
    cannot download them): the fine-tune gives it a new 4-way head."""
    import mindcoat
    from mindcoat.weights import save_ckpt
    path = str(tmp_path_factory.mktemp('start') / 'pretrained.ckpt')
    model = mindcoat.create_model(MODEL, num_classes=10, **TINY_KWARGS)
    save_ckpt(path, model)
    return path


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory, start_weights):
    """The README's fine-tune command on a 4-class folder, with the ImageNet recipe's EMA (timm's
    fixed decay 0.99996), which cannot move in so short a run (the trap: validate used to score
    those EMA weights, 0%). The lr is raised because the stand-in start weights are random."""
    root = tmp_path_factory.mktemp('ft')
    data = make_color_folder(str(root / 'data'), per_class=(12, 4))
    out = root / 'run'
    proc = run_train(['-c', FINETUNE, '--data_dir', data, '--pretrained', 'False',
                      '--ckpt_path', start_weights, '--ckpt_save_dir', str(out),
                      '--epoch_size', '3', '--ema', 'True', '--ema_decay', '0.99996',
                      '--ema_warmup', 'False', '--lr', '2e-3'] + SHRINK,
                     cwd=str(root))
    return root, data, out, proc


def test_finetune_recipe_validate_and_predict_agree(finetuned):
    root, data, out, proc = finetuned
    log = proc.stdout
    assert 'num_classes 4: the class folders of' in log
    assert 'classifier re-initialised' in log  # the 10-way start head, replaced
    assert 'warning: EMA decay 0.99996 averages over ~25,000 steps; this run has 18:' in log
    records = read_log(str(out))
    assert [r['epoch'] for r in records] == [1, 2, 3]
    # the cosine spans the run: the last epoch's lr is far below the first full one's
    assert records[-1]['lr'] < 0.5 * max(r['lr'] for r in records)
    best = max(records, key=lambda r: r['val_top1'])
    assert best['val_top1'] > best['ema_val_top1']  # the EMA barely moved
    # validate with the same YAML (224 px, ema: False in it) scores what the trainer scored
    res = run_cli('validate', ['-c', FINETUNE, '--data_dir', data, '--ckpt_path',
                               out / f'{MODEL}-best.ckpt', '--json', '--device_target', 'CPU'],
                  cwd=str(root))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result['image_size'] == 32 and result['ema'] is False
    assert result['top1'] == pytest.approx(best['val_top1'], abs=1e-9)
    assert 'image_resize 32 from the checkpoint (the config says 224)' in res.stderr
    # the recipe YAML says ema: True; the checkpoint knows its raw weights did better
    res = run_cli('validate', ['-c', RECIPE, '--data_dir', data, '--ckpt_path',
                               out / f'{MODEL}-best.ckpt', '--json', '--device_target', 'CPU',
                               '--distribute', 'False'], cwd=str(root))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result['ema'] is False and result['num_images'] == 16
    assert result['top1'] == pytest.approx(best['val_top1'], abs=1e-9)
    # --ema True (MindCV's key, typed) means the EMA weights, --ema False the others
    for flag, top1 in (('True', best['ema_val_top1']), ('False', best['val_top1'])):
        res = run_cli('validate', ['-c', RECIPE, '--data_dir', data, '--ckpt_path',
                                   out / f'{MODEL}-best.ckpt', '--json', '--ema', flag,
                                   '--device_target', 'CPU', '--distribute', 'False'],
                      cwd=str(root))
        result = json.loads(res.stdout.strip().splitlines()[-1])
        assert result['ema'] is (flag == 'True') and result['top1'] == pytest.approx(top1)
    # predict names the folder's classes and lists all four (its default top-5 is capped)
    image = os.path.join(data, 'val', 'class_2', '000.png')
    res = run_cli('predict', ['--ckpt_path', out / f'{MODEL}-best.ckpt', '--json', image],
                  cwd=str(root))
    assert res.returncode == 0, res.stderr[-3000:]
    top = json.loads(res.stdout.strip().splitlines()[-1])['top']
    assert sorted(t['name'] for t in top) == ['class_0', 'class_1', 'class_2', 'class_3']


def test_converting_or_loading_a_finetune_keeps_its_head(finetuned, tmp_path):
    """convert and create_model take the class count from the checkpoint when not told."""
    import mindcoat
    from mindcoat.convert import convert_checkpoint
    _, _, out, _ = finetuned
    best = str(out / f'{MODEL}-best.ckpt')
    lines = []
    report = convert_checkpoint(best, MODEL, str(tmp_path / 'x.ckpt'),
                                model_kwargs=TINY_KWARGS, log=lines.append)
    assert not report.head_reinitialised and report.missing == []
    model = mindcoat.create_model(MODEL, checkpoint_path=str(tmp_path / 'x.ckpt'),
                                  log=lines.append, **TINY_KWARGS)
    assert model.head.weight.shape[0] == 4
    assert not any('re-initialised' in line for line in lines)


def test_a_recipe_head_on_a_small_folder_is_one_line(tmp_path):
    """The ImageNet recipe's num_classes: 1000 on a 4-class folder used to train a 1000-way
    head silently."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 1))
    proc = run_train(['-c', RECIPE, '--data_dir', data, '--distribute', 'False',
                      '--ckpt_save_dir', str(tmp_path / 'out')], cwd=str(tmp_path),
                     check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert 'num_classes 1000' in line and '4 class folders' in line and \
        '--num_classes 4' in line
    assert not (tmp_path / 'out').exists()


def test_resume_continues_its_own_run_and_leaves_another_alone(finetuned, tmp_path):
    """The trap: --resume without --ckpt_save_dir wrote into the YAML's folder, which held
    another run, and resumed with the command line's settings. Now it continues in the
    checkpoint's own folder with the run's own settings; a flag that contradicts them is one
    line."""
    root, data, out, _ = finetuned
    run_a = tmp_path / 'run_a'
    os.makedirs(run_a)
    for name in os.listdir(out):  # a copy of the fine-tune run: resumed below
        with open(out / name, 'rb') as src, open(run_a / name, 'wb') as dst:
            dst.write(src.read())
    other = tmp_path / 'ckpt' / 'finetune'  # the YAML's ckpt_save_dir, holding another run
    os.makedirs(other)
    for name in (f'{MODEL}-latest.ckpt', 'log.jsonl', 'train.log'):
        with open(out / name, 'rb') as src, open(other / name, 'wb') as dst:
            dst.write(src.read() + (b'\n' if name == 'log.jsonl' else b''))
    untouched = digest(other)
    latest = run_a / f'{MODEL}-latest.ckpt'
    # a contradicting flag: refused before anything is written
    proc = run_train(['-c', FINETUNE, '--data_dir', data, '--resume', latest,
                      '--image_resize', '64', '--epoch_size', '4'], cwd=str(tmp_path),
                     check=False)
    assert proc.returncode == 2
    assert '--image_resize 64 contradicts the run being resumed (image_resize 32' in \
        one_error_line(proc)
    # the run goes on for one more epoch (epoch_size may change), in its own folder
    proc = run_train(['-c', FINETUNE, '--data_dir', data, '--resume', latest, '--epoch_size',
                      '4', '--device_target', 'CPU'], cwd=str(tmp_path))
    assert f'resuming {latest}' in proc.stdout and f'in {run_a}' in proc.stdout
    assert [r['epoch'] for r in read_log(str(run_a))] == [1, 2, 3, 4]
    assert digest(other) == untouched
    # into a folder that holds another run, named on the command line: one line
    proc = run_train(['--resume', latest, '--data_dir', data, '--epoch_size', '5',
                      '--ckpt_save_dir', other], cwd=str(tmp_path), check=False)
    assert proc.returncode == 1 and 'already holds a run' in one_error_line(proc)
    assert digest(other) == untouched


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_waits_for_the_end_of_epoch_writes(signum):
    """Ctrl-C (or the SIGTERM MindSpore turns it into) inside the end-of-epoch writes lets them
    finish, then interrupts; the handlers are the ones from before."""
    from mindcoat.engine.context import interrupts_held
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # a signal is handled between bytecodes: give it the chance
            finished.append(True)
    assert finished == [True]
    assert {s: signal.getsignal(s) for s in before} == before
    with interrupts_held():  # nothing caught: nothing raised
        finished.append(True)
    assert finished == [True, True]


def test_ctrl_c_says_what_was_saved(tmp_path, start_weights):
    data = make_color_folder(str(tmp_path / 'data'), per_class=(12, 4))
    out = tmp_path / 'run'
    cmd = [sys.executable, os.path.join(REPO, 'train.py'), '-c', FINETUNE, '--data_dir', data,
           '--pretrained', 'False', '--ckpt_path', start_weights, '--ckpt_save_dir', str(out),
           '--epoch_size', '200'] + SHRINK
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    latest = out / f'{MODEL}-latest.ckpt'
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert latest.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: interrupted in epoch ') and \
        f'{latest} (end of epoch ' in lines[0] and f'--resume {latest}' in lines[0], err


def test_validate_refuses_random_weights_unless_asked(tmp_path, capsys):
    from mindcoat import validate
    data = make_color_folder(str(tmp_path / 'data'), per_class=(2, 2))
    args = ['--data_dir', data, '--model_kwargs', TINY, '--image_resize', '32',
            '--num_classes', '4']
    assert validate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'no weights to evaluate' in err[0] and '--random_weights' in err[0]
    assert validate.main(args + ['--random_weights', '--json']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['num_images'] == 8 and np.isfinite(result['top1'])


def test_schedule_and_ema_that_do_not_fit_the_run_are_said():
    """--epoch_size 30 on a 300-epoch recipe keeps MindCV's meaning of decay_epochs (300) but
    says so, naming the flag; a scaled lr below min_lr is said too."""
    from mindcoat.config import parse_config
    from mindcoat.engine.trainer import _schedule_notes
    from mindcoat.optim import lr_schedule_for
    cfg = parse_config(['-c', RECIPE, '--epoch_size', '30'])
    lr, lrs = lr_schedule_for(cfg, 10, 8)
    notes = _schedule_notes(cfg, lr, lrs, 300)
    assert any('decay_epochs 300 but this run has 30 epochs' in n and '--decay_epochs 30' in n
               for n in notes), notes
    assert any('EMA decay 0.99996' in n for n in notes), notes
    small = parse_config(['-c', RECIPE, '--batch_size', '8'])
    lr, lrs = lr_schedule_for(small, 10, 1)
    assert any('peak lr 7.81e-06 is not above min_lr 1e-05' in n
               for n in _schedule_notes(small, lr, lrs, 3000))
    fits = parse_config(['-c', FINETUNE, '--epoch_size', '5'])
    lr, lrs = lr_schedule_for(fits, 10, 1)
    assert _schedule_notes(fits, lr, lrs, 50) == []
