"""Speed and peak memory of mindcoat, timm's CoaT (PyTorch eager) and MindCV 0.3.0's CoaT, all
eight variants, measured in one run on one machine (a dev tool: torch, timm and mindcv are never
mindcoat dependencies).

    python tools/compare_speed.py                  # everything; see --help for the knobs

For every variant (its own input size: 384 for coat_lite_medium_384) three measurements:
inference and training at batch 16 (images/s) and batch-1 inference latency (ms). Training is
the trainer's own step built from the variant's recipe (configs/coat/<model>_ascend.yaml:
AdamW, EMA, gradient clipping, drop path as configured; float32 on the CPU, as train.py), and
the peers run the same recipe their own way: timm with timm's AdamW groups, ModelEmaV2 and
clip_grad_norm_ (the official trainer's step), MindCV with its create_optimizer and TrainStep.

Every measurement runs in its own subprocess, in the interpreter of the environment that has the
framework, so the peak RSS reported is that one measurement's. The systems' processes start and
warm up one after another, then take their timed steps in turns, one step each (the others idle
meanwhile), so a change in the machine's speed (which drifted by 20-40% within minutes on the
shared machines this was written on) falls on all of them alike; a process that would not fit in
memory beside the running ones is measured on its own afterwards. The load averages before and
after each measurement are kept with its numbers. A
measurement that drives the machine's free memory under --min_free_gb is stopped (the machine is
shared). Writes a markdown table with mindcoat/timm ratios and a JSON of every raw number.
"""
import argparse
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = ('mindcoat', 'timm', 'mindcv')
# measurement -> (mode, batch size or None for --batch_size, unit, goal for mindcoat/timm)
MEASUREMENTS = {
    'infer': ('infer', None, 'img/s', ('>=', 1.5)),
    'train': ('train', None, 'img/s', ('>=', 1.3)),
    'latency': ('infer', 1, 'ms', ('<=', 1.0)),
}


# ---- workers (run inside the peer's environment) ----------------------------------------------

def _peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pace():
    """As mindcoat.benchmark --paced: 'PACE' on stdout, then wait for the driver's line."""
    print('PACE', flush=True)
    if not sys.stdin.readline():
        sys.exit('stdin closed before the next step')


def _time(step, steps, warmup, paced=False):
    import statistics
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if paced:
            _pace()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {'ms_per_step': median * 1000, 'first_step_s': first,
            'step_times_ms': [t * 1000 for t in times], 'steps': steps, 'warmup': warmup}


def _timm_train_step(model, x, target, recipe):
    """The official trainer's step (timm): AdamW with timm's decay groups, soft-target CE,
    backward, clipping by global norm, optimizer step, then the EMA update."""
    import timm.optim
    import timm.utils
    import torch

    opt = timm.optim.create_optimizer_v2(
        model, opt='adamw', lr=recipe['lr'], weight_decay=recipe['weight_decay'],
        filter_bias_and_bn=recipe['filter_bias_and_bn'], betas=tuple(recipe['betas']),
        eps=recipe['eps'])
    ema = timm.utils.ModelEmaV2(model, decay=recipe['ema_decay']) if recipe['ema'] else None
    clip = recipe['clip_value'] if recipe['clip_grad'] else None

    def step():
        loss = torch.sum(-target * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if ema is not None:
            ema.update(model)
        return loss.item()

    return step


def _worker_timm(args, recipe):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000, img_size=args.image_size,
                              drop_rate=recipe['drop_rate'],
                              drop_path_rate=recipe['drop_path_rate'])
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    if args.mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        smoothing = recipe['label_smoothing']
        target = torch.full((args.batch_size, 1000), smoothing / 1000)
        target[torch.arange(args.batch_size),
               torch.randint(0, 1000, (args.batch_size,))] += 1 - smoothing
        step = _timm_train_step(model, x, target, recipe)
    res = _time(step, args.steps, args.warmup, args.paced)
    return dict(res, compile_s=None, peak_rss_mb=_peak_rss_mb(),
                framework=f'torch {torch.__version__}, timm {timm.__version__}',
                threads=torch.get_num_threads())


