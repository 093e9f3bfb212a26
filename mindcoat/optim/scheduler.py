"""Learning rate of every step of a run.

``timm_cosine`` (the official recipes): timm's CosineLRScheduler as DeiT/CoaT's src/main.py
drives it — t_initial = the run's epochs, warmup_prefix False, ``lr_scheduler.step(epoch)``
called after each epoch. So the lr is constant within an epoch, epoch 0 runs at warmup_lr
(there is no step before it) and epoch e >= 1 at the scheduler's value for t = e - 1: epochs 0
and 1 both run at warmup_lr, and the cosine counts its epochs from 0, warmup included.

Every other name is MindCV's (0.3.0, mindcv.scheduler.create_scheduler), with its arithmetic: a
linear warmup over warmup_epochs from warmup_factor * lr (or warmup_lr, ours, when given) to lr,
then the named decay over the remaining epochs, its epoch counter restarting at 0 after the
warmup; every value is recomputed each step (``lr_epoch_stair``: at each epoch's first step).

- ``cosine_decay`` = ``warmup_cosine_decay``: ``num_cycles`` cosines of ``decay_epochs`` each
  (default: what is left after warmup and cooldown), the n-th (from 0) from
  lr * cycle_decay**n down towards min_lr; min_lr after the last cycle.
- ``constant``: lr. ``step_decay``: lr * decay_rate**floor(epoch / decay_epochs).
  ``multi_step_decay``: lr * decay_rate**(milestones passed). ``exponential_decay``:
  lr * decay_rate**epoch. ``polynomial_decay``: lr * (1 - epoch / epochs)**decay_rate.
- ``one_cycle`` and ``cyclic`` (no warmup, no stair): MindCV's one_cycle_lr (peak lr, start
  lr / 25, end min_lr, 30% rising) and triangular cyclic_lr between min_lr and lr with
  ``num_cycles`` cycles.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..typed import Settings

SCHEDULERS = ('timm_cosine', 'cosine_decay', 'warmup_cosine_decay', 'constant', 'step_decay',
              'multi_step_decay', 'exponential_decay', 'polynomial_decay', 'one_cycle', 'cyclic')


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
                       warmup_lr=None, warmup_factor=0.0, decay_epochs=None, cooldown_epochs=0,
                       decay_rate=0.9, milestones=(), num_cycles=1, cycle_decay=1.0,
                       lr_epoch_stair=False):
    """A float64 array with the lr of every step of the run (len = steps_per_epoch * epochs).
    The warmup starts at ``warmup_lr``, or at ``warmup_factor * lr`` when that is None.
    ``decay_epochs`` (default: the rest of the run minus ``cooldown_epochs``) is the cosine's
    length (per cycle); for timm_cosine it is timm's t_initial, which includes the warmup; for
    step_decay the epochs between two decays."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{scheduler}'; choose one of {', '.join(SCHEDULERS)}")
    start = warmup_start(lr, warmup_lr, warmup_factor)
    if scheduler == 'timm_cosine':
        per_epoch = timm_cosine_per_epoch(lr, epochs, min_lr, warmup_epochs, start,
                                          decay_epochs or epochs - cooldown_epochs)
        return np.repeat(np.asarray(per_epoch, np.float64), steps_per_epoch)
    total = int(round(steps_per_epoch * epochs))
    warm = _linear_warmup(start, lr, warmup_epochs, steps_per_epoch, lr_epoch_stair)
    main_epochs = epochs - warmup_epochs
    main = _MAIN[scheduler](
        lr=lr, steps=total - len(warm), steps_per_epoch=steps_per_epoch, epochs=main_epochs,
        min_lr=min_lr, decay_epochs=main_epochs - cooldown_epochs if decay_epochs is None
        else decay_epochs, decay_rate=decay_rate, milestones=milestones, num_cycles=num_cycles,
        cycle_decay=cycle_decay, stair=lr_epoch_stair, warmup=len(warm) > 0)
    return np.concatenate([warm, main]).astype(np.float64)


def _epoch(steps, steps_per_epoch, stair):
    """The (fractional, or with ``stair`` whole) epoch of each step, counted from 0."""
    i = np.arange(steps, dtype=np.float64)
    return np.floor(i / steps_per_epoch) if stair else i / steps_per_epoch


