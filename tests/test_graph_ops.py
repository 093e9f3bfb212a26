"""tools/count_graph_ops.py's counter on the IR MindSpore 2.10 really saves: a hand-built Dense +
ReLU network must count exactly its three forward ops, and its train step the gradient ops that
autodiff must add, found only after the optimizer passes."""
import os
import subprocess
import sys

import pytest
from train_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = '''
import sys
import numpy as np
import mindspore as ms
from mindspore import nn, Tensor
ms.set_device('CPU')
ms.set_context(mode=ms.GRAPH_MODE)
net = nn.SequentialCell(nn.Dense(4, 3), nn.ReLU())
x = Tensor(np.ones((2, 4), np.float32))
ms.set_context(save_graphs=1, save_graphs_path=sys.argv[1] + '/infer')
net.set_train(False)
net.compile(x)
ms.set_context(save_graphs_path=sys.argv[1] + '/train')
step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.1))
step.set_train(True)
step.compile(x, Tensor(np.zeros((2, 3), np.float32)))
'''


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """(tool, {'infer'|'train': {stage: Counter}}): both graphs compiled in one process."""
    tool = load_script('tools/count_graph_ops.py')
    tmp_path = tmp_path_factory.mktemp('graph_ops')
    script = tmp_path / 'tiny_net.py'  # graph mode needs the source in a file
    script.write_text(SCRIPT)
    env = dict(os.environ, GLOG_v='3', MS_DEV_DUMP_IR_PASSES=tool.DUMP_PASSES)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / 'ir')], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return tool, {mode: tool.stage_counts(str(tmp_path / 'ir' / mode))
                  for mode in ('infer', 'train')}


def _compute(tool, counts):
    return {op: n for op, n in counts.items() if op not in tool.BOOKKEEPING}


def test_forward_graph_counts_exactly_dense_and_relu(saved):
    tool, graphs = saved
    stages = graphs['infer']
    assert _compute(tool, stages['final']) == {'MatMul': 1, 'BiasAdd': 1, 'ReLU': 1}
    assert tool.totals(stages['final'])['compute'] == 3
    assert tool.totals(stages['final'])['all'] > 3  # Return, Load of the weights


def test_train_graph_has_the_backward_only_after_optimisation(saved):
    tool, graphs = saved
    stages = graphs['train']
    final, before = stages['final'], stages['before']
    # the weight's gradient is a second MatMul; no input gradient is asked for
    assert (final['MatMul'], final['ReluGrad'], final['BiasAddGrad']) == (2, 1, 1)
    assert final['J'] == 0
    assert before['J'] >= 1 and before['ReluGrad'] == 0 and before['MatMul'] == 1
