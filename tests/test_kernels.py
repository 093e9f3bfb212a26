"""The compiled CPU depthwise kernel against MindSpore's native grouped Conv2D: forward, the
gradients wrt input, every kernel and every bias (graph and PyNative), and the forced fallback."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindcoat.ops import Gelu, LayerNormOp, conv2d, conv2d_native, conv2d_relu, \
    conv_rel_pos_enc, conv_rel_pos_enc_native, cross_scale_sum, cross_scale_sum_native, \
    deconv_relu, deconv_relu_native, depthwise_nhwc, depthwise_nhwc_native, depthwise_path, \
    depthwise_tokens, depthwise_tokens_native, factor_attention, factor_attention_crpe, \
    factor_attention_native, linear, linear_gelu, linear_native, mlp, linear_residual, \
    patch_conv, scaled_add, scaled_add_native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (B, H, W, [(channels, kernel), ...]): one and three groups, k = 3/5/7, H != W, B = 1 and > 1
CASES = [
    (1, 5, 7, [(16, 3)]),
    (2, 8, 8, [(8, 5)]),
    (3, 9, 6, [(8, 3), (12, 5), (12, 7)]),
    (1, 4, 11, [(5, 7), (3, 3), (9, 5)]),
]


class DwNet(nn.Cell):
    """Sum of squares of the conv output, so every gradient depends on the forward values."""

    def __init__(self, groups, fn, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.ws = ms.ParameterTuple(
            [ms.Parameter(ms.Tensor(rng.normal(0, 0.3, (c, 1, k, k)).astype(np.float32)),
                          name=f'w{i}') for i, (c, k) in enumerate(groups)])
        self.bs = ms.ParameterTuple(
            [ms.Parameter(ms.Tensor(rng.normal(0, 1, (c,)).astype(np.float32)), name=f'b{i}')
             for i, (c, _) in enumerate(groups)])
        self.fn = fn

    def construct(self, x):
        y = self.fn(x, tuple(self.ws), tuple(self.bs))
        return (y * y).sum(), y


def _run(case, fn, mode):
    ms.set_context(mode=mode)
    b, h, w, groups = case
    x = ms.Tensor(np.random.default_rng(1).normal(0, 1, (b, h, w, sum(c for c, _ in groups)))
                  .astype(np.float32))
    net = DwNet(groups, fn, seed=0)
    grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(), has_aux=True)
    (_, y), (dx, dparams) = grad_fn(x)
    names = [p.name for p in net.trainable_params()]
    return y.asnumpy(), dx.asnumpy(), dict(zip(names, (g.asnumpy() for g in dparams)))


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def test_custom_path_is_used_on_cpu():
    assert depthwise_path() == 'custom'


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('case', CASES, ids=[f'{c[0]}x{c[1]}x{c[2]}-{len(c[3])}g' for c in CASES])
def test_forward_and_grads_match_native(case, mode):
    y, dx, dp = _run(case, depthwise_nhwc, mode)
    y_ref, dx_ref, dp_ref = _run(case, depthwise_nhwc_native, mode)
    assert y.shape == y_ref.shape == (*case[:3], sum(c for c, _ in case[3]))
    assert np.abs(y - y_ref).max() < 1e-5
    assert _rel(dx, dx_ref) < 1e-4
    assert sorted(dp) == sorted(dp_ref) and len(dp) == 2 * len(case[3])
    for name in dp:
        assert dp[name].shape == dp_ref[name].shape
        assert _rel(dp[name], dp_ref[name]) < 1e-4, name


def test_weight_grad_is_deterministic():
    case = CASES[2]
    _, _, first = _run(case, depthwise_nhwc, ms.GRAPH_MODE)
    _, _, second = _run(case, depthwise_nhwc, ms.GRAPH_MODE)
    for name in first:
        assert np.array_equal(first[name], second[name])


def test_train_one_step_cell_updates_like_native():
    """Inside TrainOneStepCell (graph mode) one SGD step moves the weights as the native op does."""
    case = CASES[2]
    x = ms.Tensor(np.random.default_rng(2).normal(0, 1, (3, 9, 6, 32)).astype(np.float32))
    after = []
    for fn in (depthwise_nhwc, depthwise_nhwc_native):
        net = DwNet(case[3], fn, seed=3)
        loss_net = _LossOnly(net)
        step = nn.TrainOneStepCell(loss_net, nn.SGD(net.trainable_params(), learning_rate=0.01))
        step(x)
        after.append([p.asnumpy() for p in net.trainable_params()])
    for a, b in zip(*after):
        assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
def test_gelu_matches_native(mode):
    """The vectorised exact GELU and its gradient against nn.GELU(approximate=False), including
    the tails (|x| up to 12) where erf saturates."""
    ms.set_context(mode=mode)
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(0, 3, 5000)])
    x = ms.Tensor(x.astype(np.float32).reshape(9001, 1))
    dy = ms.Tensor(np.random.default_rng(1).normal(size=(9001, 1)).astype(np.float32))
    results = []
    for act in (Gelu(), nn.GELU(approximate=False)):
        y, vjp = ms.vjp(act, x)
        results.append((y.asnumpy(), vjp(dy)[0].asnumpy()))
    (y, dx), (y_ref, dx_ref) = results
    assert Gelu().kernel is not None  # the compiled path really ran
    assert np.abs(y - y_ref).max() < 2e-6
    assert np.abs(dx - dx_ref).max() < 2e-6


class _PatchNet(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        rng = np.random.default_rng(4)
        self.w = ms.Parameter(ms.Tensor(rng.normal(size=(6, 3, 4, 4)).astype(np.float32)), name='w')
        self.b = ms.Parameter(ms.Tensor(rng.normal(size=(6,)).astype(np.float32)), name='b')
        self.fn = fn

    def construct(self, x):
        return self.fn(x, self.w, self.b)


def _conv_tokens(x, w, b):
    y = ops.conv2d(x, w, b, w.shape[2])
    return y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1)


def test_patch_matmul_matches_conv():
    """Patch embedding as a matmul over patches == the strided Conv2D, forward and gradients."""
    x = ms.Tensor(np.random.default_rng(5).normal(size=(2, 3, 8, 12)).astype(np.float32))
    out = []
    for fn in (patch_conv, _conv_tokens):
        net = _PatchNet(fn)
        y = net(x)
        dx, (dw, db) = ms.grad(net, grad_position=0, weights=net.trainable_params())(x)
        out.append([t.asnumpy() for t in (y, dx, dw, db)])
    assert out[0][0].shape == (2, 6, 6)
    for a, b in zip(*out):
        assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())


class _LossOnly(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net(x)[0]


@pytest.mark.parametrize('env', [{'MINDCOAT_NATIVE_DWCONV': '1'}, {'MINDCOAT_NATIVE': '1'},
                                 {'PATH': '/nonexistent', 'CXX': '', 'MINDCOAT_CACHE': 'empty'}],
                         ids=['dwconv-flag', 'global-flag', 'no-compiler'])
def test_fallback_to_native(tmp_path, env):
    """Forced by env, or with no compiler (and an empty cache), MindSpore's Conv2D is used and
    the output is unchanged."""
    script = tmp_path / 'forced.py'
    script.write_text(
        'import json, numpy as np, mindspore as ms\n'
        'ms.set_device("CPU")\n'
        'from mindcoat.ops import depthwise_nhwc, depthwise_nhwc_native, depthwise_path\n'
        'rng = np.random.default_rng(0)\n'
        'x = ms.Tensor(rng.normal(size=(2, 6, 5, 8)).astype(np.float32))\n'
        'w = (ms.Tensor(rng.normal(size=(8, 1, 3, 3)).astype(np.float32)),)\n'
        'b = (ms.Tensor(rng.normal(size=(8,)).astype(np.float32)),)\n'
        'y, y_ref = depthwise_nhwc(x, w, b), depthwise_nhwc_native(x, w, b)\n'
        'diff = np.abs(y.asnumpy() - y_ref.asnumpy())\n'
        'print(json.dumps({"path": depthwise_path(), "diff": float(diff.max())}))\n')
    env = dict(os.environ, GLOG_v='3', **env,
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    if env.get('MINDCOAT_CACHE') == 'empty':
        env['MINDCOAT_CACHE'] = str(tmp_path / 'cache')
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out['path'] == 'native'
    assert out['diff'] == 0.0


class TokNet(DwNet):
    def __init__(self, groups, fn, seed, h, w, residual):
        super().__init__(groups, fn, seed)
        self.h, self.w, self.residual = h, w, residual

    def construct(self, x):
        y = self.fn(x, self.h, self.w, tuple(self.ws), tuple(self.bs), self.residual)
        return (y * y).sum(), y


@pytest.mark.parametrize('residual', [False, True], ids=['plain', 'residual'])
@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('case', CASES[1:3], ids=['1g', '3g'])
def test_tokens_layout_matches_native(case, mode, residual):
    """depthwise_tokens on (B, 1 + H*W, C): class-token row zero (or passed on with the residual),
    forward and all gradients equal to the split/conv/concat reference."""
    ms.set_context(mode=mode)
    b, h, w, groups = case
    x = ms.Tensor(np.random.default_rng(1).normal(0, 1, (b, 1 + h * w, sum(c for c, _ in groups)))
                  .astype(np.float32))
    res = []
    for fn in (depthwise_tokens, depthwise_tokens_native):
        net = TokNet(groups, fn, 0, h, w, residual)
        grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                    has_aux=True)
        (_, y), (dx, dp) = grad_fn(x)
        res.append([y.asnumpy(), dx.asnumpy()] + [g.asnumpy() for g in dp])
    (y, dx, *dp), (y_ref, dx_ref, *dp_ref) = res
    assert y.shape == x.shape
    assert np.abs(y - y_ref).max() < 1e-5
    assert np.array_equal(y[:, 0], x.asnumpy()[:, 0] if residual else np.zeros_like(y[:, 0]))
    assert _rel(dx, dx_ref) < 1e-4
    assert len(dp) == 2 * len(groups)
    for g, g_ref in zip(dp, dp_ref):
        assert _rel(g, g_ref) < 1e-4


class _AttNet(nn.Cell):
    def __init__(self, fn, heads):
        super().__init__()
        self.fn, self.heads = fn, heads

    def construct(self, qkv, crpe):
        y = self.fn(qkv, crpe, self.heads)
        return (y * y).sum(), y


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('shape', [(2, 17, 8, 1, 0), (3, 50, 24, 8, 0), (1, 5, 38, 2, 0),
                                   (2, 23, 152, 8, 0), (1, 7, 128, 2, 0), (2, 150, 40, 4, 12)],
                         ids=['1head', '8heads', 'odd', 'coat_width', 'widest_head', 'rising_k'])
def test_factor_attention_matches_native(shape, mode):
    """Fused factorized attention on qkv (B, N, 3C): output and gradients wrt qkv and crpe.
    'rising_k': k grows along the tokens, so that every chunk of tokens the kernel reads raises
    the softmax's running maximum (and rescales what it has summed)."""
    ms.set_context(mode=mode)
    b, n, c, heads, rise = shape
    rng = np.random.default_rng(7)
    qkv = rng.normal(0, 2, (b, n, 3 * c)).astype(np.float32)
    qkv[:, :, c:2 * c] += np.linspace(0, rise, n, dtype=np.float32)[:, None]
    qkv = ms.Tensor(qkv)
    crpe = ms.Tensor(rng.normal(0, 1, (b, n, c)).astype(np.float32))
    res = []
    for fn in (factor_attention, factor_attention_native):
        grad_fn = ms.value_and_grad(_AttNet(fn, heads), grad_position=(0, 1), has_aux=True)
        (_, y), (dqkv, dcrpe) = grad_fn(qkv, crpe)
        res.append([y.asnumpy(), dqkv.asnumpy(), dcrpe.asnumpy()])
    assert factor_attention.kernel is not None  # the compiled path really ran
    for a, b_ in zip(*res):
        assert a.shape == b_.shape
        assert _rel(a, b_) < 1e-5


