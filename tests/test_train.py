"""The trainer: end-to-end runs on a tiny learnable image folder (CPU, a CoaT-Lite with 16
channels) — it learns, its validation equals a direct computation, a 2-worker msrun data-parallel
run ends with the weights of a single-process run over the same global batch, a run killed with
SIGKILL then resumed ends with the weights of the uninterrupted run, a NaN loss stops it with the
last checkpoint kept, a damaged checkpoint is refused — and the engine's pieces in-process: one
evaluation rule (NaN never a hit, ties by index), per-rank drop-path masks over identical
weights, float32 optimizer/EMA/loss under amp O2."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from train_helpers import PRE_MINDCV_DEFAULTS, REPO, TINY, TINY_KWARGS, base_flags, \
    deterministic_flags, env, load_params, make_color_folder, read_log, run_train

EPOCHS, GLOBAL_BATCH = 8, 8
NAME = 'coat_lite_tiny'


def flags(data_dir, out_dir, batch_size=GLOBAL_BATCH, extra=()):
    return base_flags(data_dir, out_dir, batch_size, EPOCHS,
                      deterministic_flags() + ['--lr', '3e-3', '--crop_pct', '1.0'] + list(extra))


# Adam's m / sqrt(v) turns float-rounding differences in near-zero gradients into full-size
# updates; with eps = 1 the update is ~ lr * m, so the comparison is well conditioned (and still
# tells a mean of the ranks' gradients from a sum, which plain Adam would hide). No clipping:
# clipping to a global norm hid a sum too (DistributedGradReducer(mean=False) passed).
DP_FLAGS = ['--eps', '1.0', '--lr', '0.05', '--epoch_size', '2', '--clip_grad', 'False']


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """One uninterrupted single-process run: the baseline of every test here. Alongside it, the
    single-process side of the data-parallel comparison (independent processes: on 2 cores the
    two compile at once)."""
    root = tmp_path_factory.mktemp('train')
    data = make_color_folder(str(root / 'data'))
    out, single = root / 'reference', root / 'dp_single'
    baseline = start_train(flags(data, single, extra=DP_FLAGS), root / 'cwd_dp_single')
    try:
        proc = run_train(flags(data, out), cwd=str(root))
        finish(baseline, root / 'cwd_dp_single')
    finally:
        if baseline.poll() is None:
            baseline.kill()
    return {'root': root, 'data': data, 'out': out, 'stdout': proc.stdout, 'dp_single': single}


def start_train(args, cwd):
    """train.py in the background, its output in cwd/output.txt; each process its own cwd
    (MindSpore's side files)."""
    os.makedirs(cwd, exist_ok=True)
    with open(os.path.join(cwd, 'output.txt'), 'w') as out:
        return subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py')] + list(args),
                                cwd=str(cwd), env=env(), stdout=out, stderr=subprocess.STDOUT)


def finish(proc, cwd):
    proc.wait(timeout=1800)
    with open(os.path.join(cwd, 'output.txt')) as f:
        assert proc.returncode == 0, f'train.py failed ({proc.returncode}):\n{f.read()[-3000:]}'


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


def test_msrun_data_parallel_equals_single_process(reference, tmp_path):
    msrun = shutil.which('msrun') or os.path.join(os.path.dirname(sys.executable), 'msrun')
    out, ranks, single_out = tmp_path / 'dp', tmp_path / 'ranks', reference['dp_single']
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


