"""AdamW exactly as torch.optim.AdamW (the official recipe's optimizer), as a Cell.

Hand-written because mindspore.nn.AdamWeightDecay has no bias correction, and
mindspore.experimental.optim.AdamW keeps its lr in per-group state and compiles slowly; here the
lr is a per-step input and the state has names that cannot clash with model parameters:
``optimizer.exp_avg.<param>``, ``optimizer.exp_avg_sq.<param>``, ``optimizer.step``.
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

_update = ops.MultitypeFuncGraph('adamw_update')


@_update.register('Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor',
                  'Tensor', 'Tensor', 'Tensor')
def _adamw_update(lr, beta1, beta2, eps, bias1, bias2_sqrt, decay, param, m, v, grad):
    # p <- p (1 - lr wd);  m, v <- moments;  p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    param_new = param * (1.0 - lr * decay)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * ops.square(grad)
    param_new = param_new - (lr / bias1) * m_new / (ops.sqrt(v_new) / bias2_sqrt + eps)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    return ops.assign(param, param_new)


def split_decay(params, no_decay_names, weight_decay, filter_bias_and_bn=True):
    """Weight decay per parameter: 0 for the model's exempt parameters (class tokens, norms,
    biases) when ``filter_bias_and_bn``."""
    skip = set(no_decay_names) if filter_bias_and_bn else set()
    return [0.0 if p.name in skip else weight_decay for p in params]


class AdamW(nn.Cell):
    def __init__(self, params, weight_decays, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.parameters = ParameterTuple(params)
        self.exp_avg = self.parameters.clone(prefix='optimizer.exp_avg', init='zeros')
        self.exp_avg_sq = self.parameters.clone(prefix='optimizer.exp_avg_sq', init='zeros')
        self.decays = tuple(Tensor(wd, ms.float32) for wd in weight_decays)
        self.step = Parameter(Tensor(0.0, ms.float32), name='optimizer.step',
                              requires_grad=False)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.hyper_map = ops.HyperMap()

    def state_params(self):
        return list(self.exp_avg) + list(self.exp_avg_sq) + [self.step]

    def construct(self, grads, lr):
        step = self.step + 1.0
        ops.assign(self.step, step)
        bias1 = 1.0 - ops.pow(self.beta1, step)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        return self.hyper_map(
            ops.partial(_update, lr, self.beta1, self.beta2, self.eps, bias1, bias2_sqrt),
            self.decays, self.parameters, self.exp_avg, self.exp_avg_sq, grads)