class _LnNet(nn.Cell):
    def __init__(self, norm, c):
        super().__init__()
        rng = np.random.default_rng(9)
        self.norm = norm
        self.gamma = ms.Parameter(ms.Tensor(rng.normal(1, 0.2, (c,)).astype(np.float32)), name='g')
        self.beta = ms.Parameter(ms.Tensor(rng.normal(0, 0.2, (c,)).astype(np.float32)), name='b')

    def construct(self, x):
        y = self.norm(x, self.gamma, self.beta)
        return (y * y * y).sum(), y


class _NativeLn(nn.Cell):
    def __init__(self, eps):
        super().__init__()
        self.op = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x, gamma, beta):
        return self.op(x, gamma, beta)[0]


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('shape,eps', [((4, 33, 64), 1e-6), ((2, 5, 7, 152), 1e-5)],
                         ids=['3d', '4d'])
def test_layer_norm_matches_native(shape, eps, mode):
    """Compiled LayerNorm: output and gradients wrt x, gamma and beta against ops.LayerNorm."""
    ms.set_context(mode=mode)
    x = ms.Tensor(np.random.default_rng(8).normal(0.5, 2, shape).astype(np.float32))
    res = []
    for norm in (LayerNormOp(eps), _NativeLn(eps)):
        net = _LnNet(norm, shape[-1])
        grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                    has_aux=True)
        (_, y), (dx, (dg, db)) = grad_fn(x)
        res.append([t.asnumpy() for t in (y, dx, dg, db)])
    assert LayerNormOp(eps).kernel is not None
    for a, b in zip(*res):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5


