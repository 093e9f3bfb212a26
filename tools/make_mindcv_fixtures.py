"""Dev-only: writes tests/fixtures/mindcv/, what MindCV 0.3.0 itself computes for the optimizer,
scheduler, EMA and weight-decay-filter settings of its CoaT recipes, so that
tests/test_optim_mindcv.py compares mindcoat against the real tool without MindCV installed.

    /tmp/mindcv/bin/python tools/make_mindcv_fixtures.py      # a venv with mindcv==0.3.0

Files:
- lion.npz: mindcv.optim.Lion (its own class, dynamic lr list) on three small parameters, two
  with weight decay and one without, for 10 steps with the given gradients and lrs: the
  initial values, the gradients, the lrs and the parameters and moments after every step.
- schedules.npz + schedules.json: mindcv.scheduler.create_scheduler's per-step lr list for each
  case in schedules.json (the four CoaT YAMLs' settings with 3 steps per epoch, and the
  step/multi-step/exponential/polynomial/stair/cycle/one-cycle/cyclic cases).
- ema.npz: mindcv.utils.train_step.TrainStep(ema=True, ema_decay=0.9995) training a small Dense
  layer: the weights and the EMA weights after each step and the update counter, from a fresh
  counter and from a counter preset to 2500.
- filters.json: for MindCV's coat_lite_tiny and coat_tiny, the names of the parameters that
  mindcv.optim.create_optimizer(opt='lion') decays under each weight_decay_filter.
"""
import json
import os

import numpy as np

import mindspore as ms
from mindspore import nn, Parameter, Tensor

import mindcv
from mindcv.models import create_model
from mindcv.optim import create_optimizer
from mindcv.optim.lion import Lion
from mindcv.scheduler import create_scheduler
from mindcv.utils.train_step import TrainStep

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures',
                   'mindcv')
STEPS_PER_EPOCH = 3

# the scheduler settings of MindCV's configs/coat/*_ascend.yaml (other keys at MindCV's
# config.py defaults: warmup_factor 0, decay_rate 0.9, num_cycles 1, cycle_decay 1, no stair)
MINDCV_DEFAULTS = dict(scheduler='cosine_decay', lr=0.001, min_lr=1e-6, warmup_epochs=3,
                       warmup_factor=0.0, decay_epochs=100, decay_rate=0.9,
                       multi_step_decay_milestones=[30, 60, 90], epoch_size=200, num_cycles=1,
                       cycle_decay=1.0, lr_epoch_stair=False)
