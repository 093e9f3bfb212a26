"""The epoch loop: train one epoch with a per-step lr, evaluate top-1/top-5."""
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Tensor
from tqdm import tqdm


def wait_for_device():
    """Blocks until every queued kernel has run. ms.runtime.synchronize() would do, but in
    MindSpore 2.10 its first call on the CPU logs an error and returns without waiting; the
    backend call behind it works on every device."""
    from mindspore._c_expression import synchronize
    synchronize()


def train_one_epoch(step, loader, lrs, epoch, steps_per_epoch, show=True, log_interval=100,
                    log=print):
    """Runs exactly ``steps_per_epoch`` steps (the same on every rank). ``lrs``: the schedule of
    the whole run. Returns the epoch's mean loss, its last lr, throughput and skipped steps."""
    step.set_train(True)
    batches = loader.loader.create_tuple_iterator(num_epochs=1)
    tty = show and sys.stdout.isatty()
    bar = tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}', disable=not tty, leave=False,
               dynamic_ncols=True)
    start = time.time()
    losses, overflows, lr = [], 0, 0.0
    for i in range(steps_per_epoch):
        images, targets = next(batches)
        lr = float(lrs[epoch * steps_per_epoch + i])
        loss, finite = step(images, targets, Tensor(lr, ms.float32))
        losses.append(float(loss))
        overflows += not bool(finite)
        if (i + 1) % max(log_interval, 1) == 0 or i + 1 == steps_per_epoch:
            speed = (i + 1) * loader.batch_size / (time.time() - start)
            bar.set_postfix(loss=f'{np.mean(losses[-log_interval:]):.4f}', lr=f'{lr:.2e}',
                            img_s=f'{speed:.1f}')
            if show and not tty:
                log(f'epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss '
                    f'{np.mean(losses[-log_interval:]):.4f} lr {lr:.3e} {speed:.1f} img/s')
        bar.update(1)
    bar.close()
    wait_for_device()  # the last step's weight updates have landed (checkpoints read them)
    elapsed = time.time() - start
    return {'train_loss': float(np.mean(losses)), 'lr': lr, 'epoch_time': elapsed,
            'images_per_sec': steps_per_epoch * loader.batch_size / elapsed,
            'overflow_steps': overflows}


class _SumOverRanks(nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce()

    def construct(self, x):
        return self.all_reduce(x)


def evaluate(network, loader, distributed=False):
    """Loss (plain cross entropy), top-1 and top-5 (%) over the split; with ``distributed`` each
    rank evaluates its shard and the sums are added over the ranks. The last, smaller batch is
    zero-padded to the batch size so that evaluation compiles one shape only."""
    network.set_train(False)
    totals = np.zeros(4, np.float64)  # loss sum, top-1 hits, top-5 hits, images
    for images, labels in loader.loader.create_tuple_iterator(num_epochs=1, output_numpy=True):
        n = len(labels)
        if n < loader.batch_size:
            pad = np.zeros((loader.batch_size - n,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, pad])
        logits = network(Tensor(images)).asnumpy()[:n].astype(np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        rank = (logits > logits[np.arange(n), labels][:, None]).sum(1)  # classes scoring higher
        totals += [-logp[np.arange(n), labels].sum(), (rank < 1).sum(), (rank < 5).sum(), n]
    if distributed:
        totals = _SumOverRanks()(Tensor(totals.astype(np.float32))).asnumpy().astype(np.float64)
    count = max(totals[3], 1)
    return {'val_loss': totals[0] / count, 'val_top1': 100 * totals[1] / count,
            'val_top5': 100 * totals[2] / count, 'val_images': int(totals[3])}
