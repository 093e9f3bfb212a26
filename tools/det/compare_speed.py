"""Speed and peak memory of mindcoat's Mask R-CNN detectors against the official MMDetection 2.11
code (tasks/mmdet of mlpc-ucsd/CoaT) on the same CPU, the same weights and the same photos, in
one run (a dev tool: torch and mmcv are never mindcoat dependencies).

    python tools/det/compare_speed.py                 # coat_lite_mini and coat_mini 3x, 3 photos

What is timed on each side, per image, from decoded pixels to boxes and pasted masks at the
official test scale (1333x800, keep ratio, pad /32):
- mindcoat: ``python -m mindcoat.benchmark --detector NAME --images ... --ckpt_path W.pth``,
  i.e. ``MaskRCNN.detect`` on each image, as ``mindcoat.detect`` runs it (graph mode);
- official: ``mmdet.apis.inference_detector(model, image)`` on the decoded BGR array, in the
  reference venv (tools/det/README.md), through ``mmdet_reference.setup_official``.

Both load one weight file W.pth: the official detector at its own initialisation
(``torch.manual_seed(0)``, ``build_detector``), with the box classifier's bias set as
``mindcoat.benchmark.give_detections`` sets it (class 0 and background 0, the rest -20), so that
every image has the test settings' 100 detections on both sides and the mask head and the paste
do their full work; written by the official side (mmcv ``save_checkpoint``).

A step is one pass over the photos. The two processes start and warm up one after the other,
then take their timed steps in turns (tools/compare_speed.py's lockstep driver), so a change in
the machine's speed falls on both alike. Before each detector the driver waits until the 1-minute
load average is under --max_load (the machine is shared). Writes a markdown table and a JSON of
every raw number, stage breakdowns included.
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..'))
REF_PYTHON = '/work/refs/mmdet-venv/bin/python'
COAT_SRC = '/work/refs/coat-src'
DETECTORS = ('mask_rcnn_coat_lite_mini_3x', 'mask_rcnn_coat_mini_3x')
# scikit-image's sample photos (PNG: every decoder gives the same pixels), at their own sizes
PHOTOS = ('coffee.png', 'astronaut.png', 'motorcycle_left.png')
STAGES = ('dense', 'proposals', 'roi_align', 'heads', 'detections', 'paste', 'rest')


def official_config_name(detector):
    """mask_rcnn_coat_lite_mini_3x -> the official config's name."""
    body = detector[len('mask_rcnn_'):]
    backbone, schedule = body.rsplit('_', 1)
    return f'mask_rcnn_{backbone}_mstrain_480-800_adamw_{schedule}_coco'


# ---- official side (runs in the reference venv) ------------------------------------------------

def _official_model(args):
    sys.path.insert(0, HERE)
    import mmdet_reference as ref  # the reference venv's helper: the official code, set up
    import torch
    torch.set_num_threads(args.threads)
    ref.setup_official(args.coat_src)
    cfg = ref.load_config(args.coat_src, official_config_name(args.detector))
    return ref, ref.build(cfg, seed=0)


def give_detections(model):
    """mindcoat.benchmark.give_detections on the official model: class 0 and the background
    share every proposal, every other class -20."""
    import torch
    bias = model.roi_head.bbox_head.fc_cls.bias
    with torch.no_grad():
        bias.fill_(-20.0)
        bias[0] = 0.0
        bias[-1] = 0.0


def make_weights(args):
    ref, model = _official_model(args)
    give_detections(model)
    ref.save_ckpt(model, args.make_weights, {'seed': 0, 'mindcoat_speed': 'give_detections'})
    print(json.dumps({'weights': args.make_weights}), flush=True)


