"""Float32 islands under amp O2/O3 on MindSpore's native operators (the Ascend/GPU path), as
PyTorch's autocast keeps layer_norm and softmax in float32: MindSpore's O2 keeps only its own
nn.LayerNorm/BatchNorm there and O3 nothing, and mindcoat's LayerNorm and the factorized
attention's softmax over tokens are its own. Amp runs real float16 on the CPU."""
import glob
import os
import re

import mindspore as ms
import numpy as np
import pytest

from mindcoat import create_model
from mindcoat.models.layers import LayerNorm, Linear
from mindcoat.ops import attention
from mindcoat.ops.dispatch import native_ops

# one block per stage and one parallel block: 21 LayerNorms and 7 softmaxes over tokens (4 serial
# attentions, 3 in the parallel block) per forward
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1), parallel_depth=1,
            num_classes=10)
SOFTMAXES = 4 + 3
# max |amp logits - float32 logits| / max |float32 logits| on this model and input: measured 0.37%
# (graph O2) and 0.21% (PyNative O2 and O3); the bound leaves room for other seeds and builds
REL_TOL = 0.02


def _model():
    """coat_tiny shrunk, with weights large enough to give logits of order 1."""
    model = create_model('coat_tiny', **TINY)
    rng = np.random.default_rng(1)
    for p in model.get_parameters():
        value = rng.standard_normal(p.shape) * (0.3 if len(p.shape) > 1 else 0.1)
        if 'norm' in p.name and p.name.endswith('weight'):
            value += 1.0
        p.set_data(ms.Tensor(value.astype(np.float32)))
    model.set_train(False)
    return model


def _input():
    return ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))


def _norms(model):
    return [cell for _, cell in model.cells_and_names() if isinstance(cell, LayerNorm)]


def _close_to_float32(out, ref):
    assert out.dtype == ms.float32  # amp's output cast
    err = np.abs(out.asnumpy() - ref).max() / np.abs(ref).max()
    assert 0 < err <= REL_TOL  # 0 would mean float16 never ran


def _ir_ops(folder):
    """{primitive: [dtype of its first input, per call]} from the frontend graph MindSpore dumped
    after type inference and optimisation (the 'validate' pass)."""
    (path,) = glob.glob(os.path.join(folder, '*validate*.ir'))
    found = {}
    lines = open(path).read().splitlines()
    for line, types in zip(lines, lines[1:]):
        m = re.search(r'= PrimFunc_(\w+)\(', line)
        t = re.match(r'\s*: \(<Tensor\[(\w+)\]', types)
        if m and t:
            found.setdefault(m.group(1), []).append(t.group(1))
    return found


def test_o2_graph_runs_layernorm_and_softmax_in_float32(tmp_path, monkeypatch):
    """The compiled O2 graph, read from MindSpore's own IR dump: every LayerNorm and Softmax
    takes float32, every MatMul float16; the logits stay close to float32's."""
    with native_ops():
        model = _model()
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ref = model(_input()).asnumpy()
        amp = ms.amp.auto_mixed_precision(model, 'O2')
        ms.set_context(mode=ms.GRAPH_MODE, save_graphs=1, save_graphs_path=str(tmp_path / 'ir'))
        monkeypatch.setenv('MS_DEV_DUMP_IR_PASSES', 'validate')
        try:
            out = amp(_input())
        finally:
            ms.set_context(save_graphs=0)
    graph = _ir_ops(str(tmp_path / 'ir'))
    norms = _norms(model)
    assert graph['LayerNorm'] == ['Float32'] * len(norms)
    assert graph['Softmax'] == ['Float32'] * SOFTMAXES
    assert set(graph['MatMul']) == {'Float16'}  # O2 is really on
    _close_to_float32(out, ref)
    # how: the islands' cells (and the operator cells inside) carry amp's float32 flag
    assert {n.mixed_precision_type.name for n in norms} == {'FP32'}
    assert {n.norm.mixed_precision_type.name for n in norms} == {'FP32'}
    assert model.head.mixed_precision_type.name == 'FP16'


@pytest.mark.parametrize('level', ['O2', 'O3'])
def test_pynative_amp_keeps_the_islands_in_float32(level):
    """PyNative casts each op's inputs to the precision of the cell it runs in: hooks see the
    LayerNorm and softmax operators return float32, the LayerNorm cells hand float16 on (as amp
    does for nn.LayerNorm) and the linear layers return float16."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    with native_ops():
        model = _model()
        ref = model(_input()).asnumpy()
        amp = ms.amp.auto_mixed_precision(model, level)
        seen = {'op': [], 'norm': [], 'softmax': [], 'linear': []}

        def record(kind):
            return lambda cell, inputs, output: seen[kind].append(output.dtype)

        hooks = [attention._softmax_float32.register_forward_hook(record('softmax'))]
        for norm in _norms(model):
            hooks.append(norm.norm.register_forward_hook(record('op')))
            hooks.append(norm.register_forward_hook(record('norm')))
        hooks += [cell.register_forward_hook(record('linear'))
                  for _, cell in model.cells_and_names() if isinstance(cell, Linear)]
        try:
            out = amp(_input())
        finally:
            for hook in hooks:
                hook.remove()
    norms = len(_norms(model))
    assert seen['op'] == [ms.float32] * norms
    assert seen['softmax'] == [ms.float32] * SOFTMAXES
    assert seen['norm'] == [ms.float16] * norms
    assert seen['linear'] and set(seen['linear']) == {ms.float16}
    _close_to_float32(out, ref)
