"""Clipping by the global gradient norm as the official trainer does it (timm's NativeScaler
with --clip-grad calls torch.nn.utils.clip_grad_norm_): every gradient times
min(max_norm / (norm + 1e-6), 1), so gradients under the limit pass unchanged."""
from mindspore import nn, ops

from ..ops.norm import global_norm

_scale = ops.MultitypeFuncGraph('clip_scale')


@_scale.register('Tensor', 'Tensor')
def _scale_one(coef, grad):
    return grad * coef.astype(grad.dtype)


class ClipGradNorm(nn.Cell):
    """``clip(grads)``: the tuple ``grads`` scaled to a global L2 norm of at most ``max_norm``."""

    def __init__(self, max_norm):
        super().__init__()
        if not max_norm > 0:
            raise ValueError(f'the clipping norm must be positive, got {max_norm}')
        self.max_norm = float(max_norm)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        coef = ops.minimum(self.max_norm / (global_norm(grads) + 1e-6), 1.0)
        return self.hyper_map(ops.partial(_scale, coef), grads)