class OfficialClock:
    """Wall seconds in the official test stages, split as mindcoat.benchmark splits its own:
    dense (backbone, FPN, RPN convs), proposals (RPN get_bboxes), roi_align (both RoI
    extractors), heads (box and mask heads), detections (box decode + multi-class NMS), paste
    (get_seg_masks) and the rest (test pipeline, collate, result layout)."""

    def __init__(self, model):
        self.totals = dict.fromkeys(STAGES[:-1], 0.0)
        self._dense_start = None
        model.backbone.register_forward_pre_hook(self._start_dense)
        model.rpn_head.register_forward_hook(self._end_dense)
        roi = model.roi_head
        for stage, module in (('roi_align', roi.bbox_roi_extractor),
                              ('roi_align', roi.mask_roi_extractor),
                              ('heads', roi.bbox_head), ('heads', roi.mask_head)):
            self._time_module(stage, module)
        for stage, obj, name in (('proposals', model.rpn_head, 'get_bboxes'),
                                 ('detections', roi.bbox_head, 'get_bboxes'),
                                 ('paste', roi.mask_head, 'get_seg_masks')):
            setattr(obj, name, self._timed(stage, getattr(obj, name)))

    def _start_dense(self, module, inputs):
        self._dense_start = time.perf_counter()

    def _end_dense(self, module, inputs, output):
        self.totals['dense'] += time.perf_counter() - self._dense_start

    def _time_module(self, stage, module):
        starts = []
        module.register_forward_pre_hook(lambda m, i: starts.append(time.perf_counter()))

        def end(m, i, o):
            self.totals[stage] += time.perf_counter() - starts.pop()
        module.register_forward_hook(end)

    def _timed(self, stage, method):
        def call(*a, **k):
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                self.totals[stage] += time.perf_counter() - start
        return call

    def take(self, elapsed):
        out = dict(self.totals, rest=elapsed - sum(self.totals.values()))
        self.totals = dict.fromkeys(STAGES[:-1], 0.0)
        return out


def _pace():
    print('PACE', flush=True)
    if not sys.stdin.readline():
        sys.exit('stdin closed before the next step')


def time_official(args):
    ref, model = _official_model(args)  # puts the official mmdet on sys.path
    import mmcv
    import torch
    from mmcv.runner import load_checkpoint
    from mmdet.apis import inference_detector

    load_checkpoint(model, args.weights, map_location='cpu', strict=True, logger=None)
    images = [mmcv.imread(p) for p in args.images]  # BGR, as mmcv decodes files
    clock = OfficialClock(model)
    stages, counts = [], []

    def step():
        start = time.perf_counter()
        dets = [inference_detector(model, image) for image in images]
        stages.append(clock.take(time.perf_counter() - start))
        counts.append([int(sum(len(b) for b in boxes)) for boxes, _ in dets])

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if args.paced:
            _pace()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    n, median = len(images), statistics.median(times)
    timed = stages[-len(times):]
    import resource
    res = {'images_per_s': n / median, 'ms_per_image': median * 1000 / n,
           'ms_per_step': median * 1000, 'first_step_s': first, 'compile_s': None,
           'step_times_ms': [t * 1000 for t in times], 'steps': len(times),
           'warmup': args.warmup, 'detections_per_image': counts[-1],
           'stage_ms_per_image': {k: statistics.median(s[k] for s in timed) * 1000 / n
                                  for k in STAGES},
           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           'framework': f'torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet 2.11 '
                        '(official tasks/mmdet)', 'threads': torch.get_num_threads()}
    print(json.dumps(res), flush=True)
    os._exit(0)


# ---- driver -------------------------------------------------------------------------------------

