"""tools/time_kernels.py: the shapes it times are the variant's own linear layers, and it runs
the compiled kernels of two checkouts side by side."""
import json
import os
import subprocess
import sys

import pytest

import mindcoat
from train_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('model', ['coat_lite_tiny', 'coat_mini'])
def test_shapes_are_the_models_linear_layers(model):
    """(in, out) of every product the tool times, per stage, equals the (in, out) of the
    model's qkv / proj / fc1 / fc2 weights in that stage; rows are batch x (tokens + 1)."""
    tool = load_script('tools/time_kernels.py')
    net = mindcoat.create_model(model)
    want = {}
    for p in net.get_parameters():
        parts = p.name.split('.')
        stage, layer = parts[0], parts[-2] if len(parts) > 1 else ''
        if len(p.shape) == 2 and layer in ('qkv', 'proj', 'fc1', 'fc2') and \
                stage.startswith('serial_blocks'):
            rows = 2 * (1 + (224 // 2 ** (int(stage[-1]) + 1)) ** 2)
            want.setdefault('LinearFwd', set()).add((rows, p.shape[1], p.shape[0]))
            if layer == 'fc2':
                want.setdefault('LinearGradXMul', set()).add((rows, p.shape[1], p.shape[0]))
            if layer == 'proj':
                want.setdefault('LayerNormBwd', set()).add((rows, p.shape[0], p.shape[0]))
    got = {}
    for kernel, shape in tool.cases(model, 2):
        got.setdefault(kernel, set()).add(shape)
    assert got['LinearFwd'] == got['LinearGradW'] == got['LinearGradX'] == want['LinearFwd']
    assert got['LinearGradXMul'] == want['LinearGradXMul']
    assert got['LayerNormFwd'] == got['LayerNormBwd'] == want['LayerNormBwd']


def test_times_two_checkouts_side_by_side():
    """--against the same checkout: each case timed for both builds, positive, and the products'
    GFLOP/s consistent with their times."""
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'time_kernels.py'), '--model',
         'coat_lite_tiny', '--batch_size', '1', '--kernels', 'LinearGradX', 'LayerNormBwd',
         '--reps', '2', '--offset', '16', '--against', REPO, '--json'],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out['builds'] == ['this', REPO] and out['offset'] == 16
    assert {r['kernel'] for r in out['rows']} == {'LinearGradX', 'LayerNormBwd'}
    assert len(out['rows']) == 4 * 4 + 4  # 4 stages x (qkv, proj, fc1, fc2) + 4 LayerNorms
    for row in out['rows']:
        assert len(row['ms']) == 2 and min(row['ms']) > 0
        if row['kernel'] == 'LinearGradX':
            flops = 2 * row['rows'] * row['cin'] * row['cout']
            assert row['gflops'][0] == pytest.approx(flops / row['ms'][0] / 1e6)
