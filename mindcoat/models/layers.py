"""Small building blocks shared by the CoaT cells. Parameter names follow PyTorch (weight/bias)
so that a reference state dict maps onto the model key for key."""
import math

import mindspore as ms
from mindspore import nn, ops, Parameter
from mindspore.common import initializer as init

from ..ops import Gelu, LayerNormOp, linear, linear_gelu, linear_residual, mlp, scale_samples, \
    scaled_add


def trunc_normal(shape, std=0.02):
    return Parameter(init.initializer(init.TruncatedNormal(sigma=std), shape, ms.float32))


def zeros(shape):
    return Parameter(init.initializer('zeros', shape, ms.float32))


def ones(shape):
    return Parameter(init.initializer('ones', shape, ms.float32))


def uniform_fan_in(shape, fan_in):
    """PyTorch's default Conv/Linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return Parameter(init.initializer(init.Uniform(1.0 / math.sqrt(fan_in)), shape, ms.float32))


class Float32Island(nn.Cell):
    """A cell that computes in float32 whatever precision amp asks of the network, as PyTorch's
    autocast runs layer_norm and softmax (MindSpore's O2 keeps only its own nn.LayerNorm and
    BatchNorm in float32, O3 nothing). amp sets precision through ``add_flags_recursive`` (also
    called by ``to_float``): here a float16/bfloat16 request becomes float32 (graph mode then casts
    the inputs and parameters to float32 at the call; PyNative runs the ops inside in float32),
    and the requested type is kept in ``amp_dtype`` for casting the result back. Cells inside an
    island must be islands too: O2 also calls ``to_float`` on each of them."""

    amp_dtype = None  # the low precision amp asked for, None without amp

    def add_flags_recursive(self, **flags):
        low = [k for k in ('fp16', 'bf16') if flags.get(k)]
        if low:
            self.amp_dtype = ms.float16 if low[0] == 'fp16' else ms.bfloat16
            flags = dict(flags, fp16=False, bf16=False, fp32=True)
        elif flags.get('fp32'):
            self.amp_dtype = None
        return super().add_flags_recursive(**flags)


class _LayerNormOpFloat32(Float32Island, LayerNormOp):
    """``ops.LayerNorm`` or the CPU kernel (LayerNormOp), kept in float32 inside LayerNorm."""


class LayerNorm(Float32Island):
    """LayerNorm over the last axis with PyTorch's parameter names (weight/bias). Always computed
    in float32; under amp the result is cast back to amp's type, as amp does for nn.LayerNorm."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = ones((dim,))
        self.bias = zeros((dim,))
        self.norm = _LayerNormOpFloat32(eps)  # ops.LayerNorm, or a compiled kernel on the CPU

    def construct(self, x):
        y = self.norm(x, self.weight, self.bias)
        if self.amp_dtype is None:
            return y
        return y.astype(self.amp_dtype)


class Linear(nn.Dense):
    """nn.Dense initialised like timm's CoaT (truncated normal 0.02, zero bias); on the CPU the
    bias is added inside the GEMM (``mindcoat.ops.linear``)."""

    def __init__(self, in_dim, out_dim):
        super().__init__(in_dim, out_dim, weight_init=init.TruncatedNormal(sigma=0.02),
                         bias_init='zeros')

    def construct(self, x):
        return linear(x, self.weight, self.bias)


class DropPath(nn.Cell):
    """Stochastic depth: drops the whole residual branch per sample."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = float(p)

    def construct(self, x, residual=None):
        """``x`` dropped per sample (the kept scaled by 1 / (1 - p)), plus ``residual`` if given
        (in one pass on the CPU: ``mindcoat.ops.scaled_add``)."""
        if not self.training or self.p == 0.0:
            return x if residual is None else residual + x
        keep = ops.dropout(ops.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype), p=self.p,
                           training=True)
        if residual is None:
            return scale_samples(x, keep)
        return scaled_add(residual, x, keep)


class Mlp(nn.Cell):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = Gelu()  # exact GELU; a vectorised kernel on the CPU
        self.fc2 = Linear(hidden, dim)
        self.drop_rate = float(drop)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x, residual=None):
        """fc2(GELU(fc1(x))), plus ``residual`` if given. Without dropout the residual add runs
        inside fc2's GEMM; in inference GELU runs inside fc1's, in training GELU's backward
        inside fc2's input gradient (``mindcoat.ops.linear``)."""
        if self.training and self.drop_rate > 0:
            y = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
            return y if residual is None else residual + y
        if self.training:
            return mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                       residual)
        hidden = linear_gelu(x, self.fc1.weight, self.fc1.bias)
        if residual is None:
            return self.fc2(hidden)
        return linear_residual(hidden, self.fc2.weight, self.fc2.bias, residual)


class DepthwiseKernel(nn.Cell):
    """Holds a depthwise 'same' convolution's weight (C, 1, k, k) and bias (C,), PyTorch-style.
    The convolution itself runs in ``mindcoat.ops.depthwise_tokens`` so that several kernels can be
    applied to one channels-last map in a single call."""

    def __init__(self, channels, kernel_size):
        super().__init__()
        fan_in = kernel_size * kernel_size
        self.weight = uniform_fan_in((channels, 1, kernel_size, kernel_size), fan_in)
        self.bias = uniform_fan_in((channels,), fan_in)
