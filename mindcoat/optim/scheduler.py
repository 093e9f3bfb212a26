"""Learning rate per step: linear warmup from warmup_lr, cosine decay to min_lr, optional
cooldown at min_lr (the official recipe's shape, evaluated per step rather than per epoch)."""
import math

import numpy as np

SCHEDULERS = ('cosine_decay', 'warmup_cosine_decay', 'constant')


def scaled_lr(lr, global_batch, lr_base_batch):
    """The official linear scaling: lr is given per ``lr_base_batch`` images (None: as is)."""
    return lr * global_batch / lr_base_batch if lr_base_batch else lr


def create_lr_schedule(scheduler, lr, steps_per_epoch, epochs, min_lr=0.0, warmup_epochs=0,
                       warmup_lr=None, warmup_factor=0.0, decay_epochs=None, cooldown_epochs=0):
    """A float64 array with the lr of every step of the run (len = steps_per_epoch * epochs).

    cosine_decay: warmup over ``warmup_epochs`` linearly from ``warmup_lr`` (or
    ``warmup_factor * lr``) to ``lr``; cosine from ``lr`` to ``min_lr`` over ``decay_epochs``
    (default: what is left after warmup and cooldown); ``min_lr`` after that. constant: the same
    warmup, then ``lr``."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{scheduler}'; choose one of {', '.join(SCHEDULERS)}")
    total = int(steps_per_epoch * epochs)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    start = warmup_factor * lr if warmup_lr is None else warmup_lr
    if decay_epochs is None:
        decay_epochs = epochs - warmup_epochs - cooldown_epochs
    decay = max(int(round(decay_epochs * steps_per_epoch)), 1)
    step = np.arange(total, dtype=np.float64)
    warm = start + (lr - start) * step / max(warmup, 1)
    if scheduler == 'constant':
        after = np.full(total, lr)
    else:
        t = np.clip(step - warmup, 0, decay) / decay
        after = min_lr + 0.5 * (lr - min_lr) * (1.0 + np.cos(math.pi * t))
    return np.where(step < warmup, warm, after)
