"""Exact (erf) GELU. On the CPU, float32 goes through a vectorised kernel
(``csrc/transformer.cc``): the backend's scalar erf made GELU the largest cost of CoaT's MLPs.
Elsewhere ``nn.GELU``; in the export form (``dispatch.export_ops``) ``gelu_rational``, because
MindSpore 2.10's ONNX exporter has no Erf."""
import mindspore as ms
from mindspore import nn, ops

from .dispatch import EXPORT_FORM, AtParseTime, all_f32, check, kernel_cells

# erf(x) ~ x P(x^2) / Q(x^2) on |x| <= ERF_CLIP, coefficients highest degree first: a minimax fit
# over [0, 4], each coefficient rounded to float32 in turn and the rest refitted, so that Horner's
# rule in float32 stays within 1e-6 of erf (tests/test_onnx.py) and the quotient at the clip is
# exactly 1: erf saturates to +-1, GELU of a large |x| to exactly 0 or x.
ERF_CLIP = 4.0
ERF_P = (1.97518261e-06, 0.00028793735, 0.00400011009, 0.0534568988, 0.196169481, 1.12837899)
ERF_Q = (3.74789124e-05, 0.00121544802, 0.0154375173, 0.116443448, 0.507181883, 1.0)
SQRT_HALF = 0.7071067811865476


def _horner(u, coefs):
    """coefs[0] u^n + ... + coefs[n] (highest degree first) by Horner's rule."""
    acc = u * coefs[0] + coefs[1]
    for c in coefs[2:]:
        acc = acc * u + c
    return acc


def erf_rational(x):
    """erf from Mul, Add, Div and Clip only (operators the ONNX exporter converts)."""
    x = ops.clamp(x, -ERF_CLIP, ERF_CLIP)
    u = x * x
    return ops.clamp(x * _horner(u, ERF_P) / _horner(u, ERF_Q), -1.0, 1.0)


def gelu_rational(x):
    """Exact GELU, x Phi(x), through ``erf_rational``: the export form of ``Gelu``."""
    return x * (0.5 + 0.5 * erf_rational(x * SQRT_HALF))


def _same(x, *others):
    """GeluFwd (x) and GeluBwd (x, dy): shaped like x (the gradient too)."""
    check(all(list(o) == list(x) for o in others), 'the gradient must be shaped like the input')
    return x


def _f32(*dtypes):
    check(all_f32(*dtypes), 'the GELU kernel takes float32')
    return dtypes[0]


class _GeluKernel(nn.Cell):
    """The compiled forward; its gradient as a Cell ``bprop`` (see depthwise._DwKernel)."""

    def __init__(self, lib):
        super().__init__()
        self.forward = ops.Custom(lib + ':GeluFwd', _same, _f32, func_type='aot')
        self.grad = ops.Custom(lib + ':GeluBwd', _same, _f32, func_type='aot')

    def construct(self, x):
        return self.forward(x)

    def bprop(self, x, out, dout):
        return (self.grad(x, dout),)


class Gelu(nn.Cell):
    """Drop-in for ``nn.GELU(approximate=False)``; no parameters."""

    def __init__(self):
        super().__init__()
        self.native = nn.GELU(approximate=False)

    kernel = AtParseTime(lambda self: kernel_cells('gelu', _GeluKernel))  # None: native path
    export_form = EXPORT_FORM

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x)
        if self.export_form:
            return gelu_rational(x)
        return self.native(x)
