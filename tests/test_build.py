"""How the CPU kernels are shipped, built, cached and probed, and what happens when that fails.

Every failure must end on MindSpore's native operators with one warning and the logits of the
fast path; nothing may crash the process. The failure cases run in subprocesses, each with its
own empty cache (the build's per-process caches would otherwise hide the case), and only build
the one library they are about (the other ops are switched to native)."""
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest

import mindcoat
from mindcoat.ops import build, dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
OTHER_OPS_NATIVE = {'MINDCOAT_NATIVE_ATTENTION': '1', 'MINDCOAT_NATIVE_RESIZE': '1',
                    'MINDCOAT_NATIVE_LINEAR': '1', 'MINDCOAT_NATIVE_LAYERNORM': '1',
                    'MINDCOAT_NATIVE_GELU': '1', 'MINDCOAT_NATIVE_PATCH': '1'}

# A tiny CoaT-Lite forward (PyNative); prints the mindcoat warnings and each op's path.
FORWARD = '''
import json, logging, sys
import mindspore as ms, numpy as np
ms.set_device('CPU')
ms.set_context(mode=ms.PYNATIVE_MODE)  # the native path compiles slowly in graph mode
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger('mindcoat').addHandler(Keep(logging.WARNING))
import mindcoat
from mindcoat.ops import dispatch
model = mindcoat.create_model('coat_lite_tiny', num_classes=5, **json.loads(sys.argv[1]))
ms.load_param_into_net(model, ms.load_checkpoint(sys.argv[2]))
model.set_train(False)
np.save(sys.argv[4], model(ms.Tensor(np.load(sys.argv[3]))).asnumpy())
print(json.dumps({'warnings': warnings,
                  'fast': {op: libs is not None for (op, _), libs in dispatch._choices.items()}}))
'''


