"""One compiled training step: forward, soft-target cross entropy, backward, gradient all-reduce,
overflow check, clipping by global norm, the optimizer, EMA. Written TrainOneStepCell-style (a
Cell, not a jitted function: MindSpore 2.10 compiles it faster, and an explicit
DistributedGradReducer is what makes data parallel average the gradients).

The step takes nothing from the host but the batch: the run's lr schedule lives on the device,
indexed by a global-step Parameter the step advances itself, and the losses and overflow flags
are accumulated into Parameters the host reads when it wants to (``StepCounters``), so the host
never waits for the device between steps."""
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Parameter, Tensor
from mindspore.amp import DynamicLossScaler, StaticLossScaler, all_finite

from ..errors import ConfigError
from ..optim import EMA, ClipGradNorm, OptimizerSettings, create_optimizer
from ..typed import Settings


class SoftTargetCrossEntropy(nn.Cell):
    """mean over the batch of -sum(target * log_softmax(logits)); targets already carry label
    smoothing and Mixup/CutMix. Computed in float32 whatever the network's precision."""

    def construct(self, logits, target):
        logp = ops.log_softmax(logits.astype(ms.float32), axis=-1)
        return -(target * logp).sum(-1).mean()


class NetWithLoss(nn.Cell):
    def __init__(self, network, loss_fn):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn

    def construct(self, images, targets):
        return self.loss_fn(self.network(images), targets)


def create_loss_scaler(loss_scale_type, loss_scale):
    """None (float32), a fixed or a dynamic scaler (x2 after 2000 finite steps, halved on
    overflow: torch.cuda.amp.GradScaler's defaults, the official trainer's NativeScaler)."""
    if loss_scale_type in ('none', None) or loss_scale_type == 'fixed' and loss_scale == 1.0:
        return None
    if loss_scale_type == 'fixed':
        return StaticLossScaler(loss_scale)
    if loss_scale_type == 'dynamic':
        return DynamicLossScaler(loss_scale, scale_factor=2, scale_window=2000)
    raise ConfigError(f"unknown loss_scale_type '{loss_scale_type}'; choose dynamic, fixed or none")


@dataclass
class StepCounters:
    """What the step accumulated on the device since the last ``reset_counters``, read in one
    go: the sum and number of finite losses, the overflow (skipped-update) count, the first step
    whose loss was NaN/inf without an overflow (global index, -1: none) and that loss, and the
    global step the next step will run."""
    loss_sum: float
    loss_count: int
    overflows: int
    first_nonfinite: int
    nonfinite_loss: float
    global_step: int


def _counter(name, value, dtype):
    return Parameter(Tensor(value, dtype), name='train_step.' + name, requires_grad=False)


