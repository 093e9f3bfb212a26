"""Throughput, latency, graph compile time and peak host memory of a CoaT variant.

    python -m mindcoat.benchmark --model coat_lite_tiny --batch_size 16 --image_size 224 \\
        --mode infer|train [--config YAML] [--amp_level O0|O2|O3] [--steps 5] [--warmup 2] [--json]

Synthetic inputs (the data pipeline is not measured). ``--mode train`` times the trainer's own
compiled step (``mindcoat.engine.create_train_step``) built from a training config: the
variant's shipped recipe ``configs/coat/<model>_ascend.yaml`` unless ``--config`` names another,
so the optimizer, EMA, gradient clipping, loss scaling and the model's dropout / drop path are as
configured. As train.py does, the CPU runs float32 (amp O0, hence no loss scaler) unless
``--amp_level`` says otherwise. The first call compiles the graph: compile seconds = first call -
steady-state step. Steady state = median of ``--steps`` timed steps after ``--warmup`` untimed
ones. ``measure()`` is the reusable core (``tools/compare_speed.py`` runs this module in a
subprocess).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

from .cli import parse_model_kwargs, run
from .errors import ConfigError, MindcoatError, UsageError


def peak_rss_mb():
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if platform.system() == 'Linux' else rss / (1024.0 * 1024.0)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_steps(step, steps=5, warmup=2, pace=None):
    """Calls ``step`` once (compiles), ``warmup`` more times, then times ``steps`` calls, each
    after ``pace()`` returns if given (a peer's turn in between). Returns (first call seconds,
    [timed seconds])."""
    first = _timed(step)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(max(steps, 1)):
        if pace is not None:
            pace()
        times.append(_timed(step))
    return first, times


def pace_by_stdin():
    """Lockstep with another process: say 'PACE' on stdout, then wait for a line on stdin (the
    driver lets one system at a time take its step; tools/compare_speed.py)."""
    print('PACE', flush=True)
    if not sys.stdin.readline():
        raise MindcoatError('--paced: stdin closed before the next step')


def summarize(first, times, batch_size):
    median = statistics.median(times)
    return {'images_per_s': batch_size / median, 'ms_per_step': median * 1000.0,
            'compile_s': max(first - median, 0.0), 'first_step_s': first,
            'peak_rss_mb': peak_rss_mb(), 'steps': len(times),
            'step_times_ms': [t * 1000.0 for t in times]}


def synthetic_batch(batch_size, image_size, num_classes=1000, smoothing=0.1, seed=0):
    """Normal images and label-smoothed one-hot targets (numpy), as the trainer's batches are
    shaped: float32 (B, 3, H, W) and float32 (B, num_classes)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32)
    targets = np.full((batch_size, num_classes), smoothing / num_classes, np.float32)
    targets[np.arange(batch_size), rng.integers(0, num_classes, batch_size)] += 1.0 - smoothing
    return images, targets


def make_infer_step(net, batch_size, image_size, seed=0):
    """A zero-argument callable: one forward pass of any MindSpore classifier Cell (also MindCV's)
    on synthetic images, waiting for its result."""
    import mindspore as ms

    images, _ = synthetic_batch(batch_size, image_size, seed=seed)
    x = ms.Tensor(images)
    net.set_train(False)
    return lambda: net(x).asnumpy()  # asnumpy waits for the device


# ---- the trainer's step ----------------------------------------------------------------------

def default_config_path(model):
    """The variant's shipped recipe (from the checkout, or the configs/ a wheel carries)."""
    from .config import find_config
    return find_config(f'configs/coat/{model}_ascend.yaml')


def load_train_config(model=None, config=None):
    """The trainer's config for the benchmark: ``config`` or the variant's recipe, parsed by
    mindcoat.config.parse_config (so a bad file fails as it would in train.py). Returns
    (model name, cfg, config path)."""
    from .config import check_training, parse_config

    _check_name(model)
    if config is None:
        if model is None:
            model = 'coat_lite_tiny'
        config = default_config_path(model)
        if not os.path.isfile(config):
            raise UsageError(f"no shipped recipe for '{model}' at {config}: pass --config YAML")
    cfg = parse_config(['-c', config, '--distribute', 'False'])
    check_training(cfg)  # what train.py refuses before building anything
    if model is not None and model != cfg.model:
        raise UsageError(f"--model {model} but {config} is the recipe of {cfg.model}: pass "
                             f"only one of them, or a config whose model is {model}")
    return cfg.model, cfg, config