def _mindcv_train_step(net, x, target, recipe):
    """MindCV's own training step: its create_optimizer (AdamW, norm/bias decay filter), its
    TrainStep (EMA, clipping) around a WithLossCell, float32 (loss scale 1)."""
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.utils.train_step import TrainStep

    opt = create_optimizer(net, opt='adamw', lr=recipe['lr'], weight_decay=recipe['weight_decay'],
                           weight_decay_filter='norm_and_bias' if recipe['filter_bias_and_bn']
                           else 'disable', eps=recipe['eps'])
    train = TrainStep(ms.nn.WithLossCell(net, create_loss('ce')), opt,
                      scale_sense=ms.Tensor(1.0, ms.float32), ema=recipe['ema'],
                      ema_decay=recipe['ema_decay'], clip_grad=recipe['clip_grad'],
                      clip_value=recipe['clip_value'])
    train.set_train(True)
    return lambda: train(x, target).asnumpy()


def _worker_mindcv(args, recipe):
    import mindspore as ms
    import mindcv
    import numpy as np
    from mindcv.models import create_model

    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = create_model(args.model, num_classes=1000, drop_rate=recipe['drop_rate'],
                       drop_path_rate=recipe['drop_path_rate'])
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(args.batch_size, 3, args.image_size, args.image_size))
                  .astype(np.float32))
    if args.mode == 'infer':
        net.set_train(False)
        step = lambda: net(x).asnumpy()  # noqa: E731
    else:
        smoothing = recipe['label_smoothing']
        target = np.full((args.batch_size, 1000), smoothing / 1000, np.float32)
        target[np.arange(args.batch_size), rng.integers(0, 1000, args.batch_size)] += \
            1 - smoothing
        step = _mindcv_train_step(net, x, ms.Tensor(target), recipe)
    res = _time(step, args.steps, args.warmup, args.paced)
    return dict(res, compile_s=max(res['first_step_s'] - res['ms_per_step'] / 1000, 0.0),
                peak_rss_mb=_peak_rss_mb(),
                framework=f'mindspore {ms.__version__}, mindcv {mindcv.__version__}')


def worker_main(args):
    recipe = json.loads(args.recipe)
    fn = _worker_timm if args.worker == 'timm' else _worker_mindcv
    res = fn(args, recipe)
    res['images_per_s'] = args.batch_size / (res['ms_per_step'] / 1000)
    print(json.dumps(res), flush=True)
    os._exit(0)  # MindSpore's interpreter shutdown prints spurious errors; the JSON is out


# ---- driver: plan ------------------------------------------------------------------------------

def recipe_for(model):
    """The recipe values the peers mirror, from the variant's shipped config (the file the
    mindcoat benchmark builds its step from)."""
    from mindcoat.benchmark import load_train_config

    _, cfg, path = load_train_config(model)
    keys = ('lr', 'weight_decay', 'filter_bias_and_bn', 'betas', 'eps', 'ema', 'ema_decay',
            'clip_grad', 'clip_value', 'drop_rate', 'drop_path_rate', 'label_smoothing')
    return path, {k: getattr(cfg, k) for k in keys}


def image_size_of(model):
    from mindcoat.models import DATA_CONFIGS
    return DATA_CONFIGS[model]['input_size'][-1]


def peer_variants(python, system):
    """The CoaT variants the peer's framework has (MindCV 0.3.0 lacks coat_lite_medium_384)."""
    code = {'timm': "import json, timm; print(json.dumps(timm.list_models('coat_*')))",
            'mindcv': "import json; from mindcv.models import list_models; "
                      "print(json.dumps(list_models('coat_*')))"}[system]
    res = subprocess.run([python, '-c', code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, GLOG_v='3'))
    lines = res.stdout.strip().splitlines()
    return set(json.loads(lines[-1])) if res.returncode == 0 and lines else set()