def _linear_warmup(start, lr, warmup_epochs, steps_per_epoch, stair):
    """MindCV's linear_refined_lr (linear_lr with ``stair``) from ``start`` to ``lr``."""
    if warmup_epochs <= 0:
        return np.zeros(0)
    e = _epoch(int(round(warmup_epochs * steps_per_epoch)), steps_per_epoch, stair)
    return start + np.minimum(e, warmup_epochs) / warmup_epochs * (lr - start)


def _cosine(*, lr, steps, steps_per_epoch, min_lr, decay_epochs, num_cycles, cycle_decay, stair,
            **_):
    """MindCV's cosine_decay_refined_lr (cosine_decay_lr with ``stair``): cycle c runs
    min_lr + 0.5 (lr cycle_decay^c - min_lr)(1 + cos(pi t / decay_epochs)), t its epoch."""
    if num_cycles < 1:
        raise ConfigError(f"num_cycles must be at least 1, got {num_cycles}")
    cycle_steps = int(round(decay_epochs * steps_per_epoch))
    if cycle_steps < 1:
        raise ConfigError(f"decay_epochs {decay_epochs} is shorter than one step")
    i = np.arange(steps)
    cycle, within = i // cycle_steps, i % cycle_steps
    t = np.minimum(_epoch(cycle_steps, steps_per_epoch, stair)[within], decay_epochs)
    delta = 0.5 * (lr * np.power(float(cycle_decay), np.minimum(cycle, num_cycles)) - min_lr)
    lrs = min_lr + delta * (1.0 + np.cos(math.pi * t / decay_epochs))
    return np.where(cycle < num_cycles, lrs, min_lr)


def _constant(*, lr, steps, **_):
    return np.full(steps, float(lr))


def _step(*, lr, steps, steps_per_epoch, decay_epochs, decay_rate, **_):
    """lr * decay_rate^floor(epoch / decay_epochs), whole epochs (MindCV's step_lr)."""
    e = _epoch(steps, steps_per_epoch, True)
    return lr * np.power(float(decay_rate), np.floor(e / decay_epochs))


def _multi_step(*, lr, steps, steps_per_epoch, decay_rate, milestones, **_):
    """lr * decay_rate^(milestones <= epoch), whole epochs (MindCV's multi_step_lr)."""
    e = _epoch(steps, steps_per_epoch, True)
    passed = np.searchsorted(np.sort(np.asarray(milestones, np.float64)), e, side='right')
    return lr * np.power(float(decay_rate), passed)


def _exponential(*, lr, steps, steps_per_epoch, decay_rate, stair, **_):
    return lr * np.power(float(decay_rate), _epoch(steps, steps_per_epoch, stair))


def _polynomial(*, lr, steps, steps_per_epoch, epochs, decay_rate, stair, **_):
    """lr (1 - epoch / epochs)^decay_rate over the epochs after warmup (MindCV's
    polynomial_refined_lr / polynomial_lr)."""
    e = _epoch(steps, steps_per_epoch, stair)
    return lr * np.power(1 - np.minimum(e, epochs) / epochs, float(decay_rate))


def _no_warmup_or_stair(name, warmup, stair):
    if warmup or stair:
        raise ConfigError(f"scheduler {name} takes no warmup_epochs and no lr_epoch_stair "
                         "(as in MindCV): set warmup_epochs: 0 and lr_epoch_stair: False")


def _one_cycle(*, lr, steps, min_lr, stair, warmup, **_):
    """MindCV's one_cycle_lr(max_lr=lr, final_div_factor=(lr / 25) / min_lr): cosine from lr / 25
    up to lr over the first 30% of the steps, then down to min_lr."""
    _no_warmup_or_stair('one_cycle', warmup, stair)
    if min_lr <= 0:
        raise ConfigError("scheduler one_cycle needs min_lr above 0 (its final lr)")
    initial = lr / 25.0
    final = initial / (initial / min_lr)
    up, end = float(0.3 * steps) - 1, float(steps) - 1
    if up <= 0 or end <= up:
        raise ConfigError(f"scheduler one_cycle needs more steps than {steps}")
    i = np.arange(steps, dtype=np.float64)

    def anneal(high, low, pct):
        return low + (high - low) / 2.0 * (np.cos(math.pi * pct) + 1)
    return np.where(i <= up, anneal(initial, lr, i / up), anneal(lr, final, (i - up) / (end - up)))


