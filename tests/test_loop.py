"""The epoch loop that keeps the device busy (CPU, a CoaT-Lite with 16 channels): the step reads
its lr from the device-side schedule at its own global step, the losses accumulated on the device
equal the per-step losses the host used to read, a NaN is found at the next read, a resume across
an epoch boundary continues the schedule bit-identically, and train.py's --dataset_sink_mode
(no data sink on the CPU) and --summary (MindSpore summary data) say and write what they should."""
import glob
import os
import re
import struct
from types import SimpleNamespace

import mindspore as ms
import mindspore.dataset as msds
import numpy as np
import pytest
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

from mindcoat import create_model
from mindcoat.config import parse_config
from mindcoat.engine import TrainStep, build_seeded, create_train_step, load_training_state, \
    save_checkpoint, sink_supported, train_one_epoch, training_state
from mindcoat.errors import NonFiniteLoss
from train_helpers import TINY_KWARGS, base_flags, deterministic_flags, make_color_folder, \
    read_log, run_train

BATCH = 2
# the trainer's step as configured by the tests' recipe: AdamW, EMA, clipping (CPU: no scaler)
CFG = parse_config(['--opt', 'adamw', '--ema', 'True', '--ema_decay', '0.9', '--clip_grad',
                    'True', '--clip_value', '1.0'])


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def tiny_model(seed=0):
    return build_seeded(lambda: create_model('coat_lite_tiny', num_classes=4, **TINY_KWARGS),
                        seed)


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(steps * BATCH, 3, 32, 32)).astype(np.float32)
    targets = np.eye(4, dtype=np.float32)[rng.integers(0, 4, steps * BATCH)]
    return images, targets


def loader(images, targets):
    """What the trainer's loader offers the loop: a batched MindSpore dataset and its batch."""
    data = msds.NumpySlicesDataset({'image': images, 'label': targets}, shuffle=False)
    return SimpleNamespace(loader=data.batch(BATCH), batch_size=BATCH)


def host_losses(step, images, targets):
    """The old loop's view: run each step and read its loss on the host at once."""
    return [float(step(Tensor(images[i:i + BATCH]), Tensor(targets[i:i + BATCH]))[0])
            for i in range(0, len(images), BATCH)]


def weights(model):
    return {p.name: p.asnumpy().copy() for p in model.get_parameters()}


_sgd = ops.MultitypeFuncGraph('sgd')


@_sgd.register('Tensor', 'Tensor', 'Tensor')
def _sgd_update(lr, param, grad):
    return ops.assign(param, param - lr * grad)


class RecordingSGD(nn.Cell):
    """Plain SGD through the trainer's optimizer interface, ``optimizer(grads, lr)``, keeping the
    lr of its last call in a Parameter the test reads back."""

    def __init__(self, params):
        super().__init__()
        self.parameters = ParameterTuple(params)
        self.last_lr = Parameter(Tensor(0.0, ms.float32), name='sgd.last_lr', requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, lr):
        ops.assign(self.last_lr, lr)
        return self.hyper_map(ops.partial(_sgd, lr), self.parameters, grads)


def test_the_step_reads_each_lr_of_the_schedule_at_its_global_step():
    """The float64 schedule arrives as float32, one entry per step, in order; past the end the
    last lr holds. No step runs before a schedule is set, and the compiled schedule length
    cannot change afterwards (the graph holds it)."""
    lrs = np.geomspace(3e-3, 1e-5, 5)  # no entry is exact in float32
    model = tiny_model()
    opt = RecordingSGD(model.trainable_params())
    step = TrainStep(model, opt)
    images, targets = batches(7)
    x, y = Tensor(images[:BATCH]), Tensor(targets[:BATCH])
    with pytest.raises(RuntimeError, match='set_lr_schedule'):
        step(x, y)
    step.set_lr_schedule(lrs)
    seen = []
    for i in range(7):
        step(Tensor(images[i * BATCH:(i + 1) * BATCH]), Tensor(targets[i * BATCH:(i + 1) * BATCH]))
        seen.append(opt.last_lr.asnumpy().copy())  # asnumpy shares the buffer
    assert np.array_equal(np.array(seen), lrs.astype(np.float32)[[0, 1, 2, 3, 4, 4, 4]])
    assert int(step.global_step.asnumpy()) == 7
    with pytest.raises(ValueError, match='compiled for a schedule of 5 steps'):
        step.set_lr_schedule(lrs[:4])


