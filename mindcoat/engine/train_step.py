"""One compiled training step: forward, soft-target cross entropy, backward, gradient all-reduce,
overflow check, clipping by global norm, AdamW, EMA. Written TrainOneStepCell-style (a Cell, not a
jitted function: MindSpore 2.10 compiles it faster, and an explicit DistributedGradReducer is what
makes data parallel average the gradients)."""
import mindspore as ms
from mindspore import nn, ops, Tensor
from mindspore.amp import DynamicLossScaler, StaticLossScaler, all_finite


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
    raise ValueError(f"unknown loss_scale_type '{loss_scale_type}'; choose dynamic, fixed or none")


class TrainStep(nn.Cell):
    """``step(images, targets, lr) -> (loss, grads_finite)``. Updates the weights in place (not at
    all on overflow when ``drop_overflow_update``); the EMA follows the weights after every step,
    skipped or not, as timm's ModelEma does in the official loop, or (``ema.warmup``, MindCV's
    EMA) only after the steps whose update was applied."""

    def __init__(self, network, optimizer, ema=None, clip_grad_norm=0.0, loss_scaler=None,
                 drop_overflow_update=True, distributed=False):
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(network, SoftTargetCrossEntropy())
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.ema = ema
        self.use_ema = ema is not None
        self.ema_every_step = ema is not None and ema.follows_dropped_steps
        self.clip_grad_norm = float(clip_grad_norm)
        self.loss_scaler = loss_scaler
        self.use_scaler = loss_scaler is not None
        self.drop_overflow_update = drop_overflow_update
        self.grad_fn = ms.value_and_grad(self.net_with_loss, None, self.weights)
        if loss_scaler is not None:
            self.scaled_grad_fn = ms.value_and_grad(self._scaled_loss, None, self.weights)
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True) if distributed \
            else nn.Identity()

    def construct(self, images, targets, lr):
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
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
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


def create_train_step(model, cfg, amp_level='O0', distributed=False):
    """The compiled step for ``model`` and the trainer's config ``cfg`` (optimizer, EMA, clipping,
    loss scaling keys). ``amp_level`` O2/O3 casts the network's computation to float16
    (Ascend/GPU); the float32 islands stay float32 whatever the level: the parameters
    themselves, the AdamW moments and step, the EMA weights, the lr and the loss (computed from
    float32 logits). Returns (network, step, optimizer, ema, loss_scaler)."""
    from ..optim import EMA, create_optimizer
    if amp_level not in ('O0', 'O1', 'O2', 'O3'):
        raise ValueError(f"amp_level must be O0, O1, O2 or O3, got '{amp_level}'")
    network = model
    scaler = None
    if amp_level != 'O0':
        network = ms.amp.auto_mixed_precision(model, amp_level)
        scaler = create_loss_scaler(cfg.loss_scale_type, cfg.loss_scale)
    optimizer = create_optimizer(model, cfg)
    ema = EMA(model.trainable_params(), cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema else None
    step = TrainStep(network, optimizer, ema, cfg.clip_value if cfg.clip_grad else 0.0, scaler,
                     cfg.drop_overflow_update, distributed)
    return network, step, optimizer, ema, scaler
