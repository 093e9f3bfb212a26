"""Host overhead of the training loop per step: the epoch loop's time per step minus the compiled
step's own time per step (the same step on the same batch, called back to back with one wait at
the end). Alternates the two, ``--repeats`` times, and prints the medians and the spread.

Runs against whichever mindcoat is on PYTHONPATH, before or after the device-side loop (a step
that takes ``(images, targets, lr)`` and a loop reading the loss every step, or a step taking
``(images, targets)`` with the lr schedule and loss sums on the device):

    git archive <commit> | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python tools/measure_loop_overhead.py --preset small
    PYTHONPATH=. python tools/measure_loop_overhead.py --preset small
    PYTHONPATH=. python tools/measure_loop_overhead.py --preset coat_lite_tiny

Presets: small = coat_lite_tiny with 16 channels and one block per stage at 32 px, batch 8;
coat_lite_tiny = the real model at 224 px, batch 16. The step is the trainer's, from the config
(AdamW, EMA, clipping by global norm 1.0)."""
import argparse
import ast
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

PRESETS = {
    'small': dict(model='coat_lite_tiny', batch_size=8, image_size=32,
                  model_kwargs="{'embed_dims': (16, 16, 16, 16), 'serial_depths': (1, 1, 1, 1), "
                               "'mlp_ratios': (2, 2, 2, 2)}", steps=40),
    'coat_lite_tiny': dict(model='coat_lite_tiny', batch_size=16, image_size=224,
                           model_kwargs='{}', steps=8),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', choices=sorted(PRESETS), default='small')
    p.add_argument('--steps', type=int, help='steps per timed run (default: the preset\'s)')
    p.add_argument('--repeats', type=int, default=5, help='timed runs of each kind')
    args = p.parse_args(argv)
    settings = dict(PRESETS[args.preset])
    settings['steps'] = args.steps or settings['steps']
    settings['repeats'] = args.repeats
    if settings['steps'] < 1 or args.repeats < 1:
        p.error('--steps and --repeats must be at least 1')
    return SimpleNamespace(preset=args.preset, **settings)


class Harness:
    """One compiled step and the two ways of running it, for either loop API."""

    def __init__(self, s):
        import mindspore as ms
        import mindspore.dataset as msds
        import numpy as np
        from mindcoat import create_model
        from mindcoat.config import parse_config
        from mindcoat.engine import create_train_step, train_one_epoch
        ms.set_context(mode=ms.GRAPH_MODE)
        cfg = parse_config(['--opt', 'adamw', '--ema', 'True', '--clip_grad', 'True', '--clip_value', '1.0'])
        ms.set_seed(0)
        model = create_model(s.model, num_classes=1000, **ast.literal_eval(s.model_kwargs))
        _, self.step, *_ = create_train_step(model, cfg)
        rng = np.random.default_rng(0)
        shape = (s.batch_size, 3, s.image_size, s.image_size)
        self.images = rng.normal(size=shape).astype(np.float32)
        self.targets = np.eye(1000, dtype=np.float32)[rng.integers(0, 1000, s.batch_size)]
        self.x, self.y = ms.Tensor(self.images), ms.Tensor(self.targets)
        self.steps, self.batch_size = s.steps, s.batch_size
        self.lrs = np.full(s.steps, 1e-6)
        self.new_api = hasattr(self.step, 'set_lr_schedule')
        if self.new_api:
            self.step.set_lr_schedule(self.lrs)
            self.args = (self.x, self.y)
        else:
            self.args = (self.x, self.y, ms.Tensor(1e-6, ms.float32))
        self.train_one_epoch, self.msds, self.np = train_one_epoch, msds, np
        self.step.set_train(True)

    def alone(self):
        """Seconds per step of the compiled step by itself."""
        from mindcoat.engine.loop import wait_for_device
        wait_for_device()
        start = time.perf_counter()
        for _ in range(self.steps):
            out = self.step(*self.args)
        float(out[0].asnumpy())
        wait_for_device()
        return (time.perf_counter() - start) / self.steps

    def loader(self):
        # the same batch, ``steps`` times, through a batched dataset as the trainer's loader
        data = self.msds.NumpySlicesDataset(
            {'image': self.np.concatenate([self.images] * self.steps),
             'label': self.np.concatenate([self.targets] * self.steps)}, shuffle=False)
        return SimpleNamespace(loader=data.batch(self.batch_size), batch_size=self.batch_size)

    def loop(self):
        """Seconds per step of the epoch loop (its own clock: the epoch's time)."""
        loader = self.loader()
        if self.new_api:
            self.step.set_global_step(0)
        record = self.train_one_epoch(self.step, loader, self.lrs, 0, self.steps, show=False,
                                      log_interval=100)
        return record['epoch_time'] / self.steps


def main(argv=None):
    os.environ.setdefault('GLOG_v', '3')
    s = parse_args(argv)
    import mindcoat
    h = Harness(s)
    h.alone()  # compiles
    h.loop()
    alone, loop = [], []
    for _ in range(s.repeats):  # interleaved: a busy spell of the machine hits both kinds
        alone.append(h.alone())
        loop.append(h.loop())
    overhead = [b - a for a, b in zip(alone, loop)]
    ms_ = [round(v * 1e3, 2) for v in overhead]
    result = {
        'mindcoat': os.path.dirname(os.path.abspath(mindcoat.__file__)),
        'loop_api': 'device-side' if h.new_api else 'host-per-step',
        'preset': s.preset, 'model': s.model, 'batch_size': s.batch_size,
        'image_size': s.image_size, 'steps': s.steps, 'repeats': s.repeats,
        'step_alone_ms_median': round(statistics.median(alone) * 1e3, 2),
        'loop_step_ms_median': round(statistics.median(loop) * 1e3, 2),
        'overhead_ms_median': round(statistics.median(overhead) * 1e3, 2),
        'overhead_ms_min_max': [min(ms_), max(ms_)],
        'overhead_ms_runs': ms_,
        'cpus_load_1min': os.getloadavg()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
