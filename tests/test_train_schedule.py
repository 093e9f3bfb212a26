"""The LR schedules (the official per-epoch sequence against timm 0.3.2's values, the per-step
cosine), the AdamW cell against the PyTorch AdamW update rule and the gradient clipping against
torch.nn.utils.clip_grad_norm_'s."""
import glob
import json
import math
import os

import mindspore as ms
import numpy as np
import pytest

from mindcoat.config import parse_config
from mindcoat.ops.dispatch import native_ops
from mindcoat.optim import AdamW, ClipGradNorm, EMA, create_lr_schedule, lr_schedule_for, scaled_lr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL = os.path.join(REPO, 'tests', 'fixtures', 'lr', 'official_recipes.json')


def test_warmup_then_cosine_per_step():
    steps, epochs = 10, 20
    lrs = create_lr_schedule('cosine_decay', lr=1e-3, steps_per_epoch=steps, epochs=epochs,
                             min_lr=1e-5, warmup_epochs=2, warmup_lr=1e-6)
    assert len(lrs) == steps * epochs
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 10 / 20)  # per step, mid-warmup
    assert lrs[20] == pytest.approx(1e-3)                             # peak right after warmup
    for s in (20, 57, 110, 199):
        t = (s - 20) / 180
        assert lrs[s] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t)))
    assert np.all(np.diff(lrs[:21]) > 0) and np.all(np.diff(lrs[20:]) < 0)
    assert 1e-5 < lrs[-1] < 1.01e-5


def test_cooldown_constant_and_scaling():
    lrs = create_lr_schedule('cosine_decay', lr=1e-3, steps_per_epoch=4, epochs=10, min_lr=1e-5,
                             warmup_epochs=0, cooldown_epochs=2)
    assert lrs[0] == pytest.approx(1e-3) and np.allclose(lrs[32:], 1e-5)
    assert np.allclose(create_lr_schedule('constant', lr=5e-6, steps_per_epoch=3, epochs=6), 5e-6)
    assert scaled_lr(5e-4, 8 * 256, 512) == pytest.approx(2e-3)
    assert scaled_lr(5e-4, 64, None) == 5e-4
    with pytest.raises(ValueError, match='unknown scheduler'):
        create_lr_schedule('polynomial', lr=1e-3, steps_per_epoch=1, epochs=1)


def test_warmup_starts_at_zero_unless_warmup_lr_is_given():
    """MindCV's meaning: without warmup_lr the warmup starts at warmup_factor * lr (0)."""
    lrs = create_lr_schedule('cosine_decay', lr=1e-3, steps_per_epoch=2, epochs=4, warmup_epochs=1)
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4)
    lrs = create_lr_schedule('timm_cosine', lr=1e-3, steps_per_epoch=2, epochs=4, warmup_epochs=2,
                             warmup_factor=0.1)
    assert list(lrs[:6]) == pytest.approx([1e-4, 1e-4, 1e-4, 1e-4, 5.5e-4, 5.5e-4])


def official_recipes():
    with open(OFFICIAL) as f:
        return json.load(f)


RECIPES = sorted(glob.glob(os.path.join(REPO, 'configs', 'coat', '*_ascend.yaml')))


@pytest.mark.parametrize('path', RECIPES)
def test_recipe_lr_per_epoch_equals_timm_032_as_main_py_steps_it(path):
    """Every shipped recipe, on the official 8 devices, trains each epoch at the lr that timm
    0.3.2's CosineLRScheduler gives when src/main.py steps it after every epoch (values computed
    with timm 0.3.2 by tools/make_lr_fixtures.py). The lr is constant within an epoch."""
    name = os.path.basename(path)[:-len('_ascend.yaml')]
    official = official_recipes()
    expected = official['recipes'][name]['lr_per_epoch']
    cfg = parse_config(['-c', path])
    steps = 3
    peak, lrs = lr_schedule_for(cfg, steps_per_epoch=steps, world_size=official['world_size'])
    assert peak == pytest.approx(official['recipes'][name]['scaled_lr'], rel=1e-12)
    assert len(lrs) == steps * len(expected)
    per_epoch = lrs.reshape(len(expected), steps)
    assert np.all(per_epoch == per_epoch[:, :1])
    np.testing.assert_allclose(per_epoch[:, 0], expected, rtol=1e-12, atol=0)
    if name == 'coat_lite_medium_384':  # the fine-tune rises toward the unscaled min-lr 5e-6
        assert list(per_epoch[:, 0]) == pytest.approx([2.5e-6, 2.5e-6, 2.67e-6, 3.125e-6, 3.75e-6,
                                                       4.375e-6], abs=5e-9)
    else:  # epochs 0 and 1 both run at warmup_lr: main.py steps the scheduler after the epoch
        assert per_epoch[0, 0] == per_epoch[1, 0] == 1e-6