class _LinearNet(nn.Cell):
    def __init__(self, fn, k, n, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = ms.Parameter(ms.Tensor(rng.normal(0, 0.2, (n, k)).astype(np.float32)))
        self.bias = ms.Parameter(ms.Tensor(rng.normal(0, 1, (n,)).astype(np.float32)))
        self.fn = fn

    def construct(self, x):
        y = self.fn(x, self.weight, self.bias)
        return (y * y).sum(), y


def _residual_native(x, weight, bias, residual):
    return residual + linear_native(x, weight, bias)


def _gelu_native(x, weight, bias):
    return ops.gelu(linear_native(x, weight, bias), approximate='none')


def _residual_fused(x, weight, bias, residual):
    return linear_residual(x, weight, bias, residual)


def _vjp_results(fns, args, dy):
    """[output, d args...] as numpy, of each function in ``fns`` for the cotangent ``dy``."""
    res = []
    for fn in fns:
        y, vjp = ms.vjp(fn, *args)
        res.append([y.asnumpy()] + [g.asnumpy() for g in vjp(dy)])
    return res


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('fused,native', [(_residual_fused, _residual_native),
                                          (linear_gelu, _gelu_native)], ids=['residual', 'gelu'])
def test_linear_epilogues_match_native(fused, native, mode):
    """The residual add and the exact GELU fused into the GEMM (oneDNN post-ops): output and the
    gradients wrt x, weight, bias (and the residual) against MatMul + BiasAdd + add / nn.GELU."""
    ms.set_context(mode=mode)
    rng = np.random.default_rng(12)
    x = ms.Tensor(rng.normal(size=(2, 57, 48)).astype(np.float32))
    weight = ms.Tensor(rng.normal(0, 0.3, (80, 48)).astype(np.float32))
    bias = ms.Tensor(rng.normal(size=(80,)).astype(np.float32))
    args = (x, weight, bias)
    if native is _residual_native:
        args = args + (ms.Tensor(rng.normal(size=(2, 57, 80)).astype(np.float32)),)
    dy = ms.Tensor(rng.normal(size=(2, 57, 80)).astype(np.float32))
    res = _vjp_results((fused, native), args, dy)
    assert linear_residual.kernel is not None and linear_gelu.kernel is not None
    for got, ref in zip(*res):
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-5


def _mlp_native(x, w1, b1, w2, b2, residual=None):
    y = linear_native(ops.gelu(linear_native(x, w1, b1), approximate='none'), w2, b2)
    return y if residual is None else residual + y


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('with_residual', [True, False], ids=['residual', 'plain'])
def test_mlp_matches_native(with_residual, mode):
    """The training MLP (GELU's slope kept by the forward, multiplied in inside fc2's input
    gradient): output and the gradients wrt x, both layers (and the residual) against MatMul +
    BiasAdd + nn.GELU."""
    ms.set_context(mode=mode)
    rng = np.random.default_rng(13)
    args = [ms.Tensor(rng.normal(0, scale, shape).astype(np.float32)) for shape, scale in
            (((2, 57, 48), 1.0), ((96, 48), 0.3), ((96,), 1.0), ((48, 96), 0.2), ((48,), 1.0))]
    if with_residual:
        args.append(ms.Tensor(rng.normal(size=(2, 57, 48)).astype(np.float32)))
    dy = ms.Tensor(rng.normal(size=(2, 57, 48)).astype(np.float32))
    res = _vjp_results((mlp, _mlp_native), args, dy)
    assert mlp.kernel is not None and mlp.kernel_residual is not None
    assert len(res[0]) == len(args) + 1
    for got, ref in zip(*res):
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
def test_stochastic_depth_add_matches_native(mode):
    """x + keep[b] * branch in one pass (ScaledAdd, its backward RowScale): output and the
    gradients wrt x and the branch against broadcast + Mul + Add, for dropped (0), kept
    (1 / (1 - p)) and arbitrary per-sample factors."""
    ms.set_context(mode=mode)
    rng = np.random.default_rng(14)
    x, branch, dy = (ms.Tensor(rng.normal(size=(5, 57, 48)).astype(np.float32)) for _ in range(3))
    keep = ms.Tensor(np.array([0.0, 1.25, 1.0, 0.3, 1.25], np.float32).reshape(5, 1, 1))

    def fused(a, b):
        return scaled_add(a, b, keep)

    def native(a, b):
        return scaled_add_native(a, b, keep)

    res = _vjp_results((fused, native), (x, branch), dy)
    assert scaled_add.kernel is not None
    for got, ref in zip(*res):
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-6
    assert np.array_equal(res[0][2][0], np.zeros((57, 48), np.float32))  # a dropped sample


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('shape,n', [((300, 37), 21), ((3, 41, 64), 192)], ids=['2d', '3d'])
def test_linear_matches_native(shape, n, mode):
    """The compiled linear layer (oneDNN GEMM onto the bias rows): output and the gradients wrt
    x, weight and bias against MatMul + BiasAdd (nn.Dense's computation)."""
    ms.set_context(mode=mode)
    x = ms.Tensor(np.random.default_rng(10).normal(size=shape).astype(np.float32))
    res = []
    for fn in (linear, linear_native):
        net = _LinearNet(fn, shape[-1], n, seed=3)
        grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                    has_aux=True)
        (_, y), (dx, (dw, db)) = grad_fn(x)
        res.append([t.asnumpy() for t in (y, dx, dw, db)])
    assert linear.kernel is not None
    for a, b in zip(*res):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5


