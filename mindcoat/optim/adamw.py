"""AdamW exactly as torch.optim.AdamW (the official recipe's optimizer), as a Cell.

Not mindspore.nn.AdamWeightDecay, which has no bias correction, nor
mindspore.experimental.optim.AdamW, which keeps its lr in per-group state and compiles slowly:
the bias correction is folded into the lr, eps and decay handed to the fused primitive
ops.AdamWeightDecay (one in-place pass over each weight and its moments on every backend; as
elementwise ops the update took 3x as long on the CPU). The lr is a per-step input and the state
has names that cannot clash with model parameters:
``optimizer.exp_avg.<param>``, ``optimizer.exp_avg_sq.<param>``, ``optimizer.step``.
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

_update = ops.MultitypeFuncGraph('adamw_update')


@_update.register('Function', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor', 'Tensor',
                  'Tensor', 'Tensor', 'Tensor')
def _adamw_update(fused, lr, beta1, beta2, eps, decay_scale, decay, param, m, v, grad):
    return fused(param, m, v, lr, beta1, beta2, eps, decay * decay_scale, grad)


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
        self.fused = ops.AdamWeightDecay()
        self.hyper_map = ops.HyperMap()

    def state_params(self):
        return list(self.exp_avg) + list(self.exp_avg_sq) + [self.step]

    def construct(self, grads, lr):
        step = self.step + 1.0
        ops.assign(self.step, step)
        bias1 = 1.0 - ops.pow(self.beta1, step)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        # torch:  p <- p (1 - lr wd) - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), which is the fused
        # op's p <- p - lr' (m / (sqrt(v) + eps') + wd' p) at lr' = lr sqrt(bc2)/bc1,
        # eps' = eps sqrt(bc2), wd' = wd bc1/sqrt(bc2)
        return self.hyper_map(
            ops.partial(_update, self.fused, lr * bias2_sqrt / bias1, self.beta1, self.beta2,
                        self.eps * bias2_sqrt, bias1 / bias2_sqrt),
            self.decays, self.parameters, self.exp_avg, self.exp_avg_sq, grads)
