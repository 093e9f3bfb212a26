"""Where a step's time goes, per kernel: mindcoat's inference or trainer step on the CPU under
MindSpore's profiler, each op's time summed per kernel (a CPU kernel of csrc/ by its entry point,
e.g. LinearFwd or FactorAttBwd; a native op by its primitive, e.g. MatMul), ms per step.

    python tools/profile_step.py --model coat_tiny --mode train
    python tools/profile_step.py --model coat_lite_tiny --mode infer --top 15

The step is the one `python -m mindcoat.benchmark` times (train: built from the variant's recipe
YAML, as train.py builds it). The profiler names an op by its scope only (`.../Custom-op27`), so
the graph is compiled once more with IR saving on, and each profiled op is mapped to the kernel
the saved kernel graph gives it. Op times are the profiler's (per op, on the host); their sum is
below the step's wall time by the framework's scheduling between ops."""
import argparse
import collections
import csv
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = r'''
import os, sys, time
import mindspore as ms
ms.set_device('CPU')
ms.set_context(mode=ms.GRAPH_MODE, jit_config={'jit_level': 'O0'})
from mindcoat import benchmark
model, mode, batch, size, steps, out = sys.argv[1:7]
batch, size, steps = int(batch), int(size), int(steps)
if mode == 'train':
    model, cfg, _ = benchmark.load_train_config(model, None)
    net = benchmark._build(model, 1000, dict(cfg.model_kwargs or {}, drop_rate=cfg.drop_rate,
                                             drop_path_rate=cfg.drop_path_rate))
    step, _ = benchmark.make_train_step(net, cfg, batch, size)
else:
    step = benchmark.make_infer_step(benchmark._build(model, 1000, {}), batch, size)
step()
if out == '-':  # the IR-saving run: one compile is all it is for
    sys.exit(0)
step()
from mindspore import Profiler
profiler = Profiler(output_path=out)
start = time.perf_counter()
for _ in range(steps):
    step()
print('wall', (time.perf_counter() - start) / steps)
profiler.analyse()
'''


def kernel_names(ir_dir):
    """{op's full scope name: kernel} from the saved kernel graph (graph_build_*.ir)."""
    names = {}
    for path in glob.glob(os.path.join(ir_dir, 'graph_build_*.ir')):
        kernel = None
        with open(path) as f:
            for line in f:
                node = re.match(r'\s+%\d+\([^)]*\) = (\w+)\(', line)
                if node:
                    entry = re.search(r'func_name: "[^"]*:(\w+)"', line)
                    kernel = entry.group(1) if entry else node.group(1).replace('PrimFunc_', '')
                    continue
                scope = re.search(r'# Fullname with scope: \((.*)\)', line)
                if scope and kernel:
                    names[scope.group(1)] = kernel
                    kernel = None
    return names


def op_times(prof_dir, steps):
    """[(full scope name, op type, ms per step)] from the profiler's cpu_op_detail_info."""
    found = glob.glob(os.path.join(prof_dir, '**', 'cpu_op_detail_info_*.csv'), recursive=True)
    if not found:
        raise SystemExit(f'profile_step: the profiler wrote no op table under {prof_dir}')
    with open(found[0]) as f:
        return [(row['full_op_name'], row['op_type'], float(row['op_total_time(ms)']) / steps)
                for row in csv.DictReader(f)]


def run(cmd, env):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f'profile_step: {" ".join(cmd[:4])} ... failed:\n{res.stderr[-2000:]}')
    return res.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='coat_lite_tiny')
    p.add_argument('--mode', choices=('infer', 'train'), default='train')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--steps', type=int, default=2, help='profiled steps (after two untimed)')
    p.add_argument('--top', type=int, default=25, help='kernels listed')
    args = p.parse_args(argv)
    env = dict(os.environ, GLOG_v='3', PYTHONPATH=REPO + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    shape = [args.model, args.mode, str(args.batch_size), str(args.image_size), str(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        ir_dir, prof_dir = os.path.join(tmp, 'ir'), os.path.join(tmp, 'profile')
        run([sys.executable, '-c', CHILD, *shape, '-'],
            dict(env, MS_DEV_SAVE_GRAPHS='1', MS_DEV_DUMP_IR_PASSES='graph_build',
                 MS_DEV_SAVE_GRAPHS_PATH=ir_dir))
        out = run([sys.executable, '-c', CHILD, *shape, prof_dir], env)
        wall = float(re.search(r'^wall (\S+)', out, re.M).group(1)) * 1000
        names = kernel_names(ir_dir)
        times, calls, unknown = collections.Counter(), collections.Counter(), 0
        for scope, op_type, ms in op_times(prof_dir, args.steps):
            kernel = names.get(scope)
            if kernel is None:
                unknown += 1
                kernel = op_type + ' (unmapped)'
            times[kernel] += ms
            calls[kernel] += 1
    total = sum(times.values())
    print(f'{args.model} {args.mode} batch {args.batch_size} {args.image_size}px: '
          f'{wall:.0f} ms per step (wall, profiled), {total:.0f} ms in ops; '
          f'{time.strftime("%Y-%m-%d %H:%M")}')
    print(f'{"kernel":24s} {"ms/step":>9s} {"share":>6s} {"ops":>5s}')
    for kernel, ms in times.most_common(args.top):
        print(f'{kernel:24s} {ms:9.1f} {ms / total:6.1%} {calls[kernel]:5d}')
    rest = total - sum(ms for _, ms in times.most_common(args.top))
    print(f'{"(the rest)":24s} {rest:9.1f} {rest / total:6.1%}')
    if unknown:
        print(f'{unknown} ops not found in the saved graph (listed by op type)')


if __name__ == '__main__':
    main()