class _ConvNet(nn.Cell):
    """fn(x, weight (a, b, k, k), bias (a,), or (b,) for a transposed convolution)."""

    def __init__(self, fn, b, a, k, seed, transposed=False):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = ms.Parameter(ms.Tensor(rng.normal(0, 0.2, (a, b, k, k)).astype(np.float32)))
        self.bias = ms.Parameter(ms.Tensor(rng.normal(0, 1, (b if transposed else a,))
                                           .astype(np.float32)))
        self.fn = fn

    def construct(self, x):
        y = self.fn(x, self.weight, self.bias)
        return (y * y).sum(), y


def _conv_reference(x, weight, bias):
    """The convolution in float64 NumPy, channels-last, zero padding k // 2."""
    k = weight.shape[2]
    pad = k // 2
    h, w = x.shape[1:3]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros(x.shape[:3] + (weight.shape[0],)) + bias
    for i in range(k):
        for j in range(k):
            y += xp[:, i:i + h, j:j + w] @ weight[:, :, i, j].T.astype(np.float64)
    return y


def _native_relu(x, weight, bias):
    return conv2d_native(x, weight, bias, relu=True)


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('relu', [False, True], ids=['plain', 'relu'])
@pytest.mark.parametrize('shape,n,k', [((3, 7, 5, 24), 16, 3), ((2, 4, 9, 8), 5, 1),
                                       ((1, 14, 14, 64), 64, 3)], ids=['3x3', '1x1', 'roi'])