def command(system, python, model, measurement, args, recipe_path, recipe):
    mode, batch, _, _ = MEASUREMENTS[measurement]
    batch = batch or args.batch_size
    if measurement == 'latency':
        steps, warmup = args.latency_steps, args.latency_warmup
    elif system == 'mindcv':
        steps, warmup = args.mindcv_steps, args.mindcv_warmup
    else:
        steps, warmup = args.steps, args.warmup
    common = ['--model', model, '--mode', mode, '--batch_size', str(batch), '--image_size',
              str(image_size_of(model)), '--steps', str(steps), '--warmup', str(warmup)]
    if system == 'mindcoat':
        extra = ['--config', recipe_path] if mode == 'train' else []
        return [python, '-m', 'mindcoat.benchmark', '--json', '--paced', '--device', 'CPU',
                *common, *extra], steps
    return [python, os.path.abspath(__file__), '--worker', system, '--paced', '--recipe',
            json.dumps(recipe), *common], steps


# ---- driver: run one measurement ---------------------------------------------------------------

def _meminfo_gb(key='MemAvailable'):
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def _rss_gb(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return 0.0


class _Stop(Exception):
    """A measurement stopped before its result: ``system`` (None: the whole group) and why."""

    def __init__(self, system, why):
        super().__init__(why)
        self.system, self.why = system, why


class Worker:
    """One system's measuring process, in a scratch directory (MindSpore drops rank_0/ and
    kernel_meta/ into the cwd) and its own process group, paced through stdin/stdout: it says
    'PACE' before each timed step and takes the step when the driver sends a line."""

    def __init__(self, system, cmd, steps):
        env = dict(os.environ, GLOG_v='3',
                   PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
        self.system, self.cmd, self.steps, self.taken = system, cmd, steps, 0
        self.result = None
        self.cwd = tempfile.mkdtemp(prefix='compare_speed_')
        self.err = open(os.path.join(self.cwd, 'stderr'), 'w')
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, cwd=self.cwd, env=env, text=True,
                                     start_new_session=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait(self, group, limits, start):
        """Until the next 'PACE' or, after the last step, the result."""
        while True:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                _check(group, limits, start)
                continue
            if line is None:
                raise _Stop(self.system, self._last_error())
            if line == 'PACE':
                return
            if line.startswith('{'):
                self.result = json.loads(line)
                return

    def step(self, group, limits, start):
        self.proc.stdin.write('\n')
        self.proc.stdin.flush()
        self.taken += 1
        self.wait(group, limits, start)

    def _last_error(self):
        self.err.flush()
        with open(os.path.join(self.cwd, 'stderr')) as f:
            lines = f.read().strip().splitlines()
        return (lines or ['no output'])[-1][:300]

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.err.close()
        shutil.rmtree(self.cwd, ignore_errors=True)


def _check(group, limits, start):
    """Stops the group on timeout or when memory runs short."""
    if time.time() - start > limits.timeout:
        raise _Stop(None, f'timed out after {limits.timeout} s')
    for w in group:
        rss = _rss_gb(w.proc.pid)
        if rss > limits.max_rss_gb:
            raise _Stop(w.system, f'stopped at {rss:.1f} GB RSS (over --max_rss_gb '
                                  f'{limits.max_rss_gb})')
    free = _meminfo_gb()
    if free is not None and free < limits.min_free_gb:
        raise _Stop(None, f'stopped: the machine had under {limits.min_free_gb} GB free')


def _room_for_another(group, limits):
    """Whether one more process about the size of the largest running one fits in memory."""
    free = _meminfo_gb()
    return free is None or free - 1.25 * max(_rss_gb(w.proc.pid) for w in group) > \
        limits.min_free_gb


def run_lockstep(jobs, limits):
    """Runs one measurement of several systems, ``jobs`` = [(system, cmd, timed steps)], their
    timed steps taking turns one step at a time (each process idles while another steps), so
    that a change in the machine's speed falls on all of them alike. Each starts and warms up
    while the others wait; a system that would not fit in memory beside those running goes in
    a later group. Returns {system: (result or None, error or None, [systems stepped with])}.
    A group stopped for time or memory is run again one system at a time."""
    out, pending, alone = {}, list(jobs), []
    while pending or alone:
        solo = not pending
        waiting = alone if solo else pending
        group, start = [], time.time()
        try:
            while waiting and (not group or (not solo and _room_for_another(group, limits))):
                system, cmd, steps = waiting.pop(0)
                group.append(Worker(system, cmd, steps))
                group[-1].wait(group, limits, start)
            for _ in range(max(w.steps for w in group)):
                for w in group:
                    if w.taken < w.steps:
                        w.step(group, limits, start)
            for w in group:
                out[w.system] = (w.result, None if w.result else 'no result',
                                 [x.system for x in group])
        except _Stop as e:
            for w in group:
                if len(group) == 1 or w.system == e.system:
                    out[w.system] = (None, e.why, [w.system])
                else:
                    alone.append((w.system, w.cmd, w.steps))
        finally:
            for w in group:
                w.close()
    return out


# ---- driver: report ----------------------------------------------------------------------------

def _fmt(v, digits=1):
    return '—' if v is None else f'{v:.{digits}f}'


def _value(res, measurement):
    if not res:
        return None
    return res.get('ms_per_step') if measurement == 'latency' else res.get('images_per_s')


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _goal(ratio, goal):
    op, limit = goal
    if ratio is None:
        return f'{op} {limit:.2f}'
    met = ratio >= limit if op == '>=' else ratio <= limit
    return f"{op} {limit:.2f} {'yes' if met else 'NO'}"


def table_rows(records, models):
    """One markdown row per (model, measurement)."""
    rows = []
    for model in models:
        for measurement, (_, _, unit, goal) in MEASUREMENTS.items():
            got = {r['system']: r for r in records
                   if r['model'] == model and r['measurement'] == measurement}
            if not got:
                continue
            res = {s: (got.get(s) or {}).get('result') for s in SYSTEMS}
            val = {s: _value(res[s], measurement) for s in SYSTEMS}
            mem = {s: (res[s] or {}).get('peak_rss_mb') for s in SYSTEMS}
            speed = _ratio(val['mindcoat'], val['timm'])
            mem_ratio = _ratio(mem['mindcoat'], mem['timm'])
            loads = [r['load_before'][0] for r in got.values()]
            batch = next(r['batch_size'] for r in got.values())
            size = next(r['image_size'] for r in got.values())
            cells = [model, f'{measurement} b{batch} {size}', unit,
                     *(_fmt(val[s], 2) if val[s] is not None else _failed(got.get(s))
                       for s in SYSTEMS),
                     _fmt(speed, 2) + ('x' if speed is not None else ''), _goal(speed, goal),
                     ' / '.join(_fmt(mem[s], 0) for s in SYSTEMS),
                     _fmt(mem_ratio, 2) + ('x' if mem_ratio is not None else ''),
                     _goal(mem_ratio, ('<=', 1.0)),
                     f"{_fmt((res['mindcoat'] or {}).get('compile_s'))} / "
                     f"{_fmt((res['mindcv'] or {}).get('compile_s'))}",
                     f'{min(loads):.1f}-{max(loads):.1f}']
            rows.append('| ' + ' | '.join(cells) + ' |')
    return rows


def _failed(record):
    return '—' if record is None else 'failed'


def markdown(records, models, header):
    lines = header + [
        '',
        '| model | measurement | unit | mindcoat | timm | MindCV | mindcoat/timm | goal '
        '| peak MB (mindcoat / timm / MindCV) | memory mindcoat/timm | goal | compile s '
        '(mindcoat / MindCV) | load (1-min) |',
        '|---|---|---|---:|---:|---:|---:|---|---|---:|---|---|---|',
        *table_rows(records, models)]
    failures = [f"- {r['system']} {r['model']} {r['measurement']}: {r['error']}"
                for r in records if r.get('error')]
    if failures:
        lines += ['', 'Not measured:', *failures]
    return '\n'.join(lines) + '\n'


def machine():
    info = {'cpus': os.cpu_count(), 'mem_total_gb': _meminfo_gb('MemTotal'),
            'platform': platform.platform()}
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=30).stdout
        info['cpu_model'] = next((line.split(':', 1)[1].strip() for line in out.splitlines()
                                  if line.startswith('Model name')), None)
        flags = next((line for line in out.splitlines() if line.startswith('Flags')), '')
        info['avx512'] = 'avx512f' in flags
    except (OSError, subprocess.SubprocessError):
        info['cpu_model'] = None
    return info


# ---- driver ------------------------------------------------------------------------------------

def _cost(model):
    """Rough size of a variant, to run the cheap ones first (a stopped run has those)."""
    from mindcoat.models import ARCHS, DATA_CONFIGS
    arch = ARCHS[model]
    depth = sum(arch['serial_depths']) + arch.get('parallel_depth', 0)
    return DATA_CONFIGS[model]['input_size'][-1], max(arch['embed_dims']) * depth


def _has(python, module):
    if not python or not os.path.exists(python):
        return False
    return subprocess.run([python, '-c', f'import {module}'], capture_output=True,
                          timeout=300).returncode == 0


def find_pythons(args):
    """system -> interpreter (None: skipped, with a note)."""
    wanted = {'mindcoat': (args.mindcoat_python, [sys.executable, '/work/venv/bin/python'],
                           'mindspore'),
              'timm': (args.torch_python, ['/tmp/torch/bin/python', sys.executable], 'timm'),
              'mindcv': (args.mindcv_python, ['/tmp/mindcv/bin/python', sys.executable],
                         'mindcv')}
    pythons = {}
    for system, (given, candidates, module) in wanted.items():
        py = None
        if system not in args.skip:
            py = next((c for c in ([given] if given else candidates) if _has(c, module)), None)
        pythons[system] = py
        note = ('skipped (--skip)' if system in args.skip else py or
                f'no interpreter with {module} ({given or ", ".join(candidates)}); skipped')
        _progress(f'{system}: {note}')
    return pythons


def _progress(text):
    print(f"[compare_speed {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def plan(models, pythons, args):
    """The measurements in run order: [(model, measurement, [systems])], the first system of
    each rotating (it starts and warms up first)."""
    has = {s: set(models) if s == 'mindcoat' else peer_variants(py, s)
           for s, py in pythons.items() if py}
    available = {(s, m): m in has.get(s, ()) for s in pythons for m in models}
    wanted = {'mindcv': set(args.mindcv_measurements)}
    jobs, turn = [], 0
    for model in models:
        for measurement in args.measurements:
            order = SYSTEMS[turn % 3:] + SYSTEMS[:turn % 3]
            turn += 1
            systems = [s for s in order if available[(s, model)]
                       and measurement in wanted.get(s, MEASUREMENTS)]
            if systems:
                jobs.append((model, measurement, systems))
    return jobs


def save(records, models, header, args):
    text = markdown(records, models, header)
    with open(args.md, 'w') as f:
        f.write(text)
    with open(args.json_out, 'w') as f:
        json.dump({'header': header, 'machine': machine(), 'records': records}, f, indent=1)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=None, help='default: all eight')
    p.add_argument('--measurements', nargs='+', default=list(MEASUREMENTS),
                   choices=list(MEASUREMENTS))
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--steps', type=int, default=5, help='timed steps (median)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps after the first')
    p.add_argument('--latency_steps', type=int, default=20)
    p.add_argument('--latency_warmup', type=int, default=3)
    p.add_argument('--mindcv_steps', type=int, default=2, help='MindCV is slow: fewer steps')
    p.add_argument('--mindcv_warmup', type=int, default=0)
    p.add_argument('--mindcoat_python', default=None)
    p.add_argument('--torch_python', default=None, help='default: /tmp/torch/bin/python')
    p.add_argument('--mindcv_python', default=None, help='default: /tmp/mindcv/bin/python')
    p.add_argument('--skip', nargs='*', default=[], choices=SYSTEMS)
    p.add_argument('--timeout', type=int, default=1800, help='seconds per measurement')
    p.add_argument('--max_rss_gb', type=float, default=12.0,
                   help='stop a measurement whose process grows past this (a shared machine)')
    p.add_argument('--min_free_gb', type=float, default=2.0,
                   help='stop a measurement when the machine has less memory available')
    p.add_argument('--mindcv_measurements', nargs='*', default=list(MEASUREMENTS),
                   choices=list(MEASUREMENTS), help="MindCV's (its training step needs "
                   "~19 GB for coat_lite_tiny at batch 16)")
    p.add_argument('--md', default='compare_speed.md', help='markdown table written here')
    p.add_argument('--json_out', default='compare_speed.json', help='raw numbers written here')
    # worker side (internal)
    p.add_argument('--worker', choices=('timm', 'mindcv'), help=argparse.SUPPRESS)
    p.add_argument('--recipe', help=argparse.SUPPRESS)
    p.add_argument('--model', help=argparse.SUPPRESS)
    p.add_argument('--mode', help=argparse.SUPPRESS)
    p.add_argument('--image_size', type=int, help=argparse.SUPPRESS)
    p.add_argument('--paced', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    sys.path.insert(0, REPO)  # this checkout's mindcoat, as its subprocesses get (PYTHONPATH)
    from mindcoat.models import list_models

    models = args.models or sorted(list_models(), key=_cost)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(list_models())}")
    info = machine()
    _progress(f"{info.get('cpu_model')}, {info['cpus']} CPUs, {info['mem_total_gb']:.0f} GB")
    pythons = find_pythons(args)
    recipes = {m: recipe_for(m) for m in models}
    jobs = plan(models, pythons, args)
    header = [f"compare_speed {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"{info.get('cpu_model')}, {info['cpus']} CPUs, {info['mem_total_gb']:.0f} GB; "
              f"`{' '.join(['python', 'tools/compare_speed.py', *sys.argv[1:]])}`",
              f"img/s = batch / median step ({args.steps} timed after {args.warmup} warm-up; "
              f"MindCV {args.mindcv_steps} after {args.mindcv_warmup}); latency = median of "
              f"{args.latency_steps} batch-1 steps; the systems' timed steps take turns one "
              f"step at a time (where their processes fit in memory together); peak MB = the "
              f"measuring process's RSS high-water; load = 1-minute load average at the start "
              f"of the row's runs"]
    records = []
    for i, (model, measurement, systems) in enumerate(jobs, 1):
        recipe_path, recipe = recipes[model]
        cmds = {s: command(s, pythons[s], model, measurement, args, recipe_path, recipe)
                for s in systems}
        load = os.getloadavg()
        _progress(f"{i}/{len(jobs)} {model} {measurement}: {', '.join(systems)} step by step "
                  f"(load {' '.join(f'{x:.2f}' for x in load)}) ...")
        start = time.time()
        results = run_lockstep([(s, *cmds[s]) for s in systems], args)
        mode, batch, unit, _ = MEASUREMENTS[measurement]
        for system in systems:
            res, err, peers = results[system]
            records.append({'system': system, 'model': model, 'measurement': measurement,
                            'mode': mode, 'batch_size': batch or args.batch_size,
                            'image_size': image_size_of(model), 'result': res, 'error': err,
                            'stepped_with': peers, 'load_before': list(load),
                            'load_after': list(os.getloadavg()),
                            'wall_s': time.time() - start, 'command': cmds[system][0][1:]})
            shown = err or (f"{_value(res, measurement):.2f} {unit}, peak "
                            f"{res['peak_rss_mb']:.0f} MB")
            _progress(f"    {system}: {shown} (with {', '.join(peers)})")
        save(records, models, header, args)  # a stopped run keeps what it measured
    text = save(records, models, header, args)
    print(text)
    _progress(f'wrote {args.md} and {args.json_out}')


if __name__ == '__main__':
    main()