class TrainStep(nn.Cell):
    """``step(images, targets) -> (loss, grads_finite)``. ``set_lr_schedule(lrs)`` (the lr of every
    step of the run) must come before the first step: step ``global_step`` runs at
    ``lrs[global_step]`` (the last lr past the end). Updates the weights in place (not at all on
    overflow when ``drop_overflow_update``); the EMA follows the weights after every step,
    skipped or not, as timm's ModelEma does in the official loop, or (``ema.warmup``, MindCV's
    EMA) only after the steps whose update was applied. ``global_step`` (Parameter
    ``train_step.global_step``) belongs in the training checkpoint."""

    def __init__(self, network, optimizer, ema=None, clip_grad_norm=0.0, loss_scaler=None,
                 drop_overflow_update=True, distributed=False):
        super().__init__(auto_prefix=False)
        self.lr_schedule = Parameter(Tensor(np.full(1, np.nan, np.float32)),
                                     name='train_step.lr_schedule', requires_grad=False)
        self._schedule_length = None  # set by set_lr_schedule
        self._compiled_length = None  # the schedule length the compiled graph was built for
        self.global_step = _counter('global_step', 0, ms.int32)
        self.loss_sum = _counter('loss_sum', 0.0, ms.float32)
        self.loss_count = _counter('loss_count', 0, ms.int32)
        self.overflow_count = _counter('overflow_count', 0, ms.int32)
        self.first_nonfinite = _counter('first_nonfinite', -1, ms.int32)
        self.nonfinite_loss = _counter('nonfinite_loss', 0.0, ms.float32)
        self.net_with_loss = NetWithLoss(network, SoftTargetCrossEntropy())
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.ema = ema
        self.use_ema = ema is not None
        self.ema_every_step = ema is not None and ema.follows_dropped_steps
        self.clip = ClipGradNorm(clip_grad_norm) if clip_grad_norm > 0 else None
        self.use_clip = self.clip is not None
        self.loss_scaler = loss_scaler
        self.use_scaler = loss_scaler is not None
        self.drop_overflow_update = drop_overflow_update
        self.grad_fn = ms.value_and_grad(self.net_with_loss, None, self.weights)
        if loss_scaler is not None:
            self.scaled_grad_fn = ms.value_and_grad(self._scaled_loss, None, self.weights)
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True) if distributed \
            else nn.Identity()

    def set_lr_schedule(self, lrs):
        """``lrs``: the lr of every step of the run (float64 from the scheduler), stored as
        float32, the precision the optimizer takes it in. Its length is compiled into the step:
        after the first step only a schedule of the same length can replace it."""
        lrs = np.asarray(lrs, np.float64)
        if lrs.ndim != 1 or lrs.size == 0:
            raise ValueError(f"the lr schedule must be a non-empty 1-D array, got shape "
                             f"{lrs.shape}")
        if self._compiled_length not in (None, lrs.size):
            raise ValueError(f"the step was compiled for a schedule of {self._compiled_length} "
                             f"steps; a schedule of {lrs.size} needs a new step")
        self.lr_schedule.set_data(Tensor(lrs.astype(np.float32)))
        self._schedule_length = lrs.size

    def __call__(self, images, targets):
        if self._schedule_length is None:  # the graph would otherwise fix a placeholder's length
            raise RuntimeError("TrainStep: call set_lr_schedule(lrs) before the first step")
        self._compiled_length = self._schedule_length
        return super().__call__(images, targets)

    def set_global_step(self, value):
        self.global_step.set_data(Tensor(int(value), ms.int32))

    def reset_counters(self):
        """Zeroes the loss and overflow accumulators (at an epoch's start)."""
        for p, value in ((self.loss_sum, 0.0), (self.loss_count, 0), (self.overflow_count, 0),
                         (self.first_nonfinite, -1), (self.nonfinite_loss, 0.0)):
            p.set_data(Tensor(value, p.dtype))

    def read_counters(self):
        """Waits for the queued steps, then returns their StepCounters."""
        return StepCounters(float(self.loss_sum.asnumpy()), int(self.loss_count.asnumpy()),
                            int(self.overflow_count.asnumpy()),
                            int(self.first_nonfinite.asnumpy()),
                            float(self.nonfinite_loss.asnumpy()),
                            int(self.global_step.asnumpy()))

    def construct(self, images, targets):
        index = self.global_step.value()
        lr = self.lr_schedule[ops.minimum(index, self.lr_schedule.shape[0] - 1)]
        loss, finite = self._update(images, targets, lr)
        overflow = ops.logical_not(finite) if self.use_scaler else Tensor(False)
        loss = ops.depend(loss, self._count(loss, overflow, index))
        loss = ops.depend(loss, ops.assign(self.global_step, index + 1))
        return loss, finite

    def _count(self, loss, overflow, index):
        """Accumulates the step's loss and flags (NaN/inf is a failure unless the scaler
        reported an overflow, whose update was skipped)."""
        loss_ok = ops.isfinite(loss)
        bad = ops.logical_and(ops.logical_not(loss_ok), ops.logical_not(overflow))
        first = ops.logical_and(bad, self.first_nonfinite < 0)
        ops.assign(self.first_nonfinite, ops.select(first, index, self.first_nonfinite))
        ops.assign(self.nonfinite_loss, ops.select(first, loss, self.nonfinite_loss))
        ops.assign_add(self.loss_sum, ops.select(loss_ok, loss, ops.zeros_like(loss)))
        ops.assign_add(self.loss_count, loss_ok.astype(ms.int32))
        return ops.assign_add(self.overflow_count, overflow.astype(ms.int32))

    def _update(self, images, targets, lr):
        if self.use_scaler:
            scaled_loss, grads = self.scaled_grad_fn(images, targets)
            loss = self.loss_scaler.unscale(scaled_loss)
            grads = self.loss_scaler.unscale(self.reducer(grads))
            finite = all_finite(grads)
            self.loss_scaler.adjust(finite)
        else:
            loss, grads = self.grad_fn(images, targets)
            grads = self.reducer(grads)
            finite = Tensor(True)
        if self.use_clip:
            grads = self.clip(grads)
        if self.use_scaler and self.drop_overflow_update:
            if finite:
                loss = ops.depend(loss, self.optimizer(grads, lr))
                if self.use_ema and not self.ema_every_step:
                    loss = ops.depend(loss, self.ema())
        else:
            loss = ops.depend(loss, self.optimizer(grads, lr))
            if self.use_ema and not self.ema_every_step:
                loss = ops.depend(loss, self.ema())
        if self.ema_every_step:  # after the optimizer (side effects run in program order)
            loss = ops.depend(loss, self.ema())
        return loss, finite

    def _scaled_loss(self, images, targets):
        return self.loss_scaler.scale(self.net_with_loss(images, targets))


@dataclass(frozen=True)
class StepSettings(Settings):
    """What the compiled step is made of besides the optimizer: loss scaling, EMA, clipping."""
    loss_scale_type: str
    loss_scale: float
    drop_overflow_update: bool
    ema: bool
    ema_decay: float
    ema_warmup: bool
    clip_grad: bool
    clip_value: float


def create_train_step(model, settings, amp_level='O0', distributed=False, lr_schedule=None):
    """The compiled step for ``model``. ``settings`` carries the StepSettings and the
    OptimizerSettings fields (the parsed config does). ``amp_level`` O2/O3 casts the network's
    computation to float16 (Ascend/GPU); the float32 islands stay float32 whatever the level: the
    parameters themselves, the AdamW moments and step, the EMA weights, the lr and the loss
    (computed from float32 logits). ``lr_schedule``: the lr of every step (else
    ``step.set_lr_schedule`` before the first step). Returns (network, step, optimizer, ema,
    loss_scaler)."""
    if amp_level not in ('O0', 'O1', 'O2', 'O3'):
        raise ConfigError(f"amp_level must be O0, O1, O2 or O3, got '{amp_level}'")
    s = StepSettings.of(settings)
    network = model
    scaler = None
    if amp_level != 'O0':
        network = ms.amp.auto_mixed_precision(model, amp_level)
        scaler = create_loss_scaler(s.loss_scale_type, s.loss_scale)
    optimizer = create_optimizer(model, OptimizerSettings.of(settings))
    ema = EMA(model.trainable_params(), s.ema_decay, warmup=s.ema_warmup) if s.ema else None
    step = TrainStep(network, optimizer, ema, s.clip_value if s.clip_grad else 0.0, scaler,
                     s.drop_overflow_update, distributed)
    if lr_schedule is not None:
        step.set_lr_schedule(lr_schedule)
    return network, step, optimizer, ema, scaler
