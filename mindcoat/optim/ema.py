"""Exponential moving average of the weights (timm's ModelEma: ema = d * ema + (1 - d) * w after
every optimizer step), kept as parameters named ``ema.<param>`` so that checkpoints carry it and
``mindcoat.convert.load_weights(..., use_ema=True)`` finds it."""
from contextlib import contextmanager

import mindspore as ms
from mindspore import nn, ops, ParameterTuple, Tensor

_ema_update = ops.MultitypeFuncGraph('ema_update')


@_ema_update.register('Tensor', 'Tensor', 'Tensor')
def _update(decay, ema, param):
    return ops.assign(ema, decay * ema + (1.0 - decay) * param)


class EMA(nn.Cell):
    def __init__(self, params, decay):
        super().__init__()
        self.params = ParameterTuple(params)
        self.ema = self.params.clone(prefix='ema', init='same')
        for p in self.ema:
            p.requires_grad = False
        self.decay = Tensor(decay, ms.float32)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.ema, self.params)

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