YAMLS = {
    'coat_lite_tiny': dict(lr=0.0008, min_lr=5e-6, warmup_epochs=20, decay_epochs=280,
                           epoch_size=900, num_cycles=3, cycle_decay=1.0),
    'coat_lite_mini': dict(lr=0.0017, min_lr=5e-6, warmup_epochs=20, decay_epochs=280,
                           epoch_size=1200, num_cycles=4, cycle_decay=1.0),
    'coat_tiny': dict(lr=0.00025, min_lr=1e-6, warmup_epochs=20, decay_epochs=280,
                      epoch_size=300),
    'coat_mini': dict(lr=0.00025, min_lr=1e-6, warmup_epochs=20, decay_epochs=280,
                      epoch_size=300),
}
OTHER_CASES = {
    'cosine_cycles_decay_truncated': dict(lr=0.01, min_lr=1e-4, warmup_epochs=2,
                                          warmup_factor=0.1, decay_epochs=4, epoch_size=13,
                                          num_cycles=3, cycle_decay=0.5),
    'cosine_stair': dict(lr=0.01, min_lr=1e-4, warmup_epochs=3, warmup_factor=0.01,
                         decay_epochs=5, epoch_size=12, num_cycles=2, cycle_decay=0.7,
                         lr_epoch_stair=True),
    'warmup_cosine_decay': dict(scheduler='warmup_cosine_decay', lr=0.002, warmup_epochs=1,
                                decay_epochs=6, epoch_size=8),
    'cosine_no_warmup': dict(lr=0.002, min_lr=0.0, warmup_epochs=0, decay_epochs=7,
                             epoch_size=7),
    'constant': dict(scheduler='constant', lr=0.003, warmup_epochs=2, epoch_size=6),
    'step_decay': dict(scheduler='step_decay', lr=0.1, warmup_epochs=1, decay_epochs=2,
                       decay_rate=0.5, epoch_size=9),
    'multi_step_decay': dict(scheduler='multi_step_decay', lr=0.1, warmup_epochs=2,
                             decay_rate=0.3, multi_step_decay_milestones=[5, 2, 7],
                             epoch_size=12),
    'exponential_decay': dict(scheduler='exponential_decay', lr=0.1, warmup_epochs=1,
                              decay_rate=0.8, epoch_size=7),
    'exponential_decay_stair': dict(scheduler='exponential_decay', lr=0.1, warmup_epochs=2,
                                    warmup_factor=0.05, decay_rate=0.8, epoch_size=7,
                                    lr_epoch_stair=True),
    'polynomial_decay': dict(scheduler='polynomial_decay', lr=0.1, warmup_epochs=1,
                             decay_rate=2.0, epoch_size=6),
    'polynomial_decay_stair': dict(scheduler='polynomial_decay', lr=0.1, warmup_epochs=0,
                                   decay_rate=0.5, epoch_size=5, lr_epoch_stair=True),
    'one_cycle': dict(scheduler='one_cycle', lr=0.05, min_lr=1e-5, warmup_epochs=0,
                      epoch_size=5),
    'cyclic': dict(scheduler='cyclic', lr=0.05, min_lr=1e-3, warmup_epochs=0, epoch_size=6,
                   num_cycles=2),
}


def schedules():
    arrays, cases = {}, {}
    for name, overrides in list(YAMLS.items()) + list(OTHER_CASES.items()):
        cfg = dict(MINDCV_DEFAULTS, **overrides)
        # exactly as MindCV's train.py calls it (num_batches = steps per epoch)
        lrs = create_scheduler(
            STEPS_PER_EPOCH, scheduler=cfg['scheduler'], lr=cfg['lr'], min_lr=cfg['min_lr'],
            warmup_epochs=cfg['warmup_epochs'], warmup_factor=cfg['warmup_factor'],
            decay_epochs=cfg['decay_epochs'], decay_rate=cfg['decay_rate'],
            milestones=cfg['multi_step_decay_milestones'], num_epochs=cfg['epoch_size'],
            num_cycles=cfg['num_cycles'], cycle_decay=cfg['cycle_decay'],
            lr_epoch_stair=cfg['lr_epoch_stair'])
        assert all(isinstance(v, float) for v in lrs), name  # Python floats: float64
        arrays[name] = np.asarray(lrs, np.float64)
        cases[name] = dict(cfg, steps_per_epoch=STEPS_PER_EPOCH)
    np.savez_compressed(os.path.join(OUT, 'schedules.npz'), **arrays)
    with open(os.path.join(OUT, 'schedules.json'), 'w') as f:
        json.dump({'mindcv': mindcv.__version__, 'cases': cases}, f, indent=1, sort_keys=True)


def lion():
    rng = np.random.default_rng(0)
    init = {'w': rng.normal(size=(3, 4)), 'v': rng.normal(size=(2, 5)), 'b': rng.normal(size=4)}
    init = {k: v.astype(np.float32) for k, v in init.items()}
    params = {k: Parameter(Tensor(v), name=k) for k, v in init.items()}
    steps = 10
    lrs = [float(x) for x in np.linspace(3e-2, 3e-3, steps)]
    grads = {k: rng.normal(size=(steps,) + v.shape).astype(np.float32) for k, v in init.items()}
    grads['w'][0, 0, 0] = 0.0  # sign(0) = 0: no step for that element at step 1
    groups = [{'params': [params['w'], params['v']], 'weight_decay': 0.15},
              {'params': [params['b']], 'weight_decay': 0.0},
              {'order_params': [params['w'], params['v'], params['b']]}]
    opt = Lion(groups, learning_rate=lrs)
    order = [p.name for p in opt.parameters]
    out = {f'init_{k}': v for k, v in init.items()}
    out.update({f'grad_{k}': v for k, v in grads.items()})
    out['lrs'] = np.asarray(lrs, np.float64)
    history = {k: [] for k in list(init) + [f'm_{k}' for k in init]}
    for t in range(steps):
        opt(tuple(Tensor(grads[name][t]) for name in order))
        for name, p, m in zip(order, opt.parameters, opt.moments1):
            history[name].append(p.asnumpy().copy())
            history[f'm_{name}'].append(m.asnumpy().copy())
    out.update({f'after_{k}': np.stack(v) for k, v in history.items()})
    out['weight_decay'] = np.asarray([0.15, 0.15, 0.0])
    out['names'] = np.asarray(order)
    np.savez_compressed(os.path.join(OUT, 'lion.npz'), **out)