class Trainer:
    """The trainer's step for a tiny model, compiled once for the module (compiling costs far
    more than the steps); ``restore()`` puts back the initial weights, optimizer and EMA state
    and global step, ``use(lrs)`` a schedule (same length)."""
    STEPS = 9

    def __init__(self):
        self.model = tiny_model()
        _, self.step, opt, ema, scaler = create_train_step(
            self.model, CFG, lr_schedule=np.zeros(self.STEPS))
        self.state = training_state(self.model, opt, ema, scaler, self.step)
        self.initial = {p.name: p.asnumpy().copy() for p in self.state}

    def restore(self, lrs):
        for p in self.state:
            p.set_data(Tensor(self.initial[p.name]))
        self.step.set_lr_schedule(lrs)

    def values(self):
        return {p.name: p.asnumpy().copy() for p in self.state}


@pytest.fixture(scope='module')
def trainer():
    ms.set_context(mode=ms.GRAPH_MODE)
    return Trainer()


def test_device_accumulated_losses_equal_the_per_step_host_losses(trainer):
    """Seven steps through the loop (reads after steps 3, 6 and 7 only) against the same seven
    steps read one by one: the epoch loss is the mean of the per-step losses, each log line the
    mean of its steps, and weights, EMA and moments are bit-identical (the loop changes when the
    host looks, not what the device computes)."""
    steps, lrs = 7, np.linspace(1e-3, 2e-3, Trainer.STEPS)
    images, targets = batches(steps)
    trainer.restore(lrs)
    losses = host_losses(trainer.step, images, targets)
    ref = trainer.values()
    trainer.restore(lrs)
    lines = []
    record = train_one_epoch(trainer.step, loader(images, targets), lrs, 0, steps,
                             log_interval=3, log=lines.append)
    assert record['train_loss'] == pytest.approx(np.mean(losses), rel=1e-6, abs=0)
    assert record['lr'] == lrs[steps - 1] and record['overflow_steps'] == 0
    logged = [float(re.search(r' loss (\S+) ', line).group(1)) for line in lines]
    assert [re.search(r'step (\d+)/', line).group(1) for line in lines] == ['3', '6', '7']
    np.testing.assert_allclose(logged, [np.mean(losses[:3]), np.mean(losses[3:6]), losses[6]],
                               atol=6e-5)  # printed with 4 decimals
    got = trainer.values()
    assert not [k for k in ref if not np.array_equal(ref[k], got[k])]
    assert len(set(np.round(losses, 6))) == steps  # seven different losses, not one repeated


