"""Side-by-side speed of mindcoat, timm's CoaT (PyTorch eager) and MindCV 0.3.0's CoaT, measured
in one run on one machine (a dev tool: torch, timm and mindcv are never mindcoat dependencies).

    python tools/compare_speed.py [--models coat_lite_tiny coat_tiny] [--batch_size 16]
        [--image_size 224] [--modes infer train] [--steps 5 --warmup 2]
        [--mindcoat_python /work/venv/bin/python] [--torch_python /work/tvenv/bin/python]
        [--mindcv_python /work/mcvenv/bin/python] [--json_out FILE]

Every measurement runs in its own subprocess (so peak memory is per run), with the interpreter
of the environment that has the framework; a peer whose interpreter or package is missing is
skipped with a note. Prints a markdown table with ratios against timm and MindCV.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- workers (run inside the peer's environment) ----------------------------------------------

def _worker_timm(args):
    import resource
    import statistics

    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000, img_size=args.image_size)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    if args.mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        target = torch.full((args.batch_size, 1000), 0.1 / 1000)
        target[torch.arange(args.batch_size), torch.randint(0, 1000, (args.batch_size,))] += 0.9
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def step():
            loss = torch.sum(-target * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    times = []
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {'images_per_s': args.batch_size / median, 'ms_per_step': median * 1000,
            'compile_s': None, 'first_step_s': first,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'framework': f'torch {torch.__version__}, timm {timm.__version__}',
            'threads': torch.get_num_threads()}


def _worker_mindcv(args):
    import mindspore as ms
    import mindcv
    from mindcv.models import create_model

    sys.path.insert(0, REPO)
    from mindcoat.benchmark import make_step, summarize, time_steps

    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = create_model(args.model, num_classes=1000)
    no_decay = {p.name for p in net.trainable_params() if len(p.shape) <= 1}
    step = make_step(net, args.mode, args.batch_size, args.image_size, 1000, no_decay)
    first, times = time_steps(step, args.steps, args.warmup)
    return dict(summarize(first, times, args.batch_size),
                framework=f'mindspore {ms.__version__}, mindcv {mindcv.__version__}')


# ---- driver ------------------------------------------------------------------------------------

def _run(cmd, timeout, env=None):
    env = dict(os.environ, GLOG_v='3', **(env or {}))
    try:  # in a scratch directory: MindSpore drops rank_0/ and kernel_meta/ into the cwd
        with tempfile.TemporaryDirectory(prefix='compare_speed_') as cwd:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                 cwd=cwd)
    except subprocess.TimeoutExpired:
        return None, f'timed out after {timeout} s'
    for line in reversed(res.stdout.strip().splitlines()):
        if line.startswith('{'):
            return json.loads(line), None
    return None, (res.stderr.strip().splitlines() or ['no output'])[-1][:300]


def _has(python, module):
    if not python or not os.path.exists(python):
        return False
    return subprocess.run([python, '-c', f'import {module}'], capture_output=True,
                          timeout=300).returncode == 0


def _default_python(candidates, module):
    for py in candidates:
        if _has(py, module):
            return py
    return None


def _fmt(v, digits=1):
    return '—' if v is None else f'{v:.{digits}f}'


def _ratio(a, b):
    return '—' if a is None or b is None or b == 0 else f'{a / b:.2f}x'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['coat_lite_tiny', 'coat_tiny'])
    p.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=('infer', 'train'))
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--mindcv_steps', type=int, default=2, help='MindCV is slow: fewer timed steps')
    p.add_argument('--mindcv_warmup', type=int, default=0)
    p.add_argument('--mindcoat_python', default=None)
    p.add_argument('--torch_python', default=None)
    p.add_argument('--mindcv_python', default=None)
    p.add_argument('--skip', nargs='*', default=[], choices=('mindcoat', 'timm', 'mindcv'))
    p.add_argument('--timeout', type=int, default=1800, help='seconds per measurement')
    p.add_argument('--json_out', default=None)
    p.add_argument('--worker', choices=('timm', 'mindcv'), help=argparse.SUPPRESS)
    p.add_argument('--model', help=argparse.SUPPRESS)
    p.add_argument('--mode', help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        fn = _worker_timm if args.worker == 'timm' else _worker_mindcv
        print(json.dumps(fn(args)), flush=True)
        os._exit(0)  # MindSpore's interpreter shutdown prints spurious errors; the JSON is out

    pythons = {
        'mindcoat': args.mindcoat_python or _default_python(
            [sys.executable, '/work/venv/bin/python'], 'mindspore'),
        'timm': args.torch_python or _default_python(
            [sys.executable, '/work/tvenv/bin/python'], 'timm'),
        'mindcv': args.mindcv_python or _default_python(
            [sys.executable, '/work/mcvenv/bin/python'], 'mindcv'),
    }
    for peer, py in pythons.items():
        if peer in args.skip:
            pythons[peer] = None
            print(f'[compare_speed] {peer}: skipped (--skip)', file=sys.stderr)
        elif py is None:
            print(f'[compare_speed] {peer}: not installed in any known interpreter; skipped',
                  file=sys.stderr)
        else:
            print(f'[compare_speed] {peer}: {py}', file=sys.stderr)

    results = {}
    common = ['--batch_size', str(args.batch_size), '--image_size', str(args.image_size)]
    for model in args.models:
        for mode in args.modes:
            for peer, py in pythons.items():
                if py is None:
                    continue
                steps, warmup = ((args.mindcv_steps, args.mindcv_warmup) if peer == 'mindcv'
                                 else (args.steps, args.warmup))
                timing = ['--steps', str(steps), '--warmup', str(warmup)]
                if peer == 'mindcoat':
                    cmd = [py, '-m', 'mindcoat.benchmark', '--model', model, '--mode', mode,
                           '--json', *common, *timing]
                else:
                    cmd = [py, os.path.abspath(__file__), '--worker', peer, '--model', model,
                           '--mode', mode, *common, *timing]
                env = {'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
                print(f'[compare_speed] {peer} {model} {mode} ...', file=sys.stderr, flush=True)
                res, err = _run(cmd, args.timeout, env)
                if err:
                    print(f'[compare_speed]   failed: {err}', file=sys.stderr)
                else:
                    print(f"[compare_speed]   {res['images_per_s']:.2f} img/s", file=sys.stderr)
                results[(model, mode, peer)] = res

    print(f'\nbatch {args.batch_size}, {args.image_size}x{args.image_size}, CPU '
          f'({os.cpu_count()} cores); images/s = batch / median step time; compile = first '
          f'step - median step (graph mode only)\n')
    print('| model | mode | mindcoat img/s | timm img/s | MindCV img/s | vs timm | vs MindCV '
          '| compile s (mindcoat / MindCV) | peak MB (mindcoat / timm / MindCV) |')
    print('|---|---|---|---|---|---|---|---|---|')
    for model in args.models:
        for mode in args.modes:
            mc, tm, cv = (results.get((model, mode, peer)) or {} for peer in pythons)
            print(f"| {model} | {mode} | {_fmt(mc.get('images_per_s'), 2)} "
                  f"| {_fmt(tm.get('images_per_s'), 2)} | {_fmt(cv.get('images_per_s'), 2)} "
                  f"| {_ratio(mc.get('images_per_s'), tm.get('images_per_s'))} "
                  f"| {_ratio(mc.get('images_per_s'), cv.get('images_per_s'))} "
                  f"| {_fmt(mc.get('compile_s'))} / {_fmt(cv.get('compile_s'))} "
                  f"| {_fmt(mc.get('peak_rss_mb'), 0)} / {_fmt(tm.get('peak_rss_mb'), 0)} / "
                  f"{_fmt(cv.get('peak_rss_mb'), 0)} |")
    if args.json_out:
        with open(args.json_out, 'w') as f:
            json.dump([{'model': m, 'mode': md, 'system': peer, **(r or {})}
                       for (m, md, peer), r in results.items()], f, indent=1)


if __name__ == '__main__':
    main()