def _cyclic(*, lr, steps, min_lr, num_cycles, stair, warmup, **_):
    """MindCV's triangular cyclic_lr between min_lr and lr, ``num_cycles`` cycles."""
    _no_warmup_or_stair('cyclic', warmup, stair)
    half = float(int(steps / num_cycles / 2))
    if half < 1:
        raise ConfigError(f"scheduler cyclic: {steps} steps are too few for {num_cycles} cycles")
    i = np.arange(steps, dtype=np.float64)
    cycle = np.floor(1 + i / (2 * half))
    x = 1.0 + i / (2 * half) - cycle
    scale = np.where(x <= 0.5, x / 0.5, (x - 1) / (0.5 - 1))
    return min_lr + (lr - min_lr) * scale


_MAIN = {'cosine_decay': _cosine, 'warmup_cosine_decay': _cosine, 'constant': _constant,
         'step_decay': _step, 'multi_step_decay': _multi_step, 'exponential_decay': _exponential,
         'polynomial_decay': _polynomial, 'one_cycle': _one_cycle, 'cyclic': _cyclic}


@dataclass(frozen=True)
class ScheduleSettings(Settings):
    """What a run's lr schedule is made from (``create_lr_schedule``'s arguments, the run's
    length and the batch the lr may be scaled by)."""
    scheduler: str
    lr: float
    lr_base_batch: int
    min_lr: float
    warmup_epochs: float
    warmup_lr: float
    warmup_factor: float
    decay_epochs: float
    cooldown_epochs: float
    decay_rate: float
    multi_step_decay_milestones: tuple
    lr_epoch_stair: bool
    num_cycles: int
    cycle_decay: float
    epoch_size: int
    batch_size: int


def lr_schedule_for(settings, steps_per_epoch, world_size):
    """(peak lr, lr of every step) for ``settings`` (ScheduleSettings, or anything carrying its
    fields) on ``world_size`` devices: lr scaled by the global batch when ``lr_base_batch`` is
    set, then the schedule."""
    s = ScheduleSettings.of(settings)
    lr = scaled_lr(s.lr, s.batch_size * world_size, s.lr_base_batch)
    return lr, create_lr_schedule(
        s.scheduler, lr=lr, steps_per_epoch=steps_per_epoch, epochs=s.epoch_size,
        min_lr=s.min_lr, warmup_epochs=s.warmup_epochs, warmup_lr=s.warmup_lr,
        warmup_factor=s.warmup_factor, decay_epochs=s.decay_epochs,
        cooldown_epochs=s.cooldown_epochs, decay_rate=s.decay_rate,
        milestones=s.multi_step_decay_milestones, num_cycles=s.num_cycles,
        cycle_decay=s.cycle_decay, lr_epoch_stair=s.lr_epoch_stair)


# schedules that anneal towards min_lr over decay_epochs
_ANNEALING = ('timm_cosine', 'cosine_decay', 'warmup_cosine_decay')


def unfinished_decay(settings, peak, lrs):
    """A one-line warning when a cosine schedule does not fit the run: a peak below min_lr (the
    lr would rise), or still far from min_lr at the run's last step (decay_epochs longer than
    the run: the lr barely decays); it names the flag that fixes it. None when it fits. MindCV's
    meaning of the keys is kept either way."""
    s = ScheduleSettings.of(settings)
    if s.scheduler not in _ANNEALING or s.num_cycles != 1 or not len(lrs):
        return None
    if peak <= s.min_lr:
        scaled = (f" ({s.lr:g} per {s.lr_base_batch} images, scaled by the global batch: set an "
                  f"absolute --lr with --lr_base_batch None)" if s.lr_base_batch else '')
        return (f"the peak lr {peak:.3g} is not above min_lr {s.min_lr:g}{scaled}: the "
                f"{s.scheduler} schedule cannot decay")
    # timm's cosine counts its epochs from the first (warmup included), MindCV's after warmup
    fits = s.epoch_size - s.cooldown_epochs - (0 if s.scheduler == 'timm_cosine'
                                               else s.warmup_epochs)
    left = (float(lrs[-1]) - s.min_lr) / (peak - s.min_lr)
    if s.decay_epochs is None or s.decay_epochs <= fits or left <= 0.1:
        return None
    return (f"the {s.scheduler} schedule anneals over decay_epochs {s.decay_epochs:g} but this "
            f"run has {s.epoch_size} epochs: its last step runs at {left:.0%} of the way from "
            f"min_lr to the peak lr; pass --decay_epochs {fits:g} (or None: the run's length) "
            f"to anneal within the run")