def test_a_nan_loss_is_found_at_the_next_read_and_named_by_its_step(trainer):
    """From step 4 on the lr is 1e36: the loss turns NaN/inf a step or two later (found by reading
    every step); the loop, reading every 3 steps, names that same step and stops at the read
    after it."""
    steps = Trainer.STEPS
    lrs = np.where(np.arange(steps) < 3, 1e-3, 1e36)
    images, targets = batches(steps)
    trainer.restore(lrs)
    bad = [i for i, loss in enumerate(host_losses(trainer.step, images, targets))
           if not np.isfinite(loss)][0]
    trainer.restore(lrs)
    with pytest.raises(NonFiniteLoss) as e:
        train_one_epoch(trainer.step, loader(images, targets), lrs, 0, steps, log_interval=3,
                        log=lambda line: None)
    assert re.fullmatch(rf'loss is (nan|inf|-inf) at epoch 1, step {bad + 1} \(lr 1\.000e\+36\)',
                        str(e.value)), str(e.value)
    assert 3 <= bad < steps - 3  # the NaN falls between reads, with reads after it
    assert int(trainer.step.global_step.asnumpy()) == (bad // 3 + 1) * 3  # stopped at the read


def test_resume_across_an_epoch_boundary_continues_the_schedule_bit_identically(trainer,
                                                                                tmp_path):
    """Epochs 1 and 2 (3 steps each) in one go, against epoch 2 run again after the state is
    reset and epoch 1's checkpoint loaded: weights, EMA and moments bit for bit. The global step
    travels in the checkpoint; the loop refuses a step that is not at the epoch's first global
    step; a checkpoint written before the global step was stored resumes from its appended
    global step."""
    spe, lrs = 3, np.geomspace(2e-3, 1e-4, Trainer.STEPS)
    images, targets = batches(2 * spe)
    half = spe * BATCH
    trainer.restore(lrs)
    train_one_epoch(trainer.step, loader(images[:half], targets[:half]), lrs, 0, spe)
    path = str(tmp_path / 'epoch1.ckpt')
    save_checkpoint(path, trainer.state, 1, int(trainer.step.global_step.asnumpy()), 0.0, {})
    train_one_epoch(trainer.step, loader(images[half:], targets[half:]), lrs, 1, spe)
    final = trainer.values()

    trainer.restore(lrs)
    with pytest.raises(RuntimeError, match='global step 0, epoch 2 starts at 3'):
        train_one_epoch(trainer.step, loader(images[half:], targets[half:]), lrs, 1, spe)
    assert load_training_state(path, trainer.state) == (1, spe, 0.0)
    assert int(trainer.step.global_step.asnumpy()) == spe
    train_one_epoch(trainer.step, loader(images[half:], targets[half:]), lrs, 1, spe)
    resumed = trainer.values()
    assert not [k for k in final if not np.array_equal(final[k], resumed[k])]
    assert final['train_step.global_step'] == 2 * spe
    assert any(k.startswith('ema.') for k in final) and any(k.startswith('optimizer.exp_avg')
                                                            for k in final)

    older = str(tmp_path / 'older.ckpt')  # no train_step.global_step nor ema_updates entry
    save_checkpoint(older, [p for p in trainer.state
                            if p.name not in ('train_step.global_step', 'ema_updates')], 1,
                    spe, 0.0, {})
    trainer.step.set_global_step(0)
    counter = next(p for p in trainer.state if p.name == 'ema_updates')
    counter.set_data(ms.Tensor(0.0, ms.float32))
    load_training_state(older, trainer.state)
    assert int(trainer.step.global_step.asnumpy()) == spe
    # that EMA followed every step, so its update count is the step count
    assert float(counter.asnumpy()) == spe


def test_overflow_steps_are_counted_on_the_device_and_their_updates_skipped():
    """Float16 (O2, MindSpore's native ops, as on Ascend) with a dynamic loss scale starting at
    2^20: the first steps' gradients overflow float16; each halves the scale and is skipped.
    The loop's device-side count must equal the halvings the scaler made (its own record, read
    independently), some but not all steps overflow, a skipped step's loss is not an error, and
    the weights move only on the applied steps."""
    from mindcoat.ops.dispatch import native_ops
    steps, start = 10, 2.0 ** 20
    cfg = parse_config(['--opt', 'adamw', '--loss_scale_type', 'dynamic', '--loss_scale',
                        str(start), '--drop_overflow_update', 'True'])
    images, targets = batches(steps)
    with native_ops():
        model = tiny_model()
        _, step, _, _, scaler = create_train_step(model, cfg, amp_level='O2',
                                                  lr_schedule=np.full(steps, 1e-3))
        before = weights(model)
        result = train_one_epoch(step, loader(images, targets), np.full(steps, 1e-3), 0, steps,
                                 log_interval=4, log=lambda line: None)
    halvings = round(np.log2(start / float(scaler.scale_value.asnumpy())))
    assert 0 < result['overflow_steps'] == halvings < steps
    counters = step.read_counters()
    assert counters.loss_count == steps and np.isfinite(result['train_loss'])
    moved = [k for k, v in weights(model).items() if not np.array_equal(v, before[k])]
    assert moved  # the steps after the last overflow were applied


def test_mindspore_has_no_data_sink_on_the_cpu():
    """What train.py's --dataset_sink_mode relies on: mindspore.data_sink refuses the CPU (if a
    MindSpore release adds it, the flag's message and the README must change)."""
    ms.set_device('CPU')
    assert not sink_supported()
    data = msds.NumpySlicesDataset({'x': np.zeros((4, 2), np.float32)}, shuffle=False).batch(2)
    with pytest.raises(ValueError, match='ascend or gpu'):
        ms.data_sink(lambda x: x, data, sink_size=1)


def read_summary(folder):
    """{tag: {step: value}} from MindSpore's summary files: records of a uint64 length, its
    CRC32, a serialized mindspore Event and the data's CRC32."""
    from mindspore.train import summary_pb2
    values = {}
    for path in glob.glob(os.path.join(folder, '*.summary.*')):
        data, at = open(path, 'rb').read(), 0
        while at < len(data):
            (size,) = struct.unpack('<Q', data[at:at + 8])
            event = summary_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + size])
            at += 12 + size + 4
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = value.scalar_value
    return values


def test_train_py_sink_mode_on_the_cpu_says_so_and_summary_holds_the_logged_values(tmp_path):
    """train.py --dataset_sink_mode True on the CPU: one line saying it feeds from the host, and
    a normal run. --summary True: rank 0 writes the epochs' loss, lr and validation figures as
    summary scalars, equal (in float32) to log.jsonl's."""
    data = make_color_folder(str(tmp_path / 'data'), per_class=(4, 2))
    out = tmp_path / 'out'
    proc = run_train(base_flags(data, out, 4, 2, deterministic_flags() + [
        '--dataset_sink_mode', 'True', '--summary', 'True']), cwd=str(tmp_path))
    said = [line for line in proc.stdout.splitlines() if 'dataset_sink_mode' in line]
    assert said == ['dataset_sink_mode: MindSpore has no data sink on CPU (Ascend and GPU only): '
                    'feeding each batch from the host']
    log = read_log(out)
    assert [r['epoch'] for r in log] == [1, 2]
    summary = read_summary(str(out / 'summary'))
    for key in ('train_loss', 'lr', 'val_loss', 'val_top1', 'val_top5', 'ema_val_top1'):
        assert summary[key] == {r['epoch']: float(np.float32(r[key])) for r in log}, key
