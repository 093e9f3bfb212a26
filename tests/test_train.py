"""End-to-end trainer runs on a tiny learnable image folder (CPU, a CoaT-Lite with 16 channels):
it learns, its validation equals a direct computation, a 2-worker msrun data-parallel run ends
with the weights of a single-process run over the same global batch, and a run killed with
SIGKILL then resumed ends with the weights of the uninterrupted run."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from train_helpers import REPO, TINY, base_flags, deterministic_flags, env, load_params, \
    make_color_folder, read_log, run_train

EPOCHS, GLOBAL_BATCH = 8, 8
NAME = 'coat_lite_tiny'


def flags(data_dir, out_dir, batch_size=GLOBAL_BATCH, extra=()):
    return base_flags(data_dir, out_dir, batch_size, EPOCHS,
                      deterministic_flags() + ['--lr', '3e-3', '--crop_pct', '1.0'] + list(extra))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """One uninterrupted single-process run: the baseline of every test here."""
    root = tmp_path_factory.mktemp('train')
    data = make_color_folder(str(root / 'data'))
    out = root / 'reference'
    proc = run_train(flags(data, out), cwd=str(root))
    return {'root': root, 'data': data, 'out': out, 'stdout': proc.stdout}


def final_weights(path):
    return {k: v for k, v in load_params(path).items() if not k.startswith(('optimizer.',))}


def assert_same_weights(a, b, atol):
    assert sorted(a) == sorted(b)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, f'weights differ by up to {worst}'


def test_learns_and_validation_matches_direct_computation(reference):
    log = read_log(reference['out'])
    assert [r['epoch'] for r in log] == list(range(1, EPOCHS + 1))
    assert log[-1]['val_top1'] >= 90.0, log[-1]
    assert log[-1]['train_loss'] < log[0]['train_loss'] - 0.3
    assert 'float32' in reference['stdout']  # says once that the CPU runs float32
    # direct computation: PIL + numpy preprocessing, the saved weights, plain cross entropy
    import mindspore as ms
    from mindcoat import create_model
    from mindcoat.models.registry import IMAGENET_MEAN, IMAGENET_STD
    import ast
    model = create_model(NAME, num_classes=4, **ast.literal_eval(TINY))
    ms.load_param_into_net(model, ms.load_checkpoint(
        str(reference['out'] / f'{NAME}-latest.ckpt')))
    model.set_train(False)
    images, labels = [], []
    val = os.path.join(reference['data'], 'val')
    for label, cls in enumerate(sorted(os.listdir(val))):
        for name in sorted(os.listdir(os.path.join(val, cls))):
            img = np.asarray(Image.open(os.path.join(val, cls, name)).convert('RGB'), np.float32)
            images.append(((img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
            labels.append(label)
    logits = model(ms.Tensor(np.stack(images).astype(np.float32))).asnumpy().astype(np.float64)
    labels = np.array(labels)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert log[-1]['val_images'] == len(labels)
    assert log[-1]['val_top1'] == pytest.approx(100.0 * (logits.argmax(1) == labels).mean())
    assert log[-1]['val_loss'] == pytest.approx(-logp[np.arange(len(labels)), labels].mean(),
                                                rel=1e-4)
    # checkpoints: every epoch (keep_checkpoint_max 10), best and latest, no temporary files
    files = sorted(os.listdir(reference['out']))
    assert f'{NAME}-best.ckpt' in files and f'{NAME}-{EPOCHS}.ckpt' in files
    assert not [f for f in files if 'tmp' in f]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# Adam's m / sqrt(v) turns float-rounding differences in near-zero gradients into full-size
# updates; with eps = 1 the update is ~ lr * m, so the comparison is well conditioned (and still
# tells a mean of the ranks' gradients from a sum, which plain Adam would hide).
DP_FLAGS = ['--eps', '1.0', '--lr', '0.05', '--epoch_size', '2']


def test_msrun_data_parallel_equals_single_process(reference, tmp_path):
    msrun = shutil.which('msrun') or os.path.join(os.path.dirname(sys.executable), 'msrun')
    out, ranks, single_out = tmp_path / 'dp', tmp_path / 'ranks', tmp_path / 'single'
    run_train(flags(reference['data'], single_out, extra=DP_FLAGS), cwd=str(tmp_path))
    cmd = [msrun, '--worker_num', '2', '--local_worker_num', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), '--log_dir', str(tmp_path / 'msrun_logs'),
           '--join', 'True', 'python', os.path.join(REPO, 'train.py')] + \
        flags(reference['data'], out, GLOBAL_BATCH // 2, ['--distribute', 'True'] + DP_FLAGS)
    # msrun starts the workers with the 'python' found on PATH: make it this interpreter
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=dict(env(), PATH=path,
                          MINDCOAT_RANK_WEIGHTS_DIR=str(ranks)),
                          capture_output=True, text=True, timeout=900)
    logs = ''.join(open(os.path.join(tmp_path / 'msrun_logs', f)).read()[-2000:]
                   for f in sorted(os.listdir(tmp_path / 'msrun_logs')))
    assert proc.returncode == 0, logs
    rank0, rank1 = final_weights(str(ranks / 'rank_0.ckpt')), \
        final_weights(str(ranks / 'rank_1.ckpt'))
    assert_same_weights(rank0, rank1, atol=0.0)  # ranks never drift apart
    single = final_weights(str(single_out / f'{NAME}-latest.ckpt'))
    dp = final_weights(str(out / f'{NAME}-latest.ckpt'))
    assert_same_weights(dp, rank0, atol=0.0)  # only rank 0 writes checkpoints; they are its own
    moved = max(float(np.abs(single[k] - final_weights(
        str(single_out / f'{NAME}-1.ckpt'))[k]).max()) for k in single)
    assert moved > 1e-3  # the weights really moved in the last epoch
    assert_same_weights(dp, single, atol=1e-5)
    dp_log, single_log = read_log(out), read_log(single_out)
    # validation is sharded over the two ranks and summed: all 16 images, same numbers
    assert dp_log[-1]['val_images'] == single_log[-1]['val_images'] == 16
    assert dp_log[-1]['val_top1'] == single_log[-1]['val_top1']
    assert dp_log[-1]['val_loss'] == pytest.approx(single_log[-1]['val_loss'], abs=1e-3)


def test_resume_after_sigkill_matches_uninterrupted_run(reference, tmp_path):
    out = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py')] +
                            flags(reference['data'], out), cwd=str(tmp_path), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / f'{NAME}-2.ckpt'
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, at whatever point epoch 3 has reached
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    done = len(read_log(out))  # the log line of epoch 2 may or may not be written yet
    assert 1 <= done < EPOCHS
    resumed = run_train(flags(reference['data'], out, extra=[
        '--resume', str(out / f'{NAME}-latest.ckpt')]), cwd=str(tmp_path))
    assert 'resumed from' in resumed.stdout
    assert [r['epoch'] for r in read_log(out)] == list(range(1, EPOCHS + 1))
    assert_same_weights(final_weights(str(out / f'{NAME}-latest.ckpt')),
                        final_weights(str(reference['out'] / f'{NAME}-latest.ckpt')), atol=1e-6)
