"""mindcoat's Lion, weight_decay_filter, schedulers and EMA against what MindCV 0.3.0 itself
computes (tests/fixtures/mindcv/, written by tools/make_mindcv_fixtures.py in a venv with
mindcv installed)."""
import json
import os
import re

import mindspore as ms
import numpy as np
import pytest

from mindcoat.config import parse_config
from mindcoat.optim import EMA, Lion, create_lr_schedule, create_optimizer, lr_schedule_for
from mindcoat.optim.factory import mindcv_decays, mindspore_names

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'mindcv')


def load(name):
    path = os.path.join(FIXTURES, name)
    if name.endswith('.json'):
        with open(path) as f:
            return json.load(f)
    return np.load(path)


# ------------------------------------------------------------------------------------- Lion
def test_lion_updates_equal_mindcvs_lion_step_by_step():
    """Ten steps of mindcv.optim.Lion (decay 0.15 on w and v, none on b; a zero gradient at
    step 1) give the same parameters and moments as ours, to float32 rounding."""
    ms.set_context(mode=ms.PYNATIVE_MODE)  # no graph compile: ~1 s instead of ~10 s
    ref = load('lion.npz')
    names = [str(n) for n in ref['names']]
    params = [ms.Parameter(ms.Tensor(ref[f'init_{n}']), name=n) for n in names]
    opt = Lion(params, list(ref['weight_decay']))
    for t, lr in enumerate(ref['lrs']):
        opt(tuple(ms.Tensor(ref[f'grad_{n}'][t]) for n in names), ms.Tensor(lr, ms.float32))
        for n, p, m in zip(names, params, opt.moment):
            np.testing.assert_allclose(p.asnumpy(), ref[f'after_{n}'][t], rtol=0, atol=2e-7,
                                       err_msg=f'{n} after step {t + 1}')
            np.testing.assert_allclose(m.asnumpy(), ref[f'after_m_{n}'][t], rtol=0, atol=2e-7)
    # the decay really acted: without it w would differ from MindCV's by ~lr * wd * w
    assert np.abs(ref['after_w'][-1] - ref['init_w']).max() > 0.05
    assert [p.name for p in opt.state_params()] == ['optimizer.lion_m.w', 'optimizer.lion_m.v',
                                                    'optimizer.lion_m.b', 'optimizer.step']


def test_opt_lion_gets_mindcvs_betas_unless_betas_is_set():
    from mindcoat import create_model
    model = create_model('coat_lite_tiny', num_classes=4, embed_dims=(8, 8, 8, 8),
                         serial_depths=(1, 1, 1, 1), mlp_ratios=(1, 1, 1, 1))
    opt = create_optimizer(model, parse_config(['--opt', 'lion']))
    assert isinstance(opt, Lion)
    assert (float(opt.beta1), float(opt.beta2)) == pytest.approx((0.9, 0.99))
    opt = create_optimizer(model, parse_config(['--opt', 'lion', '--betas', '0.95,0.98']))
    assert (float(opt.beta1), float(opt.beta2)) == pytest.approx((0.95, 0.98))
    adamw = create_optimizer(model, parse_config(['--opt', 'adamw']))
    assert float(adamw.beta2) == pytest.approx(0.999)
    for name in ('sgd', 'momentum', 'adam', 'rmsprop', 'adagrad', 'lamb', 'nadam'):
        with pytest.raises(ValueError, match=rf"opt '{name}' \(MindCV has it; not implemented "
                                             r"here\): choose one of adamw, lion"):
            create_optimizer(model, parse_config(['--opt', name]))
