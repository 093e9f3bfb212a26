"""The epoch loop: train one epoch with a per-step lr; stop on a non-finite loss."""
import math
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor
from tqdm import tqdm


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite (not a loss-scale overflow, which is skipped)."""


class EpochShort(RuntimeError):
    """The loader ran out of readable images before the epoch's last step."""


def wait_for_device():
    """Blocks until every queued kernel has run. ms.runtime.synchronize() would do, but in
    MindSpore 2.10 its first call on the CPU logs an error and returns without waiting; the
    backend call behind it works on every device."""
    from mindspore._c_expression import synchronize
    synchronize()


def train_one_epoch(step, loader, lrs, epoch, steps_per_epoch, show=True, log_interval=100,
                    log=print):
    """Runs exactly ``steps_per_epoch`` steps (the same on every rank). ``lrs``: the schedule of
    the whole run. Returns the epoch's mean loss, its last lr, throughput and skipped steps.
    Raises NonFiniteLoss when a step's loss is NaN/inf, except on a step the loss scaler
    reported as an overflow (its update was skipped; the scale is lowered)."""
    step.set_train(True)
    batches = loader.loader.create_tuple_iterator(num_epochs=1)
    tty = show and sys.stdout.isatty()
    bar = tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}', disable=not tty, leave=False,
               dynamic_ncols=True)
    start = time.time()
    losses, overflows, lr = [], 0, 0.0
    for i in range(steps_per_epoch):
        try:
            images, targets = next(batches)
        except StopIteration:
            bar.close()
            raise EpochShort(f"epoch {epoch + 1} ran out of readable images after {i} of "
                             f"{steps_per_epoch} steps") from None
        lr = float(lrs[epoch * steps_per_epoch + i])
        loss, finite = step(images, targets, Tensor(lr, ms.float32))
        loss = float(loss)
        overflow = step.use_scaler and not bool(finite)  # skipped update, lowered scale
        overflows += overflow
        if not math.isfinite(loss):
            if not overflow:
                bar.close()
                raise NonFiniteLoss(f"loss is {loss} at epoch {epoch + 1}, step {i + 1} "
                                    f"(lr {lr:.3e})")
        else:
            losses.append(loss)
        if (i + 1) % max(log_interval, 1) == 0 or i + 1 == steps_per_epoch:
            speed = (i + 1) * loader.batch_size / (time.time() - start)
            recent = np.mean(losses[-log_interval:] or [np.nan])
            bar.set_postfix(loss=f'{recent:.4f}', lr=f'{lr:.2e}', img_s=f'{speed:.1f}')
            if show and not tty:
                log(f'epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {recent:.4f} '
                    f'lr {lr:.3e} {speed:.1f} img/s')
        bar.update(1)
    bar.close()
    wait_for_device()  # the last step's weight updates have landed (checkpoints read them)
    elapsed = time.time() - start
    return {'train_loss': float(np.mean(losses)) if losses else float('nan'), 'lr': lr,
            'epoch_time': elapsed,
            'images_per_sec': steps_per_epoch * loader.batch_size / elapsed,
            'overflow_steps': overflows}