def recipe_summary(cfg, amp_level, loss_scaler):
    """What of the config shapes the timed step (reported with the figures)."""
    return {'optimizer': cfg.opt, 'weight_decay': cfg.weight_decay,
            'ema': bool(cfg.ema), 'ema_decay': cfg.ema_decay if cfg.ema else None,
            'clip_grad_norm': cfg.clip_value if cfg.clip_grad else None,
            'loss_scaler': type(loss_scaler).__name__ if loss_scaler is not None else None,
            'drop_rate': cfg.drop_rate, 'drop_path_rate': cfg.drop_path_rate,
            'label_smoothing': cfg.label_smoothing, 'amp_level': amp_level}


def run_train_step(step, images, targets):
    """The one place that calls the trainer's step, as train.py's loop calls it:
    ``step(images, targets) -> (loss, grads_finite)``, the lr read on the device from the step's
    schedule. Returns the loss Tensor."""
    loss, _ = step(images, targets)
    return loss


def make_train_step(model, cfg, batch_size, image_size, amp_level='O0', seed=0):
    """A zero-argument callable running one step of the trainer's compiled step
    (``create_train_step``) for ``model`` and ``cfg`` on a fixed synthetic batch, waiting until
    the update has landed. Returns (callable, {'step', 'optimizer', 'ema', 'loss_scaler'})."""
    import mindspore as ms

    from .engine.loop import wait_for_device
    from .engine.train_step import create_train_step

    # one lr for every step: past its end the schedule holds its last value
    _, step, optimizer, ema, scaler = create_train_step(model, cfg, amp_level, distributed=False,
                                                        lr_schedule=[cfg.lr])
    step.set_train(True)
    images, targets = synthetic_batch(batch_size, image_size, model.num_classes,
                                      cfg.label_smoothing, seed)
    images, targets = ms.Tensor(images), ms.Tensor(targets)

    def call():
        run_train_step(step, images, targets).asnumpy()
        wait_for_device()  # the optimizer's and the EMA's assignments too, not only the loss

    return call, {'step': step, 'optimizer': optimizer, 'ema': ema, 'loss_scaler': scaler}


# ---- measure ---------------------------------------------------------------------------------

def _check_name(model):
    from .models import list_models

    if model is not None and model not in list_models():
        raise UsageError(f"unknown model '{model}'; choose one of: {', '.join(list_models())}")


def _build(model, num_classes, arch):
    from .models import build_coat

    _check_name(model)
    try:
        return build_coat(model, num_classes=num_classes, **arch)
    except TypeError as e:
        raise UsageError(f"bad model override for {model}: {e}") from None


def measure(model=None, batch_size=16, image_size=224, mode='infer', amp_level=None, steps=5,
            warmup=2, device=None, graph=True, num_classes=1000, seed=0, config=None,
            model_kwargs=None, pace=None):
    """Builds a mindcoat model and times it; returns a dict of the figures. ``mode='train'``
    times the trainer's step built from ``config`` (default: the variant's recipe);
    ``model_kwargs`` override the architecture (and the config's model_kwargs); ``pace`` is
    called before each timed step (time_steps)."""
    import mindspore as ms

    from .engine.context import set_device, training_amp_level
    from .ops import depthwise_path

    if mode not in ('infer', 'train'):
        raise UsageError(f"mode must be 'infer' or 'train', got {mode!r}")
    arch, cfg, recipe = dict(model_kwargs or {}), None, None
    if mode == 'train':
        model, cfg, config = load_train_config(model, config)
        arch = {**(cfg.model_kwargs or {}), 'drop_rate': cfg.drop_rate,
                'drop_path_rate': cfg.drop_path_rate, **arch}  # --model_kwargs wins
    model = model or 'coat_lite_tiny'
    # the trainer's context: its jit level, and its precision on this device
    target = set_device(device, 0 if graph else 1, cfg.jit_level if cfg is not None else None,
                        training=cfg is not None)
    if amp_level is None:
        amp_level = training_amp_level(target, cfg.amp_level) if cfg is not None else 'O0'
    ms.set_seed(seed)
    net = _build(model, num_classes, arch)
    if mode == 'train':
        try:
            step, parts = make_train_step(net, cfg, batch_size, image_size, amp_level, seed)
        except ConfigError as e:  # the trainer's own check of the config (optimizer, amp, ...)
            raise ConfigError(f'{config}: {e}') from None
        recipe = dict(recipe_summary(cfg, amp_level, parts['loss_scaler']), config=config,
                      drop_rate=arch['drop_rate'], drop_path_rate=arch['drop_path_rate'])
    else:
        if amp_level != 'O0':
            net = ms.amp.auto_mixed_precision(net, amp_level)
        step = make_infer_step(net, batch_size, image_size, seed)
    first, times = time_steps(step, steps, warmup, pace)
    counter = getattr(parts['optimizer'], 'step', None) if mode == 'train' else None
    if counter is not None:  # every call was a whole update: the optimizer counted each one
        recipe['optimizer_updates'] = int(counter.asnumpy())
    res = {'model': model, 'mode': mode, 'batch_size': batch_size, 'image_size': image_size,
           'amp_level': amp_level, 'graph_mode': graph, 'device': target,
           'depthwise_kernel': depthwise_path(), 'warmup': warmup, 'mindspore': ms.__version__,
           'threads': int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count()),
           'model_kwargs': model_kwargs or None}
    if recipe is not None:
        res['recipe'] = recipe
    res.update(summarize(first, times, batch_size))
    return res