def _env(**updates):
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for name in list(env):
        if name.startswith('MINDCOAT_NATIVE') or name in ('CXX', 'MINDCOAT_DNNL_DIR'):
            del env[name]
    env.update(updates)
    return env


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A seeded tiny CoaT-Lite saved as a checkpoint, an input, and its fast-path logits."""
    tmp = tmp_path_factory.mktemp('tiny')
    ms.set_context(mode=ms.GRAPH_MODE)
    model = mindcoat.create_model('coat_lite_tiny', num_classes=5, **TINY)
    rng = np.random.default_rng(0)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    ms.save_checkpoint(model, str(tmp / 'tiny.ckpt'))
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.save(tmp / 'x.npy', x)
    model.set_train(False)
    logits = model(ms.Tensor(x)).asnumpy()
    assert dispatch.fast_path('dwconv') and dispatch.fast_path('linear')  # really the fast path
    return {'ckpt': str(tmp / 'tiny.ckpt'), 'x': str(tmp / 'x.npy'), 'logits': logits}


def _forward(tiny, tmp_path, env):
    """Runs FORWARD in a subprocess: (its report, its logits)."""
    script = tmp_path / 'forward.py'
    script.write_text(FORWARD)
    out = tmp_path / 'logits.npy'
    res = subprocess.run([sys.executable, str(script), json.dumps(TINY), tiny['ckpt'], tiny['x'],
                          str(out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def _assert_native_like_fast(tiny, report, logits, ops, reason):
    """``ops`` went native with exactly one warning (containing ``reason``), same logits."""
    assert all(not report['fast'][op] for op in ops), report
    assert len(report['warnings']) == 1, report['warnings']
    assert reason in report['warnings'][0], report['warnings'][0]
    assert np.abs(logits - tiny['logits']).max() <= 1e-4 * max(1.0, np.abs(logits).max())


# ---- packaging ---------------------------------------------------------------------------------

def test_the_wheel_ships_every_file_of_the_package(tmp_path):
    """`pip install .` / a wheel used to leave out csrc/common.h, so every kernel failed to build
    on a user's machine. Every non-Python file of the package must be in the wheel, and the
    configs/ it trains from (as mindcoat/configs/)."""
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'MANIFEST.in', 'README.md'):
        shutil.copy(os.path.join(REPO, name), src)
    for name in ('mindcoat', 'configs'):
        shutil.copytree(os.path.join(REPO, name), src / name,
                        ignore=shutil.ignore_patterns('__pycache__'))
    res = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                          '--no-build-isolation', '-q', '.', '-w', str(tmp_path / 'dist')],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel, = (tmp_path / 'dist').glob('mindcoat-*.whl')
    shipped = set(zipfile.ZipFile(wheel).namelist())
    files = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, '/')
             for d, _, names in os.walk(src / 'mindcoat') for f in names}
    assert {'mindcoat/ops/csrc/common.h', 'mindcoat/ops/csrc/linear.cc'} <= files
    configs = {'mindcoat/' + os.path.relpath(os.path.join(d, f), src).replace(os.sep, '/')
               for d, _, names in os.walk(src / 'configs') for f in names}
    assert 'mindcoat/configs/demo/coat_lite_mnist.yaml' in configs
    assert sorted((files | configs) - shipped) == []


# ---- the kernels vectorise on every x86 instruction set -----------------------------------------

def _simd_loops(source, clause=''):
    """Line numbers (1-based) of the `#pragma omp simd` lines of csrc/<source> (with `clause`)."""
    with open(os.path.join(build.CSRC, source)) as f:
        return [i + 1 for i, line in enumerate(f)
                if line.strip().startswith('#pragma omp simd') and clause in line]


@pytest.mark.parametrize('march', ['x86-64-v3', 'x86-64-v4', 'skylake-avx512'])
def test_every_simd_loop_vectorises_with_avx2_and_with_avx512(march):
    """-march=native is AVX2 on some CPUs (AMD Zen 1-3, Intel before Skylake-SP) and AVX-512 on
    others. With the build's flags, gcc must vectorise every `#pragma omp simd` loop for both:
    without -fno-trapping-math, the seven loops around exp/erf (GELU, softmax, attention) stayed
    scalar with AVX2 only, and GELU ran 8x slower there than with it. GELU's loops must use
    512-bit vectors with AVX-512, also under an Intel core's tuning (skylake-avx512), where gcc
    otherwise keeps to 256 bits."""
    cxx = build.find_compiler()
    if cxx is None or 'g++' not in build.compiler_version(cxx).lower() or \
            os.uname().machine != 'x86_64':
        pytest.skip('needs gcc on x86-64 (its -fopt-info report)')
    flags = [f'-march={march}' if f == '-march=native' else f for f in build.FLAGS
             if f not in ('-shared', '-Wl,--no-undefined')]
    checked = wide = 0
    for source in sorted(os.listdir(build.CSRC)):
        loops = _simd_loops(source) if source.endswith('.cc') else []
        if not loops:
            continue
        res = subprocess.run([cxx, *flags, '-c', os.path.join(build.CSRC, source), '-o', os.devnull,
                              '-fopt-info-vec-optimized'], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        widths = {}  # line -> vector bytes gcc reports for it
        for n, size in re.findall(rf'{source}:(\d+):\d+: optimized: loop vectorized using '
                                  r'(\d+) byte vectors', res.stderr):
            widths.setdefault(int(n), set()).add(int(size))
        # gcc names the loop by the pragma, its `for` line or its first statement
        near = {p: set().union(*(widths.get(n, set()) for n in (p, p + 1, p + 2)))
                for p in loops}
        scalar = [p for p, sizes in near.items() if not sizes]
        assert scalar == [], f'{source} with -march={march}: loops at lines {scalar} stay scalar'
        # GELU's loops ask for 16 lanes where AVX-512 is there (csrc/common.h)
        want = 32 if march == 'x86-64-v3' else 64
        wide_loops = _simd_loops(source, 'simdlen(MINDCOAT_MATH_LANES)')
        narrow = [p for p in wide_loops if want not in near[p]]
        assert narrow == [], f'{source} with -march={march}: loops at lines {narrow} are not ' \
                             f'{want} bytes wide'
        wide += len(wide_loops)
        checked += len(loops)
    assert checked >= 20 and wide >= 3


# ---- python -m mindcoat.ops --------------------------------------------------------------------

def test_ops_report_says_each_path_and_why(tmp_path):
    cxx = _script(tmp_path / 'broken-cxx', '#!/bin/sh\necho "internal compiler error" >&2\n'
                  'exit 1\n')
    env = _env(CXX=cxx, MINDCOAT_NATIVE_GELU='1', MINDCOAT_CACHE=str(tmp_path / 'cache'))
    res = subprocess.run([sys.executable, '-m', 'mindcoat.ops'], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    rows = {ln.split()[0]: ln for ln in lines if ln.split() and ln.split()[0] in dispatch.OPS}
    assert sorted(rows) == sorted(dispatch.OPS)
    assert 'MINDCOAT_NATIVE_GELU is set' in rows['gelu'] and ' native ' in rows['gelu']
    for op in ('dwconv', 'crpe', 'attention', 'resize', 'linear', 'layernorm', 'conv'):
        assert ' native ' in rows[op] and 'internal compiler error' in rows[op], rows[op]
    for op in ('roi_align', 'nms'):  # host-side steps: their reference is NumPy
        assert ' NumPy ' in rows[op] and 'internal compiler error' in rows[op], rows[op]
    assert 'CPU fast path' in rows['patch']
    head = dict(ln.split(':', 1) for ln in lines if ln.split()[0] not in dispatch.OPS)
    assert head['cache'].strip() == str(tmp_path / 'cache')
    assert head['compiler'].strip() == cxx and head['threads'].strip().isdigit()
    assert head['target'].strip().startswith('unknown')
    assert res.stderr.count('mindcoat') == 0  # the table already says why: no warnings on top


def test_ops_report_all_fast_here_and_the_probe_runs_once_per_build(tmp_path):
    """On this CPU machine every op takes its fast path; a second run reuses the libraries and
    the probe verdicts recorded in the manifest (neither is rewritten)."""
    cmd = [sys.executable, '-m', 'mindcoat.ops', '--json']
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert {row['op']: row['path'] for row in report['ops']} == {op: 'fast' for op in dispatch.OPS}
    assert report['target'].startswith('-march=native = ')
    libs = {lib for row in report['ops'] for lib in row['detail'].split(', ')
            if lib.endswith('.so')}
    assert len(libs) == len(glob.glob(os.path.join(build.CSRC, '*.cc')))  # one per source
    manifest = os.path.join(os.path.dirname(min(libs)), build.MANIFEST)
    records = {path: os.stat(path).st_mtime_ns for path in libs | {manifest}}
    subprocess.run(cmd, capture_output=True, env=_env(), cwd=tmp_path, timeout=300, check=True)
    assert {path: os.stat(path).st_mtime_ns for path in records} == records


# ---- failures end on the native path -----------------------------------------------------------

def test_a_failing_compiler(tiny, tmp_path):
    cxx = _script(tmp_path / 'broken-cxx', '#!/bin/sh\necho "cc1plus: out of memory" >&2\nexit 1\n')
    env = _env(CXX=cxx, MINDCOAT_CACHE=str(tmp_path / 'cache'), **OTHER_OPS_NATIVE)
    report, logits = _forward(tiny, tmp_path, env)
    _assert_native_like_fast(tiny, report, logits, ('dwconv', 'crpe'), 'cc1plus: out of memory')


# The entry points linear.cc calls; `missing` is left out, `crashing` aborts.
FAKE_DNNL = '''
#include <stdlib.h>
typedef struct { int major, minor, patch; const char *hash; unsigned cpu, gpu; } version_t;
static const version_t v = {3, 0, 0, "fake", 0, 0};
const version_t *dnnl_version(void) { return &v; }
#define OK(name) int name() { return 0; }
OK(dnnl_engine_create) OK(dnnl_memory_desc_create_with_strides) OK(dnnl_memory_desc_destroy)
OK(dnnl_matmul_primitive_desc_create) OK(dnnl_primitive_desc_destroy) OK(dnnl_primitive_create)
OK(dnnl_memory_create) OK(dnnl_memory_destroy) OK(dnnl_primitive_execute) OK(dnnl_stream_wait)
OK(dnnl_primitive_attr_create) OK(dnnl_primitive_attr_destroy)
OK(dnnl_primitive_attr_set_post_ops) OK(dnnl_post_ops_create) OK(dnnl_post_ops_destroy)
OK(dnnl_post_ops_append_eltwise) OK(dnnl_post_ops_append_binary) OK(dnnl_get_effective_cpu_isa)
OK(dnnl_memory_desc_create_with_tag) OK(dnnl_memory_desc_clone) OK(dnnl_memory_desc_equal)
OK(dnnl_memory_desc_get_size) OK(dnnl_primitive_desc_query_md)
OK(dnnl_reorder_primitive_desc_create) OK(dnnl_convolution_forward_primitive_desc_create)
OK(dnnl_deconvolution_forward_primitive_desc_create)
#ifdef CRASHING
int dnnl_threadpool_interop_stream_create() { abort(); }
#endif
'''


@pytest.mark.parametrize('variant,reason', [
    ('missing', 'undefined reference to `dnnl_threadpool_interop_stream_create'),
    ('crashing', 'the self-check crashed (SIGABRT)')])
def test_a_onednn_without_the_threadpool_runtime(tiny, tmp_path, variant, reason):
    """A libdnnl.so.3 built without oneDNN's threadpool runtime lacks
    dnnl_threadpool_interop_stream_create: it used to link, then kill the process at the first
    call ("symbol lookup error"). Missing, it fails the link (--no-undefined); present but
    crashing, the probe's subprocess dies instead of the user's."""
    fake = tmp_path / 'dnnl'
    fake.mkdir()
    (tmp_path / 'fake.c').write_text(FAKE_DNNL)
    subprocess.run([build.find_compiler(), '-x', 'c', '-shared', '-fPIC',
                    *(['-DCRASHING'] if variant == 'crashing' else []),
                    '-Wl,-soname,libdnnl.so.3', str(tmp_path / 'fake.c'), '-o',
                    str(fake / 'libdnnl.so.3')], check=True, timeout=120)
    ops_on = {k: v for k, v in OTHER_OPS_NATIVE.items() if k != 'MINDCOAT_NATIVE_LINEAR'}
    env = _env(MINDCOAT_DNNL_DIR=str(fake), MINDCOAT_CACHE=str(tmp_path / 'cache'),
               MINDCOAT_NATIVE_DWCONV='1', **ops_on)
    report, logits = _forward(tiny, tmp_path, env)
    _assert_native_like_fast(tiny, report, logits, ('linear',), reason)


def test_a_corrupt_cached_library(tiny, tmp_path, monkeypatch):
    """A cached .so overwritten with garbage after it passed its probe (a torn copy, a full
    disk): it no longer matches the SHA-256 its build recorded, so it is never loaded (not even
    by the probe) but rebuilt, and the model runs on the fast path without a warning."""
    cache = tmp_path / 'cache'
    cache.mkdir()
    monkeypatch.setenv('MINDCOAT_CACHE', str(cache))
    lib, _ = build.library_path('depthwise.cc', build.find_compiler())
    good = dispatch.fast_path('dwconv')[0]  # this machine's library and its manifest
    shutil.copy(good, lib)
    shutil.copy(os.path.join(os.path.dirname(good), build.MANIFEST), cache / build.MANIFEST)
    with open(lib, 'wb') as f:
        f.write(os.urandom(4096))
    report, logits = _forward(tiny, tmp_path, _env(MINDCOAT_CACHE=str(cache), **OTHER_OPS_NATIVE))
    assert report['fast']['dwconv'] and report['fast']['crpe'] and report['warnings'] == []
    assert np.abs(logits - tiny['logits']).max() <= 1e-4 * max(1.0, np.abs(logits).max())
    with open(lib, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with open(cache / build.MANIFEST) as f:
        recorded = json.load(f)['libraries'][os.path.basename(lib)]
    assert recorded == {'sha256': sha, 'probed': True, 'failure': None}


def test_a_library_built_for_another_instruction_set(tiny, tmp_path, monkeypatch):
    """A cache shared between machines (a home directory on a cluster) holds a library built
    where -march=native meant other instructions: it sits under another key and is never loaded
    here, even when nothing can be built here (it would SIGILL on a CPU without them)."""
    cache = tmp_path / 'cache'
    monkeypatch.setenv('MINDCOAT_CACHE', str(cache))
    cxx = build.find_compiler()
    here = build.target_isa(cxx)
    other = dict(here, march='some-other-cpu', digest='0' * 64)
    mine, _ = build.library_path('depthwise.cc', cxx)
    monkeypatch.setitem(build._targets, cxx, other)
    theirs, _ = build.library_path('depthwise.cc', cxx)
    monkeypatch.setitem(build._targets, cxx, here)
    assert build.library_path('depthwise.cc', cxx)[0] == mine != theirs  # only the ISA differs
    # a working library (this machine's own build) under the other machine's key
    cache.mkdir()
    shutil.copy(dispatch.fast_path('dwconv')[0], theirs)
    # a compiler that answers questions but cannot compile here
    no_build = _script(tmp_path / 'cxx', f'#!/bin/sh\ncase " $* " in *" -o "*) '
                       f'echo "no space left on device" >&2; exit 1;; esac\nexec {cxx} "$@"\n')
    report, logits = _forward(tiny, tmp_path, _env(MINDCOAT_CACHE=str(cache), CXX=no_build,
                                                   **OTHER_OPS_NATIVE))
    _assert_native_like_fast(tiny, report, logits, ('dwconv', 'crpe'), 'no space left on device')
    assert sorted(os.listdir(cache)) == [os.path.basename(theirs)]  # untouched, never probed