def test_damaged_trainer_checkpoint_is_one_line_resume_error(reference, tmp_path):
    """Trainer checkpoints carry a CRC: 200 random bytes in the middle are refused, not loaded."""
    import mindspore as ms
    from mindcoat.engine import load_training_state
    from mindcoat.errors import ResumeError
    good = str(reference['out'] / f'{NAME}-latest.ckpt')
    stored = ms.load_checkpoint(good, crc_check=True)
    params = [ms.Parameter(v, name=k) for k, v in stored.items() if isinstance(v, ms.Parameter)
              and k not in ('epoch', 'global_step', 'best_top1')]
    assert load_training_state(good, params)[0] == EPOCHS
    data = bytearray(open(good, 'rb').read())
    middle = len(data) // 2
    data[middle:middle + 200] = np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()
    bad = tmp_path / 'damaged.ckpt'
    bad.write_bytes(bytes(data))
    with pytest.raises(ResumeError) as e:
        load_training_state(str(bad), params)
    assert '\n' not in str(e.value) and 'damaged' in str(e.value) and str(bad) in str(e.value)


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    """An lr that blows the weights up in epoch 3 (per-epoch schedule: epochs 1 and 2 run at
    warmup_lr): one line, exit 1, epoch 2's checkpoint and log kept."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(4, 1))
    out = tmp_path / 'out'
    proc = run_train(base_flags(data, out, 8, 3, deterministic_flags() + [
        '--scheduler', 'timm_cosine', '--lr', '1e36', '--warmup_lr', '1e-4', '--min_lr', '0',
        '--warmup_epochs', '1', '--val_while_train', 'False']), cwd=str(tmp_path), check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and re.match(r'error: loss is (nan|inf) at epoch 3, step \d', err[0]), err
    assert f'{NAME}-latest.ckpt (end of epoch 2) is kept' in err[0]
    assert [r['epoch'] for r in read_log(out)] == [1, 2]
    text = (out / 'train.log').read_text()  # the text log beside log.jsonl
    assert 'epoch 1/3' in text and 'epoch 2/3' in text
    import mindspore as ms
    kept = ms.load_checkpoint(str(out / f'{NAME}-latest.ckpt'))
    assert int(kept['epoch'].asnumpy()) == 2
    weights = load_params(str(out / f'{NAME}-latest.ckpt'))
    assert all(np.isfinite(v).all() for v in weights.values())


def test_a_mostly_unreadable_split_ends_in_one_line_naming_the_files(tmp_path):
    """12 of 16 training images corrupt: the epoch cannot fill its batches. One line naming each
    unreadable file (before: StopIteration traceback), exit 2."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(4, 1))
    bad = []
    for c in range(4):
        for i in range(3):
            path = os.path.join(data, 'train', f'class_{c}', f'{i:03d}.png')
            with open(path, 'wb') as f:
                f.write(b'\x89PNG not an image')
            bad.append(path)
    proc = run_train(base_flags(data, tmp_path / 'out', 8, 1, deterministic_flags() + [
        '--val_while_train', 'False', '--warmup_epochs', '0']), cwd=str(tmp_path), check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'ran out of readable images' in err[0], err
    assert all(path in err[0] for path in bad) and '12 unreadable' in err[0]


def test_one_evaluation_rule_nan_never_hits_ties_by_index():
    """The trainer and validate.py share this: before, the trainer counted ties as hits, so a NaN
    model scored 100% top-1 and was saved as -best."""
    from mindcoat.engine import EvalCounts
    counts = EvalCounts()
    nan_rows = np.full((2, 6), np.nan)
    counts.add(nan_rows, np.array([0, 3]))
    assert counts.values[1:4].tolist() == [0, 0, 2]
    assert np.isnan(counts.summary()['loss'])
    ties = EvalCounts()  # all six logits equal: the lowest index ranks first
    ties.add(np.zeros((3, 6)), np.array([0, 4, 5]))
    assert ties.values[1:4].tolist() == [1, 2, 3]  # label 0 top-1, label 4 in the top 5, 5 not
    inf = EvalCounts()
    inf.add(np.array([[np.inf, 0, 0], [1.0, 2.0, 0]]), np.array([0, 1]))
    assert inf.values[1:4].tolist() == [1, 1, 2]  # the inf row never hits, the finite one does


def test_ranks_share_weights_and_draw_their_own_drop_path_masks():
    """build_seeded(seed, rank): weights from seed alone; masks from seed + rank (official
    main.py), so rank 0 repeats a single-device run and rank 1 drops other branches."""
    import mindspore as ms
    from mindcoat import create_model
    from mindcoat.engine import build_seeded
    x = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))

    def run(rank):
        model = build_seeded(lambda: create_model(NAME, num_classes=4, drop_path_rate=0.5,
                                                  **TINY_KWARGS), 3, rank)
        model.set_train(True)
        weights = np.concatenate([p.asnumpy().ravel() for p in model.get_parameters()])
        return weights, model(x).asnumpy()

    ms.set_context(mode=ms.GRAPH_MODE)
    single, rank0, rank1 = run(0), run(0), run(1)
    assert np.array_equal(rank0[0], rank1[0]) and np.array_equal(single[0], rank0[0])
    assert np.array_equal(single[1], rank0[1])
    assert not np.allclose(rank0[1], rank1[1])