def test_conv2d_matches_native(shape, n, k, relu, mode):
    """The detection heads' convolution (oneDNN on channels-last data, ReLU fused): output
    against float64 NumPy and the shifted products, gradients wrt x, weight and bias against the
    shifted products' own."""
    ms.set_context(mode=mode)
    x_np = np.random.default_rng(11).normal(size=shape).astype(np.float32)
    x = ms.Tensor(x_np)
    res = []
    for fn in ((conv2d_relu, _native_relu) if relu else (conv2d, conv2d_native)):
        net = _ConvNet(fn, shape[-1], n, k, seed=4)
        grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                    has_aux=True)
        (_, y), (dx, (dw, db)) = grad_fn(x)
        res.append([t.asnumpy() for t in (y, dx, dw, db)])
    assert (conv2d_relu if relu else conv2d).kernel is not None
    want = _conv_reference(x_np, net.weight.asnumpy(), net.bias.asnumpy())
    if relu:
        want = np.maximum(want, 0)
        assert (want == 0).mean() > 0.2  # the ReLU cuts
    assert res[0][0].shape == want.shape and _rel(res[0][0], want) < 1e-5
    for a, b in zip(*res):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
def test_deconv_relu_matches_native(mode):
    """The mask head's ReLU(ConvTranspose2d(kernel 2, stride 2)) on oneDNN: output against
    float64 NumPy and the matrix product + pixel shuffle, gradients against that path's own."""
    ms.set_context(mode=mode)
    rng = np.random.default_rng(12)
    x_np = rng.normal(size=(3, 5, 7, 24)).astype(np.float32)
    res = []
    for fn in (deconv_relu, deconv_relu_native):
        net = _ConvNet(fn, 16, 24, 2, seed=6, transposed=True)  # weight (in 24, out 16, 2, 2)
        grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                    has_aux=True)
        (_, y), (dx, (dw, db)) = grad_fn(ms.Tensor(x_np))
        res.append([t.asnumpy() for t in (y, dx, dw, db)])
    assert deconv_relu.kernel is not None
    w, b = net.weight.asnumpy().astype(np.float64), net.bias.asnumpy()
    want = np.einsum('nhwc,coij->nhiwjo', x_np.astype(np.float64), w).reshape(3, 10, 14, 16) + b
    want = np.maximum(want, 0)
    assert (want == 0).mean() > 0.2
    assert res[0][0].shape == want.shape and _rel(res[0][0], want) < 1e-5
    for a, b in zip(*res):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5


