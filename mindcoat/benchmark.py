"""Throughput, latency, graph compile time and peak host memory of a CoaT variant.

    python -m mindcoat.benchmark --model coat_lite_tiny --batch_size 16 --image_size 224 \\
        --mode infer|train [--amp_level O0|O2|O3] [--steps 5] [--warmup 2] [--json]

Synthetic inputs (the data pipeline is not measured). ``--mode train`` times a whole training
step as one graph cell: forward, soft-target cross-entropy, backward and an AdamWeightDecay update.
The first call compiles the graph: compile seconds = first call - steady-state step. Steady
state = median of ``--steps`` timed steps after ``--warmup`` untimed ones. ``measure()`` is the
reusable core (``tools/compare_speed.py`` calls this module in a subprocess).
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


def _cells():
    """Loss and train-step cells, built lazily so that ``--help`` does not import MindSpore."""
    from mindspore import nn, ops

    class SoftTargetCE(nn.Cell):
        """Cross-entropy against a probability target (label smoothing / mixup style)."""

        def construct(self, logits, target):
            return (-target * ops.log_softmax(logits, axis=-1)).sum(-1).mean()

    class TrainStep(nn.Cell):
        """One optimisation step (the TrainOneStepCell pattern): loss, grads, update."""

        def __init__(self, model, loss_fn, optimizer):
            super().__init__()
            self.model = model
            self.loss_fn = loss_fn
            self.optimizer = optimizer
            self.weights = optimizer.parameters
            self.grad = ops.GradOperation(get_by_list=True)

        def forward_loss(self, x, target):
            return self.loss_fn(self.model(x), target)

        def construct(self, x, target):
            loss = self.forward_loss(x, target)
            grads = self.grad(self.forward_loss, self.weights)(x, target)
            self.optimizer(grads)
            return loss

    return SoftTargetCE, TrainStep


def peak_rss_mb():
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if platform.system() == 'Linux' else rss / (1024.0 * 1024.0)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_steps(step, steps=5, warmup=2):
    """Calls ``step`` once (compiles), ``warmup`` more times, then times ``steps`` calls.
    Returns (first call seconds, [timed seconds])."""
    first = _timed(step)
    for _ in range(warmup):
        step()
    return first, [_timed(step) for _ in range(max(steps, 1))]


def make_step(net, mode, batch_size, image_size, num_classes=1000, no_decay=(), seed=0):
    """A zero-argument callable running one inference or training step of a MindSpore ``net``
    on synthetic data and waiting for its result. Works for any classifier Cell (also MindCV's)."""
    import mindspore as ms
    from mindspore import nn

    rng = np.random.default_rng(seed)
    x = ms.Tensor(rng.normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32))
    if mode == 'infer':
        net.set_train(False)
        return lambda: net(x).asnumpy()  # asnumpy waits for the device
    if mode != 'train':
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    SoftTargetCE, TrainStep = _cells()
    labels = rng.integers(0, num_classes, batch_size)
    target = np.full((batch_size, num_classes), 0.1 / num_classes, np.float32)
    target[np.arange(batch_size), labels] += 0.9
    target = ms.Tensor(target)
    params = [{'params': [p for p in net.trainable_params() if p.name not in no_decay],
               'weight_decay': 0.05},
              {'params': [p for p in net.trainable_params() if p.name in no_decay],
               'weight_decay': 0.0}]
    train = TrainStep(net, SoftTargetCE(), nn.AdamWeightDecay(params, learning_rate=1e-4))
    train.set_train(True)
    return lambda: train(x, target).asnumpy()


def summarize(first, times, batch_size):
    median = statistics.median(times)
    return {'images_per_s': batch_size / median, 'ms_per_step': median * 1000.0,
            'compile_s': max(first - median, 0.0), 'first_step_s': first,
            'peak_rss_mb': peak_rss_mb(), 'steps': len(times),
            'step_times_ms': [t * 1000.0 for t in times]}


def measure(model='coat_lite_tiny', batch_size=16, image_size=224, mode='infer', amp_level='O0',
            steps=5, warmup=2, device=None, graph=True, num_classes=1000, seed=0):
    """Builds a mindcoat model and times it; returns a dict of the figures."""
    import mindspore as ms

    from mindcoat.models import create_model
    from mindcoat.ops import depthwise_path

    if device:
        ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    ms.set_seed(seed)
    net = create_model(model, num_classes=num_classes)
    no_decay = net.no_weight_decay_names()
    if amp_level != 'O0':
        net = ms.amp.auto_mixed_precision(net, amp_level)
    step = make_step(net, mode, batch_size, image_size, num_classes, no_decay, seed)
    first, times = time_steps(step, steps, warmup)
    return dict({
        'model': model, 'mode': mode, 'batch_size': batch_size, 'image_size': image_size,
        'amp_level': amp_level, 'graph_mode': graph,
        'device': ms.get_context('device_target'),
        'depthwise_kernel': depthwise_path(),
        'warmup': warmup, 'mindspore': ms.__version__,
        'threads': int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count()),
    }, **summarize(first, times, batch_size))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='coat_lite_tiny')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--mode', choices=('infer', 'train'), default='infer')
    p.add_argument('--amp_level', choices=('O0', 'O2', 'O3'), default='O0',
                   help='mixed precision (O1 crashes MindSpore 2.10 on functional ops)')
    p.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps after the first call')
    p.add_argument('--device', default=None, help="CPU, GPU or Ascend (default: MindSpore's)")
    p.add_argument('--pynative', action='store_true', help='PyNative instead of graph mode')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    args = p.parse_args(argv)
    os.environ.setdefault('GLOG_v', '3')
    res = measure(args.model, args.batch_size, args.image_size, args.mode, args.amp_level,
                  args.steps, args.warmup, args.device, not args.pynative)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['model']} {res['mode']} on {res['device']} (MindSpore {res['mindspore']}, "
              f"{'graph' if res['graph_mode'] else 'pynative'} mode, amp {res['amp_level']}, "
              f"depthwise kernel: {res['depthwise_kernel']}), batch {res['batch_size']}, "
              f"{res['image_size']}x{res['image_size']}")
        print(f"  {res['images_per_s']:.2f} images/s, {res['ms_per_step']:.1f} ms/step "
              f"(median of {res['steps']}), graph compile {res['compile_s']:.1f} s, "
              f"peak host memory {res['peak_rss_mb']:.0f} MB")
    return res


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