def test_amp_o2_keeps_optimizer_ema_lr_and_loss_in_float32():
    """The O2 train step built as on Ascend/GPU, run on the CPU's native path: float16 compute,
    float32 islands. The AdamW update is checked against float64 arithmetic with lr 1e-3, which
    float16 cannot hold (it rounds to 1.0004e-3, an error 40x the tolerance)."""
    import mindspore as ms
    from mindcoat import create_model
    from mindcoat.config import parse_config
    from mindcoat.engine import create_train_step
    from mindcoat.ops.dispatch import native_ops
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.eye(4, dtype=np.float32)[[1, 3]])
    cfg = parse_config(['--ema', '--ema_decay', '0.9', '--ema_warmup', 'False'] +
                       PRE_MINDCV_DEFAULTS)
    lr = 1e-3
    with native_ops():
        ms.set_seed(0)
        model = create_model(NAME, num_classes=4, **TINY_KWARGS)
        _, step, opt, ema, scaler = create_train_step(model, cfg, amp_level='O2',
                                                      lr_schedule=[lr])
        before = model.head.weight.asnumpy().astype(np.float64)
        loss, finite = step(x, y)
    assert model.head.get_flags()['fp16']  # O2 is on: the layers compute in float16
    assert scaler is not None and bool(finite) and np.isfinite(float(loss))
    assert loss.dtype == ms.float32
    assert {p.dtype for p in opt.state_params()} == {ms.float32}
    assert {p.dtype for p in ema.ema} == {ms.float32}
    assert {p.dtype for p in model.get_parameters()} == {ms.float32}
    i = [p.name for p in opt.parameters].index('head.weight')
    m, v = opt.exp_avg[i].asnumpy().astype(np.float64), opt.exp_avg_sq[i].asnumpy()
    expected = before * (1 - lr * cfg.weight_decay) - lr / 0.1 * m / (
        np.sqrt(v.astype(np.float64)) / np.sqrt(1 - 0.999) + 1e-8)
    after = model.head.weight.asnumpy()
    assert np.abs(after - before).max() > 5e-4  # a real update (Adam's first step: ~lr)
    np.testing.assert_allclose(after - before, expected - before, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ema.ema[i].asnumpy(), 0.9 * before + 0.1 * after, rtol=1e-6,
                               atol=1e-9)

RECIPE = os.path.join(REPO, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')
REPRO_EPOCHS = 3  # timm's per-epoch lr: epochs 1-2 share one, epoch 3 (after a resume) differs


def recipe_flags(data_dir, out_dir):
    """The shipped recipe as is (RandAugment, Mixup/CutMix, erasing, EMA, per-epoch lr), shrunk:
    a tiny model, 32 px, 4 classes, batch 2, 2 dataset workers, one device."""
    return ['-c', RECIPE, '--data_dir', str(data_dir), '--ckpt_save_dir', str(out_dir),
            '--model_kwargs', TINY, '--num_classes', '4', '--image_resize', '32',
            '--batch_size', '2', '--num_parallel_workers', '2', '--distribute', 'False',
            '--epoch_size', str(REPRO_EPOCHS), '--warmup_epochs', '2',  # within the short run
            '--ckpt_save_interval', '1', '--device_target', 'CPU', '--log_interval', '1000',
            '--val_while_train', 'False']


def test_recipe_runs_repeat_and_resume_bit_identically(tmp_path):
    """Two runs of the shipped recipe with the same seed agree after epoch 1 (loss, weights, EMA,
    Adam moments); the second, killed with SIGKILL in epoch 2 and resumed, ends bit-identical
    to the uninterrupted first. The processes are independent: the first runs alongside the
    second and its resume (2 cores: the wall time of about two runs, not three)."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(4, 1))
    first, second = tmp_path / 'first', tmp_path / 'second'
    cwd_first, cwd_resumed = tmp_path / 'cwd_first', tmp_path / 'cwd_resumed'
    uninterrupted = start_train(recipe_flags(data, first), cwd_first)
    killed = resumed = None
    try:
        killed = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py')] +
                                  recipe_flags(data, second), cwd=str(tmp_path), env=env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        # -latest.ckpt is the last file an epoch writes (after its log line and -1.ckpt)
        while killed.poll() is None and time.time() < deadline and not (
                second / f'{NAME}-latest.ckpt').exists():
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)  # epoch 1 is saved: the run is in epoch 2
        killed.wait()
        assert killed.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
        assert 1 <= len(read_log(second)) < REPRO_EPOCHS
        resumed = start_train(recipe_flags(data, second) + [
            '--resume', str(second / f'{NAME}-latest.ckpt')], cwd_resumed)
        finish(uninterrupted, cwd_first)
        assert read_log(second)[0]['train_loss'] == read_log(first)[0]['train_loss']
        epoch1 = load_params(str(first / f'{NAME}-1.ckpt'))
        assert any(k.startswith('ema.') for k in epoch1)
        assert any(k.startswith('optimizer.exp_avg_sq') for k in epoch1)
        assert_identical(load_params(str(second / f'{NAME}-1.ckpt')), epoch1)
        finish(resumed, cwd_resumed)
        assert [r['train_loss'] for r in read_log(second)] == \
            [r['train_loss'] for r in read_log(first)]
        final = load_params(str(first / f'{NAME}-latest.ckpt'))
        assert_identical(load_params(str(second / f'{NAME}-latest.ckpt')), final)
        assert max(float(np.abs(final[k] - epoch1[k]).max()) for k in final) > 0  # it trained
    finally:  # a failed assertion leaves no run behind
        for proc in (uninterrupted, killed, resumed):
            if proc is not None and proc.poll() is None:
                proc.kill()


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} arrays differ, e.g. {differ[:3]}'