class _CrpeNet(DwNet):
    """q * depthwise(v) from qkv; loss as in DwNet."""

    def __init__(self, groups, fn, hw):
        super().__init__(groups, fn, seed=5)
        self.hw = hw

    def construct(self, qkv):
        y = self.fn(qkv, self.hw[0], self.hw[1], tuple(self.ws), tuple(self.bs))
        return (y * y).sum(), y


class _WithAttention(nn.Cell):
    """fn(qkv, h, w, weights, biases, heads) with the head count fixed."""

    def __init__(self, fn, heads):
        super().__init__()
        self.fn = fn
        self.heads = heads

    def construct(self, qkv, h, w, weights, biases):
        return self.fn(qkv, h, w, weights, biases, self.heads)


def _attention_crpe_native(qkv, h, w, weights, biases, heads):
    return factor_attention_native(qkv, conv_rel_pos_enc_native(qkv, h, w, weights, biases),
                                   heads)


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
# the last: runs of eight channels that straddle groups, a partial run, rows wide enough for
# the kernels' four-pixel blocks at every window size
@pytest.mark.parametrize('case', [(2, 5, 7, [(8, 3), (12, 5), (12, 7)], 8), (1, 4, 4, [(6, 3)], 2),
                                  (1, 9, 17, [(7, 3), (7, 5), (7, 7)], 3)],
                         ids=['3groups', '1group', 'wide'])
def test_conv_rel_pos_enc_matches_native(case, mode):
    """The relative position encoding read straight from qkv (no split, product fused) against
    split + depthwise + multiply: output, d qkv (q and v parts; k gets none) and every kernel and
    bias gradient. Then the same with the attention on top, whose fused backward adds both
    gradients of qkv in one kernel, against the two native references."""
    ms.set_context(mode=mode)
    b, h, w, groups, heads = case
    c = sum(ch for ch, _ in groups)
    qkv = ms.Tensor(np.random.default_rng(6).normal(size=(b, 1 + h * w, 3 * c)).astype(np.float32))
    pairs = [(conv_rel_pos_enc, conv_rel_pos_enc_native),
             (_WithAttention(factor_attention_crpe, heads),
              _WithAttention(_attention_crpe_native, heads))]
    for pair in pairs:
        res = []
        for fn in pair:
            net = _CrpeNet(groups, fn, (h, w))
            grad_fn = ms.value_and_grad(net, grad_position=0, weights=net.trainable_params(),
                                        has_aux=True)
            (_, y), (dqkv, dparams) = grad_fn(qkv)
            res.append([y.asnumpy(), dqkv.asnumpy()] + [g.asnumpy() for g in dparams])
        for got, ref in zip(*res):
            assert got.shape == ref.shape
            assert _rel(got, ref) < 1e-5
        if pair[0] is conv_rel_pos_enc:
            assert np.all(res[0][0][:, 0] == 0)  # class token
    assert conv_rel_pos_enc.kernel is not None and factor_attention_crpe.kernel is not None


