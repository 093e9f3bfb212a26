"""Times the CPU kernels of csrc/ called directly (ctypes), on a variant's own shapes: the linear
layers' products (LinearFwd, LinearGradX, LinearGradXMul, LinearGradW) and LayerNorm
(LayerNormFwd, LayerNormBwd), batch 16. With --against, the same kernels built from another
checkout (e.g. a `git worktree` of an older commit) are timed in the same process, the two
builds alternating call by call, so both see the same machine state.

    python tools/time_kernels.py --model coat_small
    git worktree add /tmp/old 2f86f2a
    python tools/time_kernels.py --model coat_small --kernels LinearGradX LinearGradXMul \\
        --against /tmp/old
    python tools/time_kernels.py --model coat_tiny --kernels LinearFwd --offset 16

--offset places every buffer that many bytes past a 64-byte boundary (MindSpore's CPU memory
pool hands kernels buffers 16 bytes past one). Times are medians of --reps calls (ms) after one
untimed call; GFLOP/s counts 2 multiply-adds per product term."""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCTS = ('LinearFwd', 'LinearGradX', 'LinearGradXMul', 'LinearGradW')
KERNELS = PRODUCTS + ('LayerNormFwd', 'LayerNormBwd')
LIBRARY = {name: 'linear.cc' if name in PRODUCTS else 'transformer.cc' for name in KERNELS}
sys.path.insert(0, REPO)  # this checkout's mindcoat, also when run from elsewhere