def load_lockstep():
    """tools/compare_speed.py (the classifiers' driver): its lockstep runner and machine info."""
    spec = importlib.util.spec_from_file_location('compare_speed_classifiers',
                                                  os.path.join(REPO, 'tools', 'compare_speed.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _progress(text):
    print(f"[det/compare_speed {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def copy_photos(ref_python, folder):
    """PHOTOS from the reference venv's scikit-image into ``folder``; their paths."""
    code = 'import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), "data"))'
    data = subprocess.run([ref_python, '-c', code], capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip().splitlines()[-1]
    paths = []
    for name in PHOTOS:
        paths.append(os.path.join(folder, name))
        shutil.copyfile(os.path.join(data, name), paths[-1])
    return paths


def wait_for_quiet(max_load, max_wait):
    """Until the 1-minute load average is under ``max_load``: the load seen, or None when it
    stayed above for ``max_wait`` seconds (others are using the machine: not measured)."""
    start = time.time()
    while True:
        load = os.getloadavg()
        if load[0] < max_load:
            return load
        if time.time() - start > max_wait:
            return None
        _progress(f'1-minute load {load[0]:.2f} >= {max_load}: waiting')
        time.sleep(30)


def official_cmd(args, detector, *extra):
    return [args.ref_python, os.path.abspath(__file__), '--worker', '--detector', detector,
            '--coat_src', args.coat_src, '--threads', str(args.threads), *extra]


def make_weight_file(args, detector, folder):
    path = os.path.join(folder, f'{detector}_speed.pth')
    subprocess.run(official_cmd(args, detector, '--make_weights', path), check=True,
                   capture_output=True, text=True, timeout=1800)
    return path


def measure(args, lockstep, detector, photos, weights, turn):
    timed = ['--steps', str(args.steps), '--warmup', str(args.warmup)]
    jobs = {
        'mindcoat': ([args.mindcoat_python, '-m', 'mindcoat.benchmark', '--detector', detector,
                      '--images', *photos, '--ckpt_path', weights, '--device', 'CPU', '--json',
                      '--paced', *timed], args.steps),
        'official': (official_cmd(args, detector, '--weights', weights, '--images', *photos,
                                  '--paced', *timed), args.steps)}
    order = ['mindcoat', 'official'] if turn % 2 == 0 else ['official', 'mindcoat']
    limits = argparse.Namespace(timeout=args.timeout, max_rss_gb=args.max_rss_gb,
                                min_free_gb=args.min_free_gb)
    return lockstep.run_lockstep([(s, *jobs[s]) for s in order], limits), jobs


def _cell(res, key, fmt):
    return '—' if not res or res.get(key) is None else format(res[key], fmt)


def table(records):
    lines = ['| detector | mindcoat img/s | official img/s | mindcoat/official | ms/image '
             '(mindcoat / official) | peak MB (mindcoat / official) | mindcoat compile s '
             '| detections per image (mindcoat / official) | load (1-min) |',
             '|---|---:|---:|---:|---|---|---:|---|---|']
    for r in records:
        m, o = r['results'].get('mindcoat'), r['results'].get('official')
        ratio = (f"{m['images_per_s'] / o['images_per_s']:.2f}x" if m and o else '—')
        lines.append(
            f"| {r['detector']} | {_cell(m, 'images_per_s', '.3f')} | "
            f"{_cell(o, 'images_per_s', '.3f')} | {ratio} | {_cell(m, 'ms_per_image', '.0f')} / "
            f"{_cell(o, 'ms_per_image', '.0f')} | {_cell(m, 'peak_rss_mb', '.0f')} / "
            f"{_cell(o, 'peak_rss_mb', '.0f')} | {_cell(m, 'compile_s', '.1f')} | "
            f"{(m or {}).get('detections_per_image')} / {(o or {}).get('detections_per_image')} "
            f"| {r['load_before'][0]:.2f} |")
    lines += ['', '| detector | system | ' + ' | '.join(STAGES) + ' (ms per image) |',
              '|---|---|' + '---:|' * len(STAGES)]
    for r in records:
        for system in ('mindcoat', 'official'):
            res = r['results'].get(system)
            if res:
                stages = res['stage_ms_per_image']
                lines.append(f"| {r['detector']} | {system} | " + ' | '.join(
                    f"{stages[_mindcoat_stage(system, k, stages)]:.0f}" for k in STAGES) + ' |')
    errors = [f"- {r['detector']} {s}: {e}" for r in records for s, e in r['errors'].items() if e]
    return '\n'.join(lines + (['', 'Not measured:', *errors] if errors else [])) + '\n'


def _mindcoat_stage(system, stage, stages):
    """mindcoat's keys carry where the stage runs (dense_graph, paste_host, ...)."""
    if system == 'official' or stage in stages:
        return stage
    return next(k for k in stages if k.rsplit('_', 1)[0] == stage)


def drive(args):
    lockstep = load_lockstep()
    info = lockstep.machine()
    _progress(f"{info.get('cpu_model')}, {info['cpus']} CPUs, AVX-512 {info.get('avx512')}")
    work = tempfile.mkdtemp(prefix='det_speed_')
    photos = args.images or copy_photos(args.ref_python, work)
    header = (f"det/compare_speed {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"{info.get('cpu_model')}, {info['cpus']} CPUs, AVX-512 {info.get('avx512')}; "
              f"photos {', '.join(os.path.basename(p) for p in photos)}; test scale 1333x800; "
              f"{args.steps} timed passes after {args.warmup} warm-up; "
              f"`{' '.join(['python', 'tools/det/compare_speed.py', *sys.argv[1:]])}`")
    records = []
    try:
        for turn, detector in enumerate(args.detectors):
            _progress(f'{detector}: weight file from the official code ...')
            weights = make_weight_file(args, detector, work)
            load = wait_for_quiet(args.max_load, args.max_wait)
            if load is None:
                _progress(f'{detector}: the load stayed over {args.max_load} for '
                          f'{args.max_wait} s; not measured')
                continue
            _progress(f'{detector}: measuring (load {load[0]:.2f}) ...')
            out, jobs = measure(args, lockstep, detector, photos, weights, turn)
            records.append({'detector': detector, 'load_before': list(load),
                            'load_after': list(os.getloadavg()),
                            'results': {s: r for s, (r, _, _) in out.items()},
                            'errors': {s: e for s, (_, e, _) in out.items()},
                            'commands': {s: cmd for s, (cmd, _) in jobs.items()}})
            for system, (res, err, _) in out.items():
                _progress(f"    {system}: " + (err or f"{res['images_per_s']:.3f} img/s, "
                                                      f"{res['peak_rss_mb']:.0f} MB"))
            _save(args, header, info, records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_save(args, header, info, records))


def _save(args, header, info, records):
    text = header + '\n\n' + table(records)
    with open(args.md, 'w') as f:
        f.write(text)
    with open(args.json_out, 'w') as f:
        json.dump({'header': header, 'machine': info, 'records': records}, f, indent=1)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--detectors', nargs='+', default=list(DETECTORS))
    p.add_argument('--images', nargs='+', default=None,
                   help=f"photos (default: scikit-image's {', '.join(PHOTOS)})")
    p.add_argument('--steps', type=int, default=3, help='timed passes over the photos (median)')
    p.add_argument('--warmup', type=int, default=1, help='untimed passes after the first')
    p.add_argument('--ref_python', default=REF_PYTHON, help='the reference venv (torch, mmcv)')
    p.add_argument('--coat_src', default=COAT_SRC, help='extraction of the official repository')
    p.add_argument('--mindcoat_python', default=sys.executable)
    p.add_argument('--threads', type=int, default=2, help="torch's threads")
    p.add_argument('--max_load', type=float, default=1.5,
                   help='wait for a 1-minute load average under this before each detector')
    p.add_argument('--max_wait', type=int, default=7200, help='seconds to wait for it at most')
    p.add_argument('--timeout', type=int, default=3600, help='seconds per detector')
    p.add_argument('--max_rss_gb', type=float, default=12.0)
    p.add_argument('--min_free_gb', type=float, default=2.0)
    p.add_argument('--md', default='det_compare_speed.md')
    p.add_argument('--json_out', default='det_compare_speed.json')
    # worker side (internal, in the reference venv)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--detector', help=argparse.SUPPRESS)
    p.add_argument('--make_weights', help=argparse.SUPPRESS)
    p.add_argument('--weights', help=argparse.SUPPRESS)
    p.add_argument('--paced', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return make_weights(args) if args.make_weights else time_official(args)
    if args.images:
        args.images = [os.path.abspath(x) for x in args.images]
    return drive(args)


if __name__ == '__main__':
    main()