class _CrossScaleNet(nn.Cell):
    def __init__(self, fn, sizes):
        super().__init__()
        self.fn = fn
        self.sizes = sizes

    def construct(self, x, a, b):
        s, sa, sb = self.sizes
        y = self.fn(x, s, a, sa, b, sb)
        return (y * y).sum(), y


# (grid of x, grid of a, grid of b): CoaT's x2/x4 up and down, non-square, odd and uneven ratios
SCALE_CASES = [((8, 8), (4, 4), (2, 2)), ((4, 4), (2, 2), (8, 8)), ((2, 2), (4, 4), (8, 8)),
               ((6, 4), (3, 2), (12, 8)), ((5, 7), (3, 2), (9, 11))]


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
@pytest.mark.parametrize('sizes', SCALE_CASES, ids=lambda s: 'x'.join(map(str, s[0])) + '_from_' +
                         '_'.join('x'.join(map(str, g)) for g in s[1:]))
def test_cross_scale_sum_matches_native(sizes, mode):
    """The token-layout resize-and-sum kernel against split/transpose/interpolate/concat: output
    and the gradients wrt all three inputs (the backward is the resize's adjoint)."""
    ms.set_context(mode=mode)
    rng = np.random.default_rng(11)
    x, a, b = (ms.Tensor(rng.normal(size=(3, 1 + h * w, 20)).astype(np.float32))
               for h, w in sizes)
    res = []
    for fn in (cross_scale_sum, cross_scale_sum_native):
        grad_fn = ms.value_and_grad(_CrossScaleNet(fn, sizes), grad_position=(0, 1, 2),
                                    has_aux=True)
        (_, y), grads = grad_fn(x, a, b)
        res.append([y.asnumpy()] + [g.asnumpy() for g in grads])
    assert cross_scale_sum.kernel is not None
    for got, ref in zip(*res):
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-5


def test_concurrent_builds_are_safe(tmp_path):
    """Two processes building into one empty cache at once (e.g. two msrun workers) both end up
    with the same complete library, and no temporary file is left behind."""
    code = ('import sys; from mindcoat.ops.build import build; lib = build("depthwise.cc"); '
            'import ctypes; ctypes.CDLL(lib).DwFwd; print(lib)')
    env = dict(os.environ, MINDCOAT_CACHE=str(tmp_path / 'cache'),
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1000:] for _, err in outs]
    libs = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(libs) == 1
    lib = os.path.basename(libs.pop())
    assert sorted(os.listdir(tmp_path / 'cache')) == [lib, 'trusted.json']