def stage_shapes(model, batch):
    """[(rows, channels, mlp ratio)] per stage of the variant: its tokens (+ class token)."""
    from mindcoat.models.registry import ARCHS, DATA_CONFIGS
    arch, size = ARCHS[model], DATA_CONFIGS[model]['input_size'][-1]
    return [(batch * (1 + (size // 2 ** (i + 2)) ** 2), dim, ratio)
            for i, (dim, ratio) in enumerate(zip(arch['embed_dims'], arch['mlp_ratios']))]


def cases(model, batch):
    """[(kernel, (rows, in, out))], each once: per stage the products of its linear layers (qkv,
    proj, fc1, fc2; LinearGradXMul is fc2's input gradient, GELU's backward in its epilogue) and
    its LayerNorm (in = out = channels)."""
    found = []
    for rows, dim, ratio in stage_shapes(model, batch):
        fc2 = (rows, ratio * dim, dim)
        layers = [(rows, dim, 3 * dim), (rows, dim, dim), (rows, dim, ratio * dim), fc2]
        for kernel in KERNELS:
            shapes = {'LinearGradXMul': [fc2], 'LayerNormFwd': [(rows, dim, dim)],
                      'LayerNormBwd': [(rows, dim, dim)]}.get(kernel, layers)
            found += [(kernel, shape) for shape in shapes if (kernel, shape) not in found]
    return found


def build_libraries(checkout):
    """{source: library path} of checkout's csrc, built (or found in the cache) by its own
    mindcoat.ops.build in a subprocess."""
    code = ('import json; from mindcoat.ops.build import build, why; '
            'print(json.dumps({s: build(s) or "unusable: " + why(s) '
            'for s in ("linear.cc", "transformer.cc")}))')
    env = dict(os.environ, PYTHONPATH=checkout)
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                         cwd=checkout, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f'time_kernels: building {checkout} failed:\n{res.stderr[-2000:]}')
    libs = json.loads(res.stdout.strip().splitlines()[-1])
    for source, path in libs.items():
        if path.startswith('unusable'):
            raise SystemExit(f'time_kernels: {checkout} csrc/{source} is {path}')
    return libs


def buffer(shape, offset, rng=None):
    """float32 array of shape whose data starts offset bytes past a 64-byte boundary."""
    n = int(np.prod(shape))
    raw = np.empty(n + 32, np.float32)
    skip = ((offset - raw.ctypes.data) % 64) // 4
    out = raw[skip:skip + n].reshape(shape)
    out[...] = rng.standard_normal(shape, dtype=np.float32) if rng is not None else 0.0
    return out


class Kernel:
    """One entry point of a library, called as MindSpore calls an aot Custom op."""

    def __init__(self, path, name):
        self.fn = getattr(ctypes.CDLL(path), name)

    def __call__(self, arrays):
        n = len(arrays)
        params = (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays])
        ndims = (ctypes.c_int * n)(*[a.ndim for a in arrays])
        dims = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
        shapes = (ctypes.POINTER(ctypes.c_int64) * n)(
            *[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims])
        dtypes = (ctypes.c_char_p * n)(*[b'float32'] * n)
        if self.fn(n, params, ndims, shapes, dtypes, None, None) != 0:
            raise SystemExit(f'time_kernels: {self.fn.__name__} refused {[a.shape for a in arrays]}')


def operands(kernel, shape, offset, rng):
    """The kernel's arrays (inputs then outputs) for a layer of shape (rows, in, out)."""
    rows, cin, cout = shape

    def data(*dims):
        return buffer(dims, offset, rng)

    def out(*dims):
        return buffer(dims, offset)

    eps = np.full((1,), 1e-6, np.float32)
    return {
        'LinearFwd': lambda: [data(rows, cin), data(cout, cin), data(cout), out(rows, cout)],
        'LinearGradX': lambda: [data(rows, cout), data(cout, cin), out(rows, cin)],
        'LinearGradXMul': lambda: [data(rows, cout), data(cout, cin), data(rows, cin),
                                   out(rows, cin)],
        'LinearGradW': lambda: [data(rows, cout), data(rows, cin), out(cout, cin)],
        'LayerNormFwd': lambda: [data(rows, cin), data(cin), data(cin), eps, out(rows, cin)],
        'LayerNormBwd': lambda: [data(rows, cin), data(rows, cin), data(cin), eps,
                                 out(rows, cin), out(2 * cin)],
    }[kernel]()


def median_ms(calls, arrays, reps):
    """Median ms of each callable in calls over reps rounds, calls alternating within a round."""
    for call in calls:
        call(arrays)
    times = [[] for _ in calls]
    for _ in range(reps):
        for call, ts in zip(calls, times):
            start = time.perf_counter()
            call(arrays)
            ts.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(ts) for ts in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='coat_tiny')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--kernels', nargs='+', choices=KERNELS, default=list(KERNELS))
    parser.add_argument('--against', help='another checkout: its kernels timed alongside')
    parser.add_argument('--offset', type=int, default=0, choices=range(0, 64, 4), metavar='0..60')
    parser.add_argument('--reps', type=int, default=8)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    builds = [('this', build_libraries(REPO))]
    if args.against:
        builds.append((os.path.abspath(args.against), build_libraries(args.against)))
    from mindcoat.ops import build  # sets MINDCOAT_NUM_THREADS before a library reads it
    # the linear library needs MindSpore's oneDNN already loaded, as it is under MindSpore
    ctypes.CDLL(os.path.join(build.dnnl_dir(), 'libdnnl.so.3'), mode=ctypes.RTLD_GLOBAL)
    rng = np.random.default_rng(0)
    rows = []
    for kernel, shape in cases(args.model, args.batch_size):
        if kernel not in args.kernels:
            continue
        calls = [Kernel(libs[LIBRARY[kernel]], kernel) for _, libs in builds]
        times = median_ms(calls, operands(kernel, shape, args.offset, rng), args.reps)
        row = dict(kernel=kernel, rows=shape[0], cin=shape[1], cout=shape[2], ms=times)
        if kernel in PRODUCTS:
            row['gflops'] = [2 * shape[0] * shape[1] * shape[2] / t / 1e6 for t in times]
        rows.append(row)
        if not args.json:
            text = ' / '.join(f'{t:8.2f}' for t in times)
            rate = ' / '.join(f'{g:4.0f}' for g in row.get('gflops', []))
            ratio = f'  {times[1] / times[0]:.2f}x' if len(times) > 1 else ''
            print(f'{kernel:15s} {shape[0]:6d} x {shape[1]:4d} -> {shape[2]:4d}  ms {text}'
                  f'{"  GFLOP/s " + rate if rate else ""}{ratio}', flush=True)
    total = [sum(r['ms'][i] for r in rows) for i in range(len(builds))]
    if args.json:
        print(json.dumps(dict(model=args.model, offset=args.offset, builds=[b for b, _ in builds],
                              rows=rows, total_ms=total)))
    else:
        names = ' / '.join(b for b, _ in builds)
        print(f'total ms ({names}): ' + ' / '.join(f'{t:.1f}' for t in total) +
              (f'  {total[1] / total[0]:.2f}x' if len(total) > 1 else ''))


if __name__ == '__main__':
    main()
