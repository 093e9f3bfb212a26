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

    python -m mindcoat.benchmark --detector mask_rcnn_coat_lite_mini_3x [--image_size 1333x800]
        [--images a.jpg b.jpg] [--ckpt_path det.pth] [--config DETECTOR.yaml] [--steps 5]

times a Mask R-CNN detector as ``mindcoat.detect`` runs it: one decoded image at a time from
RGB pixels to boxes and pasted masks (test pipeline, the graph, the host-side post-processing),
at the test scale ``--image_size`` (default the config's, the official 1333x800). A step is one
pass over the images (default: one synthetic photo of COCO's usual 640x480); images/s = images
/ median step. Without ``--ckpt_path`` the weights are random, with the box classifier's bias
set so that every image has the most detections the test settings keep (``give_detections``):
random weights alone detect nothing, and the mask head and the paste would not run.
``measure_detector()`` is the core (``tools/det/compare_speed.py`` runs it in a subprocess).
"""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import replace

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


# ---- detectors -------------------------------------------------------------------------------

# (h, w) of the synthetic photo a detector is timed on by default: COCO's most common size
DETECTOR_PHOTO = (480, 640)
# MaskRCNN methods timed apart; roi_features runs inside the two head methods
_DET_METHODS = ('dense', 'get_proposals', 'roi_features', 'box_head_outputs', 'get_detections',
                'mask_logits', 'paste')


def parse_test_scale(text):
    """'1333x800' -> (1333, 800): a detector's test scale (long edge, short edge)."""
    m = re.fullmatch(r'(\d+)x(\d+)', str(text).strip())
    if not m or min(int(m.group(1)), int(m.group(2))) < 32:
        raise UsageError(f"--image_size of a detector is its test scale LONGxSHORT, e.g. "
                         f"1333x800 (each side at least 32), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def give_detections(net):
    """Random weights score every class near 1/81, under the test's score threshold, so nothing
    would reach the mask head or the paste. Biases the box classifier to class 0 and the
    background alike (every other class -20): every proposal becomes a class-0 candidate and
    each image gets the most detections the test settings keep (rcnn max_per_img)."""
    import mindspore as ms

    fc_cls = net.roi_head.bbox_head.fc_cls
    bias = np.full(tuple(fc_cls.bias.shape), -20.0, np.float32)
    bias[0] = bias[-1] = 0.0
    fc_cls.bias.set_data(ms.Tensor(bias))


class StageClock:
    """Wall seconds spent in the detector's test stages, by wrapping the methods of this one
    instance (its class is untouched)."""

    def __init__(self, net):
        self.totals = dict.fromkeys(_DET_METHODS, 0.0)
        for name in _DET_METHODS:
            setattr(net, name, self._timed(name, getattr(net, name)))

    def _timed(self, name, method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - start
        return call

    def take(self):
        """The totals since the last take."""
        totals, self.totals = self.totals, dict.fromkeys(_DET_METHODS, 0.0)
        return totals


def stage_split(totals, elapsed):
    """Seconds by stage, each either graph (MindSpore) or host (NumPy): 'rest' is the test
    pipeline's preprocessing and the glue between stages."""
    heads = totals['box_head_outputs'] + totals['mask_logits'] - totals['roi_features']
    out = {'dense_graph': totals['dense'], 'proposals_host': totals['get_proposals'],
           'roi_align_host': totals['roi_features'], 'heads_graph': heads,
           'detections_host': totals['get_detections'], 'paste_host': totals['paste']}
    out['rest_host'] = elapsed - sum(out.values())
    return out


def detector_photos(paths, seed=0):
    """[(label, RGB uint8 image)]: the files, or one synthetic photo of DETECTOR_PHOTO's size."""
    from .models.detection import load_image

    if paths:
        return [(os.path.basename(p), load_image(p)) for p in paths]
    rng = np.random.default_rng(seed)
    h, w = DETECTOR_PHOTO
    return [('synthetic', rng.integers(0, 256, (h, w, 3), dtype=np.uint8))]


def make_detect_step(net, images, clock):
    """A zero-argument callable: ``net.detect`` on each image in turn, as mindcoat.detect runs
    it. Each call appends (stage seconds, detections per image) to ``clock.steps``."""
    clock.steps = []

    def call():
        start = time.perf_counter()
        counts = [len(net.detect([image])[0]) for image in images]
        clock.steps.append((stage_split(clock.take(), time.perf_counter() - start), counts))

    return call


def _stderr_log(*msg):
    print(*msg, file=sys.stderr, flush=True)


def measure_detector(name=None, image_scale=None, images=None, config=None, ckpt_path=None,
                     steps=5, warmup=2, device=None, seed=0, pace=None):
    """Builds a detector (``config``: a detector YAML or DetectorConfig, for other widths),
    loads ``ckpt_path`` or gives the random weights detections, and times one pass over
    ``images`` (paths; default a synthetic photo) per step. Returns a dict of the figures."""
    import mindspore as ms

    from .engine.context import set_device
    from .factory import create_detector
    from .models.detection import preprocess

    target = set_device(device, 0)  # graph mode, as mindcoat.detect
    ms.set_seed(seed)
    net = create_detector(name, checkpoint_path=ckpt_path, config=config, log=_stderr_log)
    if image_scale is not None:
        net.pipeline = replace(net.pipeline, img_scale=tuple(image_scale))
    if not ckpt_path:
        give_detections(net)
    net.set_train(False)
    photos = detector_photos(images, seed)
    clock = StageClock(net)
    first, times = time_steps(make_detect_step(net, [p for _, p in photos], clock), steps,
                              warmup, pace)
    timed = clock.steps[-len(times):]
    res = {'detector': net.name, 'mode': 'detect', 'device': target, 'graph_mode': True,
           'image_scale': list(net.pipeline.img_scale),
           'images': [{'name': label, 'size': [int(p.shape[1]), int(p.shape[0])],
                       'input': list(preprocess(p, net.pipeline)[1].pad_shape[:2])}
                      for label, p in photos],
           'detections_per_image': timed[-1][1],
           'weights': ckpt_path or 'random, box classifier biased (give_detections)',
           'warmup': warmup, 'mindspore': ms.__version__,
           'threads': int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count())}
    res.update(summarize(first, times, len(photos)))
    res['ms_per_image'] = res['ms_per_step'] / len(photos)
    res['stage_ms_per_image'] = {
        k: statistics.median(s[k] for s, _ in timed) * 1000.0 / len(photos) for k in timed[0][0]}
    return res


def _print_detector(res):
    shapes = ', '.join(f"{im['name']} {im['size'][0]}x{im['size'][1]} -> "
                       f"{im['input'][1]}x{im['input'][0]}" for im in res['images'])
    scale = 'x'.join(map(str, res['image_scale']))
    print(f"{res['detector']} detect on {res['device']} (MindSpore {res['mindspore']}, graph "
          f"mode), test scale {scale}, {len(res['images'])} image(s): {shapes}; weights: "
          f"{res['weights']}; detections per image {res['detections_per_image']}")
    print(f"  {res['images_per_s']:.3f} images/s, {res['ms_per_image']:.0f} ms/image (median of "
          f"{res['steps']} passes), graph compile {res['compile_s']:.1f} s, peak host memory "
          f"{res['peak_rss_mb']:.0f} MB")
    print('  per image: ' + ', '.join(f"{k.rsplit('_', 1)[0]} {v:.0f} ms ({k.rsplit('_', 1)[1]})"
                                      for k, v in res['stage_ms_per_image'].items()))


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


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=None,
                   help="variant (default: the --config's model, else coat_lite_tiny)")
    p.add_argument('--detector', default=None,
                   help='time a Mask R-CNN detector instead, e.g. mask_rcnn_coat_lite_mini_3x')
    p.add_argument('--batch_size', type=int, default=None, help='classifiers (default 16)')
    p.add_argument('--image_size', default=None,
                   help='classifiers: the square input (default 224); detectors: the test scale '
                        "LONGxSHORT (default the config's, 1333x800)")
    p.add_argument('--mode', choices=('infer', 'train'), default='infer')
    p.add_argument('--config', default=None,
                   help='train mode: the training YAML whose step is timed (default: '
                        'configs/coat/<model>_ascend.yaml); --detector: a detector YAML '
                        '(other widths, other test settings)')
    p.add_argument('--images', nargs='+', default=None,
                   help='--detector: image files to time on (default: one synthetic 640x480 '
                        'photo)')
    p.add_argument('--ckpt_path', default=None,
                   help='--detector: weights to load (default: random, see give_detections)')
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
    return p


def _classifier_size(text):
    size = 224 if text is None else text
    try:
        size = int(size)
    except ValueError:
        size = -1
    if size <= 0 or size % 32:
        raise UsageError(f'--image_size must be a positive multiple of 32 (CoaT downsamples by '
                         f'32), got {text}')
    return size


def _run_classifier(args):
    batch_size = 16 if args.batch_size is None else args.batch_size
    if args.images or args.ckpt_path:
        raise UsageError('--images and --ckpt_path go with --detector NAME')
    return measure(args.model, batch_size=batch_size, image_size=_classifier_size(args.image_size),
                   mode=args.mode, amp_level=args.amp_level, steps=args.steps, warmup=args.warmup,
                   device=args.device, graph=not args.pynative, config=args.config,
                   model_kwargs=parse_model_kwargs(args.model_kwargs),
                   pace=pace_by_stdin if args.paced else None)


def _run_detector(args):
    from .config import find_config
    from .models.detection import check_detector_name

    check_detector_name(args.detector)
    for flag, given in (('--model', args.model), ('--batch_size', args.batch_size),
                        ('--model_kwargs', args.model_kwargs), ('--amp_level', args.amp_level),
                        ('--pynative', args.pynative), ('--mode train', args.mode == 'train')):
        if given:
            raise UsageError(f"{flag} is for classifiers; a detector runs one image at a time in "
                             "graph mode, as mindcoat.detect does")
    scale = parse_test_scale(args.image_size) if args.image_size is not None else None
    return measure_detector(args.detector, scale, args.images,
                            find_config(args.config) if args.config else None, args.ckpt_path,
                            steps=args.steps, warmup=args.warmup, device=args.device,
                            pace=pace_by_stdin if args.paced else None)


def _main(argv):
    args = build_parser().parse_args(argv)
    os.environ.setdefault('GLOG_v', '3')
    if args.steps < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError('--batch_size and --steps must be at least 1, --warmup at least 0')
    res = _run_detector(args) if args.detector else _run_classifier(args)
    if args.json:
        print(json.dumps(res), flush=True)
    elif args.detector:
        _print_detector(res)
    else:
        _print_text(res)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
