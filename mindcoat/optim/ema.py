"""Exponential moving average of the weights, kept as parameters named ``ema.<param>`` so that
checkpoints carry it and ``mindcoat.weights.load_weights(..., use_ema=True)`` finds it.

Each update is ema = d * ema + (1 - d) * w, in one of two ways:

- ``warmup=True`` (MindCV's TrainStep, ``ema_warmup: True``): d = ema_decay * (1 - exp(-n /
  2000)) where n counts the updates so far, this one included; the update runs only when the
  optimizer applied one (a step dropped for overflow moves neither the EMA nor n).
- ``warmup=False`` (timm's ModelEma, the official CoaT recipe): d = ema_decay, after every
  optimizer step, applied or dropped.

The counter n is the parameter ``ema_updates`` (counted in both modes), so a resume continues
the ramp where it was.
"""
from contextlib import contextmanager

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

_ema_update = ops.MultitypeFuncGraph('ema_update')

# MindCV's ramp: the decay reaches 1 - 1/e of ema_decay after this many updates
RAMP_UPDATES = 2000.0


@_ema_update.register('Tensor', 'Tensor', 'Tensor')
def _update(decay, ema, param):
    return ops.assign(ema, decay * ema + (1.0 - decay) * param)


class EMA(nn.Cell):
    def __init__(self, params, decay, warmup=False):
        super().__init__()
        self.params = ParameterTuple(params)
        self.ema = self.params.clone(prefix='ema', init='same')
        for p in self.ema:
            p.requires_grad = False
        self.decay = Tensor(decay, ms.float32)
        self.warmup = bool(warmup)
        self.updates = Parameter(Tensor(0.0, ms.float32), name='ema_updates', requires_grad=False)
        self.hyper_map = ops.HyperMap()

    @property
    def follows_dropped_steps(self):
        """Whether a step whose update was dropped (overflow) still updates the EMA (timm) or
        not (MindCV)."""
        return not self.warmup

    def state_params(self):
        """What a resume restores besides the EMA weights: the update counter."""
        return [self.updates]

    def construct(self):
        updates = self.updates + 1.0
        ops.assign(self.updates, updates)
        decay = self.decay
        if self.warmup:
            decay = self.decay * (1.0 - ops.exp(-updates / RAMP_UPDATES))
        return self.hyper_map(ops.partial(_ema_update, decay), self.ema, self.params)

    def weights(self):
        """{param name: EMA value} for swapping into the model (evaluation, export)."""
        return {e.name[len('ema.'):]: e for e in self.ema}

    @contextmanager
    def swapped_into(self, model):
        """The EMA weights in ``model`` for the duration of the block, the trained ones after."""
        ema_weights = self.weights()
        saved = {p.name: p.value().copy() for p in model.get_parameters() if p.name in ema_weights}
        for p in model.get_parameters():
            if p.name in saved:
                p.set_data(ema_weights[p.name].value())
        try:
            yield model
        finally:
            for p in model.get_parameters():
                if p.name in saved:
                    p.set_data(saved[p.name])


def ema_initial_share(decay, steps, warmup=False):
    """How much of the initial weights the EMA still holds after ``steps`` updates: the product
    of the per-update decays (MindCV's ramp, ``warmup``, makes the early ones small)."""
    if steps <= 0:
        return 1.0
    if not warmup:
        return float(decay) ** steps
    n = np.arange(1, steps + 1, dtype=np.float64)
    with np.errstate(divide='ignore'):
        log_share = steps * np.log(decay) + np.log1p(-np.exp(-n / RAMP_UPDATES)).sum()
    return float(np.exp(log_share))