def test_adamw_matches_the_torch_update_rule():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    b0 = rng.normal(size=(4,)).astype(np.float32)
    w, b = ms.Parameter(ms.Tensor(w0), name='w'), ms.Parameter(ms.Tensor(b0), name='b')
    opt = AdamW([w, b], [0.05, 0.0], betas=(0.9, 0.999), eps=1e-8)
    ema = EMA([w, b], 0.5)
    ref = {'w': [w0.astype(np.float64), 0, 0, 0.05], 'b': [b0.astype(np.float64), 0, 0, 0.0]}
    ema_ref = w0.astype(np.float64)
    for t, lr in enumerate([1e-2, 5e-3, 2e-3], start=1):
        grads = (rng.normal(size=(3, 4)).astype(np.float32),
                 rng.normal(size=(4,)).astype(np.float32))
        opt(tuple(ms.Tensor(g) for g in grads), ms.Tensor(lr, ms.float32))
        ema()
        for key, g in zip(('w', 'b'), grads):  # torch.optim.AdamW, written out
            p, m, v, wd = ref[key]
            p = p * (1 - lr * wd)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
            p = p - lr / (1 - 0.9 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
            ref[key] = [p, m, v, wd]
        ema_ref = 0.5 * ema_ref + 0.5 * ref['w'][0]
    np.testing.assert_allclose(w.asnumpy(), ref['w'][0], atol=1e-5)
    np.testing.assert_allclose(b.asnumpy(), ref['b'][0], atol=1e-5)
    np.testing.assert_allclose(ema.ema[0].asnumpy(), ema_ref, atol=1e-5)
    assert [p.name for p in opt.state_params()] == ['optimizer.exp_avg.w', 'optimizer.exp_avg.b',
                                                    'optimizer.exp_avg_sq.w',
                                                    'optimizer.exp_avg_sq.b', 'optimizer.step']
    assert [p.name for p in ema.ema] == ['ema.w', 'ema.b']


@pytest.mark.parametrize('max_norm', [0.5, 1e3])
def test_clipping_matches_torch_on_both_paths(max_norm):
    """torch.nn.utils.clip_grad_norm_, in float64: scale by max_norm / (norm + 1e-6) when the norm
    is over max_norm, else nothing at all. The CPU fast path (each sum of squares as a MatMul) and
    MindSpore's own ops, in graph mode as the step runs it; over a 2.4 M-element gradient too,
    where a plain float32 running sum would drift."""
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=s).astype(np.float32) * 0.01 for s in ((3, 4), (7,), (1200, 2000))]
    norm = math.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert 0.5 < norm < 1e3  # the two cases: clipped, untouched
    coef = min(max_norm / (norm + 1e-6), 1.0)
    fast = ClipGradNorm(max_norm)(tuple(ms.Tensor(g) for g in grads))
    with native_ops():
        native = ClipGradNorm(max_norm)(tuple(ms.Tensor(g) for g in grads))
    for out in (fast, native):
        for g, o in zip(grads, out):
            if coef == 1.0:
                np.testing.assert_array_equal(o.asnumpy(), g)
            else:
                np.testing.assert_allclose(o.asnumpy(), g * coef, rtol=4e-7, atol=0)
    with pytest.raises(ValueError, match='positive'):
        ClipGradNorm(0.0)
