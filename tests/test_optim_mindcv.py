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
    # MindCV's AdamW gets no eps from its config (1e-8 always); a value that was set is used
    for flags, eps in (([], 1e-8), (['--eps', '1e-6'], 1e-6)):
        cfg = parse_config(['--opt', 'adamw'] + flags)
        assert float(create_optimizer(model, cfg).eps) == pytest.approx(eps, rel=1e-6)
    for name in ('sgd', 'momentum', 'adam', 'rmsprop', 'adagrad', 'lamb', 'nadam'):
        with pytest.raises(ValueError, match=rf"opt '{name}' \(MindCV has it; not implemented "
                                             r"here\): choose one of adamw, lion"):
            create_optimizer(model, parse_config(['--opt', name]))


# ------------------------------------------------------------------------------- schedulers
SCHEDULE_CASES = load('schedules.json')['cases']


def schedule_argv(case):
    keys = ('scheduler', 'lr', 'min_lr', 'warmup_epochs', 'warmup_factor', 'decay_epochs',
            'decay_rate', 'multi_step_decay_milestones', 'epoch_size', 'num_cycles',
            'cycle_decay', 'lr_epoch_stair')
    return [arg for key in keys for arg in ('--' + key, str(case[key]))] + \
        ['--batch_size', '1', '--lr_base_batch', 'None', '--warmup_lr', 'None',
         '--cooldown_epochs', '0']


@pytest.mark.parametrize('name', sorted(SCHEDULE_CASES))
def test_schedule_equals_mindcvs_create_scheduler(name):
    """The lr of every step, from the config keys as train.py reads them, equals the list
    mindcv.scheduler.create_scheduler builds (the four CoaT YAMLs' cosine settings with their
    real epochs and 3 steps per epoch, cycles, stair, warmup_factor, step/multi-step/
    exponential/polynomial, one_cycle, cyclic). Both compute in float64."""
    case = SCHEDULE_CASES[name]
    expected = load('schedules.npz')[name]
    cfg = parse_config(schedule_argv(case))
    peak, lrs = lr_schedule_for(cfg, steps_per_epoch=case['steps_per_epoch'], world_size=8)
    assert peak == case['lr'] and lrs.dtype == np.float64
    assert lrs.shape == expected.shape == (case['steps_per_epoch'] * case['epoch_size'],)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=0)


def test_coat_lite_tiny_yaml_restarts_its_cosine_three_times_then_holds_min_lr():
    """What num_cycles means (MindCV's coat_lite_tiny: 20 warmup epochs, 3 x 280 cosine
    epochs, 40 epochs at min_lr): the peak recurs at the start of each cycle."""
    lrs = load('schedules.npz')['coat_lite_tiny'].reshape(900, 3)[:, 0]
    assert lrs[0] == 0.0 and lrs[20] == lrs[300] == lrs[580] == 0.0008
    assert np.all(lrs[860:] == 5e-6) and lrs[859] > 5e-6
    ours = create_lr_schedule('cosine_decay', lr=0.0008, min_lr=5e-6, steps_per_epoch=3,
                              epochs=900, warmup_epochs=20, decay_epochs=280, num_cycles=3)
    np.testing.assert_allclose(ours[::3], lrs, rtol=1e-12, atol=0)


def test_bad_scheduler_settings_are_one_line_errors():
    for kwargs, message in (
            (dict(scheduler='one_cycle', warmup_epochs=1), 'takes no warmup_epochs'),
            (dict(scheduler='cyclic', lr_epoch_stair=True), 'takes no warmup_epochs'),
            (dict(scheduler='one_cycle', min_lr=0.0), 'needs min_lr above 0'),
            (dict(scheduler='cosine_decay', num_cycles=0), 'num_cycles must be at least 1'),
            (dict(scheduler='polynomial'), "unknown scheduler 'polynomial'")):
        args = dict(lr=0.1, steps_per_epoch=2, epochs=10, min_lr=1e-3)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            create_lr_schedule(args.pop('scheduler'), **args)


