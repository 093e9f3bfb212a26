"""The epoch loop. The host only hands batches to the step (or, in data-sink mode, not even
that): the lr comes from the step's device-side schedule, and the losses and overflow flags
accumulate on the device; the host reads them every ``log_interval`` steps and at the epoch's
end. A NaN/inf loss is therefore found at the next read, not at its step: the steps queued after
it only change weights that are never saved, because the read that finds it comes before any
evaluation or checkpoint of the epoch, and raises."""
import sys
import time

import mindspore as ms
from tqdm import tqdm

from ..errors import NonFiniteLoss
from .context import python_sigint


class EpochShort(RuntimeError):
    """The loader ran out of readable images before the epoch's last step."""


def wait_for_device():
    """Blocks until every queued kernel has run. ms.runtime.synchronize() would do, but in
    MindSpore 2.10 its first call on the CPU logs an error and returns without waiting; the
    backend call behind it works on every device."""
    from mindspore._c_expression import synchronize
    synchronize()


def sink_supported():
    """MindSpore's data sink (mindspore.data_sink) runs on Ascend and GPU only: in 2.10 it raises
    ValueError on the CPU, and Model.train(dataset_sink_mode=True) silently feeds from the host
    there."""
    return ms.get_context('device_target') in ('Ascend', 'GPU')


class _HostFeed:
    """Runs steps, handing each the next batch from the loader's iterator."""

    def __init__(self, step, loader, epoch, steps_per_epoch):
        self.step, self.done = step, 0
        self.batches = loader.loader.create_tuple_iterator(num_epochs=1)
        self.epoch, self.steps_per_epoch = epoch, steps_per_epoch

    def run(self, count):
        for _ in range(count):
            try:
                images, targets = next(self.batches)
            except StopIteration:
                raise EpochShort(f"epoch {self.epoch + 1} ran out of readable images after "
                                 f"{self.done} of {self.steps_per_epoch} steps") from None
            self.step(images, targets)
            python_sigint()
            self.done += 1


class _SinkFeed:
    """Runs steps on batches the data pipeline sends to the device queue (Ascend/GPU)."""

    def __init__(self, step, loader, epoch, steps_per_epoch):
        self.sink = ms.data_sink(step, loader.loader, sink_size=1)

    def run(self, count):
        for _ in range(count):
            self.sink()
            python_sigint()


def _check(counters, lrs, epoch, steps_per_epoch):
    if counters.first_nonfinite >= 0:
        i = counters.first_nonfinite
        raise NonFiniteLoss(f"loss is {counters.nonfinite_loss} at epoch {epoch + 1}, step "
                            f"{i - epoch * steps_per_epoch + 1} (lr {float(lrs[i]):.3e})")


def train_one_epoch(step, loader, lrs, epoch, steps_per_epoch, show=True, log_interval=100,
                    log=print, sink=False):
    """Runs exactly ``steps_per_epoch`` steps (the same on every rank) from global step
    ``epoch * steps_per_epoch``, which the step must hold. ``lrs``: the run's schedule, as given
    to ``step.set_lr_schedule``. ``sink``: feed through MindSpore's data sink (Ascend/GPU). Returns
    the epoch's mean loss, its last lr, throughput and skipped steps. Raises NonFiniteLoss when a
    step's loss is NaN/inf, except on a step the loss scaler reported as an overflow (its update
    was skipped; the scale is lowered)."""
    step.set_train(True)
    first = epoch * steps_per_epoch
    at = step.read_counters().global_step
    if at != first:
        raise RuntimeError(f"the step is at global step {at}, epoch {epoch + 1} starts at {first}")
    step.reset_counters()
    feed = (_SinkFeed if sink else _HostFeed)(step, loader, epoch, steps_per_epoch)
    tty = show and sys.stdout.isatty()
    bar = tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}', disable=not tty, leave=False,
               dynamic_ncols=True)
    start, done, seen = time.time(), 0, (0.0, 0)
    interval = max(log_interval, 1)
    try:
        while done < steps_per_epoch:
            count = min(interval - done % interval, steps_per_epoch - done)
            feed.run(count)
            done += count
            counters = step.read_counters()  # the only wait for the device
            _check(counters, lrs, epoch, steps_per_epoch)
            recent = ((counters.loss_sum - seen[0]) / (counters.loss_count - seen[1])
                      if counters.loss_count > seen[1] else float('nan'))
            seen = (counters.loss_sum, counters.loss_count)
            lr = float(lrs[first + done - 1])
            speed = done * loader.batch_size / (time.time() - start)
            bar.set_postfix(loss=f'{recent:.4f}', lr=f'{lr:.2e}', img_s=f'{speed:.1f}')
            bar.update(count)
            if show and not tty:
                log(f'epoch {epoch + 1} step {done}/{steps_per_epoch} loss {recent:.4f} '
                    f'lr {lr:.3e} {speed:.1f} img/s')
    finally:
        bar.close()
    wait_for_device()  # the last step's weight updates have landed (checkpoints read them)
    elapsed = time.time() - start
    if counters.global_step != first + steps_per_epoch:
        raise RuntimeError(f"epoch {epoch + 1} ended at global step {counters.global_step}, "
                           f"expected {first + steps_per_epoch}")
    return {'train_loss': (counters.loss_sum / counters.loss_count if counters.loss_count
                           else float('nan')),
            'lr': float(lrs[first + steps_per_epoch - 1]), 'epoch_time': elapsed,
            'images_per_sec': steps_per_epoch * loader.batch_size / elapsed,
            'overflow_steps': counters.overflows}
