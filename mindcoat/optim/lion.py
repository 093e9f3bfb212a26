"""Lion (Chen et al. 2023, arXiv 2302.06675) computed as MindCV 0.3.0's mindcv.optim.Lion, as a
Cell with the same interface as our AdamW.

Per parameter, in float32 and in MindCV's order of operations:

    c = beta1 * m + (1 - beta1) * grad
    p = p - lr * (wd * p + sign(c))        # wd * p only for parameters that decay
    m = beta2 * m + (1 - beta2) * grad

MindCV's defaults are beta1 0.9, beta2 0.99 (its create_optimizer passes no betas). The moment is
stored as ``optimizer.lion_m.<param>`` and the update count as ``optimizer.step`` (Lion does not
use it; it is kept so that a checkpoint records how many updates were applied).
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

LION_BETAS = (0.9, 0.99)

_update = ops.MultitypeFuncGraph('lion_update')


@_update.register('Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Bool')
def _lion_update(lr, beta1, beta2, decay, param, m, grad, decays):
    c = beta1 * m + (1.0 - beta1) * grad
    update = ops.sign(c)
    if decays:
        update = decay * param + update
    param_new = param - lr * update
    m_new = beta2 * m + (1.0 - beta2) * grad
    ops.assign(m, m_new)
    return ops.assign(param, param_new)


class Lion(nn.Cell):
    def __init__(self, params, weight_decays, betas=LION_BETAS):
        super().__init__()
        self.parameters = ParameterTuple(params)
        self.moment = self.parameters.clone(prefix='optimizer.lion_m', init='zeros')
        self.decays = tuple(Tensor(wd, ms.float32) for wd in weight_decays)
        # MindCV skips the decay term (rather than adding 0 * p) for parameters without decay
        self.decay_flags = tuple(wd > 0 for wd in weight_decays)
        self.step = Parameter(Tensor(0.0, ms.float32), name='optimizer.step',
                              requires_grad=False)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.hyper_map = ops.HyperMap()

    def state_params(self):
        return list(self.moment) + [self.step]

    def construct(self, grads, lr):
        ops.assign(self.step, self.step + 1.0)
        return self.hyper_map(ops.partial(_update, lr, self.beta1, self.beta2),
                              self.decays, self.parameters, self.moment, grads, self.decay_flags)