def _run_child(args, env_updates, timeout=300):
    env = {k: v for k, v in os.environ.items()
           if k not in ('OMP_NUM_THREADS', 'MINDCOAT_NUM_THREADS')}
    env.update(env_updates, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.parametrize('omp,expected', [(None, str(len(os.sched_getaffinity(0)))), ('3', '3')],
                         ids=['default', 'omp_num_threads'])
def test_kernel_threads_follow_the_user_not_mindspore(omp, expected):
    """MindSpore sets OMP_NUM_THREADS to half the cores (1 on 2) in its C environment unless the
    user did; the kernels' thread count (MINDCOAT_NUM_THREADS, read in C) must come from the
    user's setting or the CPUs the process may use."""
    code = ('import ctypes, os, mindspore; import mindcoat.ops; libc = ctypes.CDLL(None); '
            'libc.getenv.restype = ctypes.c_char_p; '
            'print(libc.getenv(b"MINDCOAT_NUM_THREADS").decode())')
    out = _run_child(['-c', code], {} if omp is None else {'OMP_NUM_THREADS': omp})
    assert out.split()[-1] == expected


def test_kernels_give_the_same_numbers_on_any_thread_count(tmp_path):
    """Every compiled kernel, forward and backward, on one thread and on three (the thread pool
    splits the work differently): identical results. oneDNN's GEMM and convolution may order
    their sums by thread count, so the linear layers and the convolution are held to float32
    rounding instead."""
    runs = []
    for threads in ('1', '3'):
        path = tmp_path / f'{threads}.npz'
        _run_child([os.path.join(REPO, 'tests', 'kernel_outputs.py'), str(path)],
                   {'MINDCOAT_NUM_THREADS': threads})
        runs.append(np.load(path))
    one, three = runs
    assert sorted(one.files) == sorted(three.files) and len(one.files) > 20
    for name in one.files:
        if name.startswith(('linear', 'conv2d')):
            assert _rel(three[name], one[name]) < 1e-6, name
        else:
            assert np.array_equal(three[name], one[name]), name


def test_linear_gradients_agree_on_both_weight_layouts(tmp_path):
    """Where oneDNN runs AVX-512, the input gradient of 2048 rows or more reads W from a
    transposed copy; held to AVX2 (ONEDNN_MAX_CPU_ISA), it reads W as stored. Every kernel's
    outputs and gradients in both runs: the linear layers' (fc1 + GELU + fc2 included, 2080 rows;
    and 507 rows, stored either way) within float32 rounding, the rest identical. On a CPU without
    AVX-512 both runs take the stored layout."""
    runs = []
    for isa in (None, 'AVX2'):
        path = tmp_path / f'{isa}.npz'
        _run_child([os.path.join(REPO, 'tests', 'kernel_outputs.py'), str(path)],
                   {} if isa is None else {'ONEDNN_MAX_CPU_ISA': isa})
        runs.append(np.load(path))
    default, avx2 = runs
    assert sorted(default.files) == sorted(avx2.files)
    assert {'linear_grad0', 'linear_mlp_grad0', 'linear_mlp_grad3',
            'linear_few_rows_grad0'} <= set(default.files)
    for name in default.files:
        if name.startswith(('linear', 'conv2d')):
            assert _rel(avx2[name], default[name]) < 1e-5, name
        else:
            assert np.array_equal(avx2[name], default[name]), name


class _Residual(nn.Cell):
    def construct(self, x, weight, bias, residual):
        return linear_residual(x, weight, bias, residual)


def test_a_broadcast_residual_goes_native_instead_of_failing_the_kernel():
    """The fused kernel adds a residual shaped like the output; a broadcastable one (allowed by
    the native add) takes the native path, in graph mode, with the same numbers."""
    rng = np.random.default_rng(13)
    x = ms.Tensor(rng.normal(size=(2, 5, 8)).astype(np.float32))
    weight = ms.Tensor(rng.normal(size=(6, 8)).astype(np.float32))
    bias = ms.Tensor(rng.normal(size=(6,)).astype(np.float32))
    residual = ms.Tensor(rng.normal(size=(1, 1, 6)).astype(np.float32))
    y = _Residual()(x, weight, bias, residual).asnumpy()
    assert linear_residual.kernel is not None
    assert _rel(y, residual.asnumpy() + linear_native(x, weight, bias).asnumpy()) < 1e-6


@pytest.mark.parametrize('mode', [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=['graph', 'pynative'])
def test_shapes_a_kernel_cannot_take_fail_at_shape_inference(mode):
    """A kernel refusing its inputs at run time would fail the graph with a bare status; the
    Custom ops' shape inference says what is wrong instead, before anything runs."""
    ms.set_context(mode=mode)
    kernel = linear.kernel
    assert kernel is not None
    x = ms.Tensor(np.ones((4, 8), np.float32))
    with pytest.raises((ValueError, RuntimeError), match='mindcoat kernel: linear: x .* not fit'):
        kernel(x, ms.Tensor(np.ones((6, 8), np.float32)),
               ms.Tensor(np.ones((5,), np.float32))).asnumpy()
    with pytest.raises((ValueError, RuntimeError), match='kernels cover 6 channels, the input has'):
        depthwise_nhwc.kernel(ms.Tensor(np.ones((1, 3, 3, 8), np.float32)),
                              (ms.Tensor(np.ones((6, 1, 3, 3), np.float32)),),
                              (ms.Tensor(np.ones((6,), np.float32)),)).asnumpy()
