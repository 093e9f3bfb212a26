"""Every variant through ``python -m mindcoat.export --format ONNX --dynamic_batch --check_images``
at its own input size and at one other multiple of 32, on seeded weights (tests/parity_weights.py,
logits of order 1) and the four photos of tests/fixtures/augment/photos; then, optionally, the
speed of the exported files in onnxruntime beside mindcoat's benchmark and timm, taking turns.

    python tools/check_onnx_variants.py [--models coat_lite_tiny ...] [--speed coat_lite_tiny
        coat_tiny --torch_python /path/to/venv-with-timm/bin/python]

Prints a markdown table of the largest |logit difference| (onnxruntime vs the MindSpore Cell,
open batch run at 1 and at 3) and, with --speed, of images/s at batch 16, 224 px.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PHOTOS = os.path.join(REPO, 'tests', 'fixtures', 'augment', 'photos')
SIZES = {'coat_lite_medium_384': (384, 224)}  # else (224, 160)

_WEIGHTS = """
import sys
sys.path.insert(0, {tests!r})
import mindspore as ms
from mindcoat import create_model
from parity_weights import SEED, seeded_weights
model = create_model({name!r})
params = {{p.name: p for p in model.get_parameters()}}
values = seeded_weights({{n: p.shape for n, p in params.items()}}, SEED)
for n, p in params.items():
    p.set_data(ms.Tensor(values[n]))
ms.save_checkpoint(model, {path!r})
"""

_ORT = """
import statistics, sys, time
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])
x = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
times = []
for i in range(8):
    start = time.perf_counter()
    session.run(None, {'image': x})
    times.append(time.perf_counter() - start)
print(16 / statistics.median(times[3:]))
"""

_TIMM = """
import statistics, time
import timm, torch
torch.manual_seed(0)
model = timm.create_model({name!r}).eval()
x = torch.randn(16, 3, 224, 224)
times = []
with torch.no_grad():
    for i in range(8):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
print(16 / statistics.median(times[3:]))
"""


def _env():
    env = dict(os.environ, GLOG_v='3', PYTHONPATH=REPO)
    return env


def _run(argv):
    res = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{res.stderr[-2000:]}")
    return res.stdout


def check_variant(name, work):
    """{size: max |logit diff|} of the CLI's ONNX export of ``name`` at its two sizes."""
    ckpt = os.path.join(work, f'{name}.ckpt')
    _run([sys.executable, '-c', _WEIGHTS.format(tests=os.path.join(REPO, 'tests'), name=name,
                                                path=ckpt)])
    photos = [os.path.join(PHOTOS, f) for f in sorted(os.listdir(PHOTOS))]
    diffs = {}
    for size in SIZES.get(name, (224, 160)):
        out = _run([sys.executable, '-m', 'mindcoat.export', '--model', name, '--ckpt_path', ckpt,
                    '--format', 'ONNX', '--image_size', str(size), '--dynamic_batch', '-o',
                    os.path.join(work, f'{name}_{size}.onnx'), '--check_images', *photos])
        diffs[size] = float(re.search(r'max \|logit diff\| = (\S+)', out).group(1))
        print(f"{name} {size}: {diffs[size]:.3g}", file=sys.stderr, flush=True)
    return diffs


def speed(name, work, torch_python, rounds):
    """images/s at batch 16, 224 px: mindcoat's benchmark, onnxruntime, timm; in turns."""
    found = {'mindcoat': [], 'onnxruntime': [], 'timm': []}
    for _ in range(rounds):
        bench = _run([sys.executable, '-m', 'mindcoat.benchmark', '--model', name, '--batch_size',
                      '16', '--image_size', '224', '--json'])
        found['mindcoat'].append(json.loads(bench.strip().splitlines()[-1])['images_per_s'])
        found['onnxruntime'].append(float(_run([sys.executable, '-c', _ORT, os.path.join(
            work, f'{name}_224.onnx')])))
        if torch_python:
            found['timm'].append(float(_run([torch_python, '-c', _TIMM.format(name=name)])))
    return {k: statistics.median(v) for k, v in found.items() if v}


def main():
    from mindcoat import list_models
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list_models())
    p.add_argument('--speed', nargs='*', default=[], help='variants to time (exported above)')
    p.add_argument('--torch_python', help='a python with torch and timm, for the timm column')
    p.add_argument('--rounds', type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        print('| model | sizes | max abs logit difference |\n|---|---|---|')
        for name in args.models:
            diffs = check_variant(name, work)
            print(f"| {name} | {' / '.join(map(str, diffs))} | "
                  f"{' / '.join(f'{d:.1e}' for d in diffs.values())} |", flush=True)
        if args.speed:
            print('\n| model | mindcoat img/s | onnxruntime img/s | timm img/s |\n'
                  '|---|---|---|---|')
        for name in args.speed:
            if name not in args.models:
                check_variant(name, work)
            res = speed(name, work, args.torch_python, args.rounds)
            print(f"| {name} | {res['mindcoat']:.1f} | {res['onnxruntime']:.1f} | "
                  f"{res['timm']:.1f} |" if 'timm' in res else
                  f"| {name} | {res['mindcoat']:.1f} | {res['onnxruntime']:.1f} | - |", flush=True)


if __name__ == '__main__':
    main()