def _print_text(res):
    print(f"{res['model']} {res['mode']} on {res['device']} (MindSpore {res['mindspore']}, "
          f"{'graph' if res['graph_mode'] else 'pynative'} mode, amp {res['amp_level']}, "
          f"depthwise kernel: {res['depthwise_kernel']}), batch {res['batch_size']}, "
          f"{res['image_size']}x{res['image_size']}")
    if 'recipe' in res:
        r = res['recipe']
        print(f"  trainer's step from {r['config']}: {r['optimizer']}, EMA "
              f"{r['ema_decay'] if r['ema'] else 'off'}, clip "
              f"{r['clip_grad_norm'] or 'off'}, loss scaler {r['loss_scaler'] or 'none'}, "
              f"drop path {r['drop_path_rate']}")
    print(f"  {res['images_per_s']:.2f} images/s, {res['ms_per_step']:.1f} ms/step "
          f"(median of {res['steps']}), graph compile {res['compile_s']:.1f} s, "
          f"peak host memory {res['peak_rss_mb']:.0f} MB")


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=None,
                   help="variant (default: the --config's model, else coat_lite_tiny)")
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--mode', choices=('infer', 'train'), default='infer')
    p.add_argument('--config', default=None,
                   help='train mode: the training YAML whose step is timed (default: '
                        'configs/coat/<model>_ascend.yaml)')
    p.add_argument('--model_kwargs', default=None,
                   help='JSON architecture overrides, e.g. \'{"serial_depths": [1, 1, 1, 1]}\'')
    p.add_argument('--amp_level', choices=('O0', 'O2', 'O3'), default=None,
                   help="mixed precision (default: O0 on the CPU as train.py; the config's "
                        "level elsewhere in train mode). O1 crashes MindSpore 2.10 on the CPU")
    p.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps after the first call')
    p.add_argument('--device', default=None, help="CPU, GPU or Ascend (default: MindSpore's)")
    p.add_argument('--pynative', action='store_true', help='PyNative instead of graph mode')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    p.add_argument('--paced', action='store_true',
                   help="before each timed step print 'PACE' and wait for a line on stdin (to "
                        "take turns with another benchmark step by step)")
    args = p.parse_args(argv)
    os.environ.setdefault('GLOG_v', '3')
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        raise UsageError('--batch_size and --steps must be at least 1, --warmup at least 0')
    if args.image_size <= 0 or args.image_size % 32:
        raise UsageError(f'--image_size must be a positive multiple of 32 (CoaT downsamples by '
                         f'32), got {args.image_size}')
    res = measure(args.model, batch_size=args.batch_size, image_size=args.image_size,
                  mode=args.mode, amp_level=args.amp_level, steps=args.steps, warmup=args.warmup,
                  device=args.device, graph=not args.pynative, config=args.config,
                  model_kwargs=parse_model_kwargs(args.model_kwargs),
                  pace=pace_by_stdin if args.paced else None)
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        _print_text(res)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