# ---------------------------------------------------------------------------------- the EMA
@pytest.mark.parametrize('run', ['fresh', 'preset'])
def test_ema_ramp_equals_mindcvs_train_step(run):
    """MindCV's TrainStep(ema=True, ema_decay=0.9995) trained a Dense layer for 8 steps (from a
    fresh counter, and from one preset to 2500); fed the same weights, our EMA with the ramp
    gives its EMA weights and counter; without the ramp (timm's) it would not."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ref = load('ema.npz')
    names = [str(n) for n in ref[f'{run}/names']]
    params = [ms.Parameter(ms.Tensor(ref[f'{run}/init_{n}']), name=n) for n in names]
    ema = EMA(params, float(ref[f'{run}/ema_decay']), warmup=True)
    plain = EMA(params, float(ref[f'{run}/ema_decay']), warmup=False)
    ema.updates.set_data(ms.Tensor(float(ref[f'{run}/preset_updates']), ms.float32))
    for t, count in enumerate(ref[f'{run}/updates']):
        for n, p in zip(names, params):
            p.set_data(ms.Tensor(ref[f'{run}/weights_{n}'][t]))
        ema()
        plain()
        assert float(ema.updates.asnumpy()) == count
        for n, e in zip(names, ema.ema):
            np.testing.assert_allclose(e.asnumpy(), ref[f'{run}/ema_{n}'][t], rtol=0, atol=1e-7,
                                       err_msg=f'{n} after update {count}')
    gap = max(np.abs(p.asnumpy() - ref[f'{run}/ema_{n}'][-1]).max()
              for n, p in zip(names, plain.ema))
    assert gap > 1e-3  # the ramp changes the result: the comparison above can fail


def _dense_step(warmup):
    from mindspore import nn
    from mindcoat.engine.train_step import TrainStep, create_loss_scaler
    from mindcoat.optim import AdamW
    ms.set_seed(0)
    net = nn.Dense(4, 3)
    opt = AdamW(net.trainable_params(), [0.0, 0.0])
    ema = EMA(net.trainable_params(), 0.9, warmup=warmup)
    step = TrainStep(net, opt, ema, loss_scaler=create_loss_scaler('dynamic', 1024.0),
                     drop_overflow_update=True)
    step.set_lr_schedule([1e-2])
    return net, step, ema


def test_mindcv_ema_skips_dropped_steps_and_timm_ema_does_not():
    """MindCV runs ema_update only when the loss scaler applied the update, so a dropped
    (overflowing) step moves neither the EMA nor its counter; timm's ModelEma in the official
    loop updates after every step."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.ones((2, 4), np.float32)
    y = ms.Tensor(np.eye(3, dtype=np.float32)[[0, 2]])
    for warmup, counts in ((True, [1.0, 1.0, 2.0]), (False, [1.0, 2.0, 3.0])):
        net, step, ema = _dense_step(warmup)
        seen = []
        for images in (x, np.full_like(x, np.inf), x):  # the second step overflows
            before = [e.asnumpy().copy() for e in ema.ema]
            _, finite = step(ms.Tensor(images), y)
            seen.append(float(ema.updates.asnumpy()))
            moved = any(np.any(b != e.asnumpy()) for b, e in zip(before, ema.ema))
            if not bool(finite):
                assert moved == (not warmup)
        assert seen == counts


# ------------------------------------------------------------------ weight_decay_filter
_SPLIT_QKV = re.compile(r'^(.*factoratt_crpe\d?)\.[qkv]\.(weight|bias)$')


def ours_from_mindcv(name):
    """mindcoat's name of a MindCV CoaT parameter (q/k/v fused into qkv)."""
    from mindcoat.weights.mapping import canonical_name
    return _SPLIT_QKV.sub(r'\1.qkv.\2', canonical_name(name))


@pytest.mark.parametrize('variant', ['coat_lite_tiny', 'coat_tiny'])
def test_weight_decay_filters_decay_what_mindcv_decays(variant):
    """For each weight_decay_filter, our model decays exactly the parameters that MindCV's
    create_optimizer decays in its own model of the same variant (matched by name through the
    converter's mapping; the model here is shallower, so every one of its parameters has
    MindCV counterparts)."""
    from mindcoat import create_model
    ref = load('filters.json')[variant]
    decided = {}
    for filt in ('disable', 'auto', 'norm_and_bias'):
        for name in ref['all']:
            decided.setdefault(filt, {}).setdefault(ours_from_mindcv(name), set()).add(
                name in set(ref[filt]))
    kwargs = dict(embed_dims=(8, 8, 8, 8), serial_depths=(1, 1, 1, 1), mlp_ratios=(1, 1, 1, 1))
    if variant == 'coat_tiny':
        kwargs['parallel_depth'] = 1
    model = create_model(variant, num_classes=4, **kwargs)
    params = model.trainable_params()
    for filt in ('disable', 'auto', 'norm_and_bias'):
        opt = create_optimizer(model, parse_config(['--opt', 'lion', '--weight_decay', '0.15',
                                                    '--weight_decay_filter', filt]))
        for p, flag, wd in zip(params, opt.decay_flags, opt.decays):
            mindcv = decided[filt][p.name]
            assert len(mindcv) == 1, p.name  # q, k and v agree
            assert flag == mindcv.pop(), f'{filt}: {p.name}'
            assert float(wd.asnumpy()) == pytest.approx(0.15 if flag else 0.0)
    counts = {f: len(ref[f]) for f in ('disable', 'auto', 'norm_and_bias')}
    assert counts['disable'] > counts['auto'] > counts['norm_and_bias']


def test_weight_decay_filter_rule_on_mindcv_names_and_bad_values():
    """The rule itself, applied to MindCV's own parameter names, reproduces its decisions (class
    tokens decay under norm_and_bias: MindCV's CoaT has no no_weight_decay()); a misspelt
    filter is an error (MindCV would silently apply norm_and_bias)."""
    ref = load('filters.json')['coat_tiny']
    for filt in ('disable', 'auto', 'norm_and_bias'):
        decays = mindcv_decays(ref['all'], 0.15, filt)
        assert [n for n, wd in zip(ref['all'], decays) if wd > 0] == ref[filt]
    assert 'cls_token1' in ref['norm_and_bias']
    with pytest.raises(ValueError, match="weight_decay_filter 'norm_bias': choose one of "
                                         "disable, auto, norm_and_bias"):
        mindcv_decays(ref['all'], 0.15, 'norm_bias')

    from mindcoat import create_model
    spelled = mindspore_names(create_model('coat_lite_tiny', num_classes=4,
                                           embed_dims=(8, 8, 8, 8), serial_depths=(1, 1, 1, 1)))
    assert spelled['norm4.weight'] == 'norm4.gamma' and spelled['norm4.bias'] == 'norm4.beta'
    assert spelled['head.bias'] == 'head.bias' and spelled['cls_token1'] == 'cls_token1'