def ema_run(preset_updates, steps=8):
    ms.set_seed(0)
    rng = np.random.default_rng(1)
    net = nn.Dense(4, 3)
    net_with_loss = nn.WithLossCell(net, nn.MSELoss())
    opt = nn.SGD(net.trainable_params(), learning_rate=0.5)
    step = TrainStep(net_with_loss, opt, scale_sense=Tensor(1.0, ms.float32), ema=True,
                     ema_decay=0.9995).set_train()
    step.updates.set_data(Tensor(float(preset_updates), ms.float32))
    names = [p.name for p in step.weights_all]
    out = {f'init_{n}': p.asnumpy().copy() for n, p in zip(names, step.weights_all)}
    weights, emas, updates = {n: [] for n in names}, {n: [] for n in names}, []
    for _ in range(steps):
        x = Tensor(rng.normal(size=(5, 4)).astype(np.float32))
        y = Tensor(rng.normal(size=(5, 3)).astype(np.float32))
        step(x, y)
        for n, p, e in zip(names, step.weights_all, step.ema_weight):
            weights[n].append(p.asnumpy().copy())
            emas[n].append(e.asnumpy().copy())
        updates.append(float(step.updates.asnumpy()))
    out.update({f'weights_{n}': np.stack(v) for n, v in weights.items()})
    out.update({f'ema_{n}': np.stack(v) for n, v in emas.items()})
    out['updates'] = np.asarray(updates)
    out['names'] = np.asarray(names)
    out['preset_updates'] = np.asarray(float(preset_updates))
    out['ema_decay'] = np.asarray(0.9995)
    return out


def ema():
    runs = {'fresh': ema_run(0), 'preset': ema_run(2500)}
    flat = {f'{run}/{k}': v for run, values in runs.items() for k, v in values.items()}
    np.savez_compressed(os.path.join(OUT, 'ema.npz'), **flat)


def filters():
    out = {'mindcv': mindcv.__version__}
    for model_name in ('coat_lite_tiny', 'coat_tiny'):
        model = create_model(model_name)
        entry = {'all': [p.name for p in model.trainable_params()]}
        for name in ('disable', 'auto', 'norm_and_bias'):
            opt = create_optimizer(model, opt='lion', lr=1e-3, weight_decay=0.15,
                                   weight_decay_filter=name)
            flags = opt.decay_flags
            decaying = [p.name for p, flag in zip(opt.parameters, flags) if flag]
            if name == 'auto':  # one weight decay for all; the flags are the name filter
                assert float(opt.weight_decay.asnumpy()) == np.float32(0.15)
            else:
                wds = [float(w.asnumpy()) for w in opt.weight_decay]
                assert all((w > 0) == f for w, f in zip(wds, flags))
            entry[name] = decaying
        out[model_name] = entry
    with open(os.path.join(OUT, 'filters.json'), 'w') as f:
        json.dump(out, f, indent=0)


def main():
    ms.set_device('CPU')
    os.makedirs(OUT, exist_ok=True)
    schedules()
    lion()
    ema()
    filters()
    print('wrote', sorted(os.listdir(OUT)))


if __name__ == '__main__':
    main()
