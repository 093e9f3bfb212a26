"""Learning rate of every step of a run.

Two shapes of warmup + cosine:

- ``timm_cosine`` (the official recipes): timm's CosineLRScheduler as DeiT/CoaT's src/main.py
  drives it — t_initial = the run's epochs, warmup_prefix False, ``lr_scheduler.step(epoch)``
  called after each epoch. So the lr is constant within an epoch, epoch 0 runs at warmup_lr
  (there is no step before it) and epoch e >= 1 at the scheduler's value for t = e - 1: epochs 0
  and 1 both run at warmup_lr, and the cosine counts its epochs from 0, warmup included.
- ``cosine_decay`` / ``warmup_cosine_decay`` (per step, MindCV's name): linear warmup from
  warmup_lr to lr over warmup_epochs, then cosine to min_lr over decay_epochs (default: what is
  left after warmup and cooldown), evaluated at every step.

``constant``: the same per-step warmup, then lr.
"""
import math

import numpy as np

SCHEDULERS = ('timm_cosine', 'cosine_decay', 'warmup_cosine_decay', 'constant')


def scaled_lr(lr, global_batch, lr_base_batch):
    """The official linear scaling: lr is given per ``lr_base_batch`` images (None: as is)."""
    return lr * global_batch / lr_base_batch if lr_base_batch else lr


def warmup_start(lr, warmup_lr=None, warmup_factor=0.0):
    """``warmup_lr`` when given, else ``warmup_factor * lr`` (MindCV: 0 by default)."""
    return warmup_factor * lr if warmup_lr is None else warmup_lr


def timm_cosine_per_epoch(lr, epochs, min_lr=0.0, warmup_epochs=0, warmup_lr=0.0,
                          cycle_epochs=None):
    """The lr of each of ``epochs`` epochs (a list of floats), as timm's CosineLRScheduler
    (t_initial = ``cycle_epochs`` or ``epochs``, one cycle) gives it when stepped after every
    epoch. Written with timm's arithmetic, in the same order, so the values are its values."""
    t_initial = cycle_epochs or epochs
    warmup_step = (lr - warmup_lr) / warmup_epochs if warmup_epochs else 0.0

    def at(t):
        if t < warmup_epochs:
            return warmup_lr + t * warmup_step
        if t >= t_initial:  # past the one cycle: held at the floor
            return min_lr
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / t_initial))

    first = warmup_lr if warmup_epochs else lr
    return [first] + [at(epoch - 1) for epoch in range(1, epochs)]


def create_lr_schedule(scheduler, *, lr, steps_per_epoch, epochs, min_lr=0.0, warmup_epochs=0,
                       warmup_lr=None, warmup_factor=0.0, decay_epochs=None, cooldown_epochs=0):
    """A float64 array with the lr of every step of the run (len = steps_per_epoch * epochs).
    The warmup starts at ``warmup_lr``, or at ``warmup_factor * lr`` when that is None.
    ``decay_epochs`` (default: the rest of the run minus ``cooldown_epochs``) is the cosine's
    length; for timm_cosine it is timm's t_initial, which includes the warmup."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{scheduler}'; choose one of {', '.join(SCHEDULERS)}")
    start = warmup_start(lr, warmup_lr, warmup_factor)
    if scheduler == 'timm_cosine':
        per_epoch = timm_cosine_per_epoch(lr, epochs, min_lr, warmup_epochs, start,
                                          decay_epochs or epochs - cooldown_epochs)
        return np.repeat(np.asarray(per_epoch, np.float64), steps_per_epoch)
    total = int(steps_per_epoch * epochs)
    warmup = int(round(warmup_epochs * steps_per_epoch))
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


def lr_schedule_for(cfg, steps_per_epoch, world_size):
    """(peak lr, lr of every step) for the trainer's config ``cfg`` on ``world_size`` devices:
    lr scaled by the global batch when ``cfg.lr_base_batch`` is set, then the schedule."""
    lr = scaled_lr(cfg.lr, cfg.batch_size * world_size, cfg.lr_base_batch)
    return lr, create_lr_schedule(
        cfg.scheduler, lr=lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epoch_size,
        min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
        warmup_factor=cfg.warmup_factor, decay_epochs=cfg.decay_epochs,
        cooldown_epochs=cfg.cooldown_epochs)
