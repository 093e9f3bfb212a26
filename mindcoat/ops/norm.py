"""The global L2 norm of many tensors (of a model's gradients, for clipping).

On the CPU each tensor's sum of squares is a dot product of the flattened tensor with itself,
one MatMul: MindSpore 2.10's CPU Square + ReduceSum take two passes and an intermediate as
large as the tensor, about 3x the time over coat_lite_medium's 44.6 M gradients (and within
2 float32 ulps of a float64 sum; ReduceSum within 1). Elsewhere (Ascend may run a float32
MatMul in float16) the native ops stay.
"""
from mindspore import nn, ops

from .dispatch import AtParseTime, fast_path

_square_sum = ops.MultitypeFuncGraph('square_sum')


@_square_sum.register('Bool', 'Tensor')
def _square_sum_one(as_dot, x):
    x = x.astype('float32')
    if as_dot:
        flat = x.reshape(1, -1)
        return ops.matmul(flat, flat.T).reshape(())
    return ops.reduce_sum(ops.square(x))


class _GlobalNorm(nn.Cell):
    def _as_dot(self):
        return fast_path('norm') is not None

    as_dot = AtParseTime(_as_dot)

    def __init__(self):
        super().__init__()
        self.hyper_map = ops.HyperMap()

    def construct(self, tensors):
        """sqrt of the sum of every element squared, over a tuple of tensors, in float32."""
        return ops.sqrt(ops.addn(self.hyper_map(ops.partial(_square_sum, self.as_dot), tensors)))


global_norm = _GlobalNorm()
