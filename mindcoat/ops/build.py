"""Builds, caches and probes the C++ kernels in ``csrc/``.

Each ``csrc/<name>.cc`` becomes its own shared library, compiled on first use with the machine's
compiler and cached in ``$MINDCOAT_CACHE`` (default ``~/.cache/mindcoat``) as
``<name>-<key>.so``. The key covers everything the library's machine code depends on: the
sources (and the shared headers), the flags, the compiler's version, the instruction set
``-march=native`` resolves to on this machine (the compiler's predefined macros: ``__AVX2__``,
``__AVX512F__``, ...), the MindSpore version and, for ``linear.cc``, the identity (path, size,
mtime) of the oneDNN library it links. So a cache shared by machines with different CPUs (a
home directory on a cluster) holds one library per instruction set, and none is loaded where it
cannot run.

Libraries are linked with ``-Wl,--no-undefined``: a oneDNN that lacks an entry point fails the
build instead of killing the process at the first call. Before a library is first used, a
subprocess loads it and runs its ``MindcoatSelfCheck`` (each kernel family on a small input
against a plain C++ reference); the verdict is stored next to the library
(``<name>-<key>.probe.json``, tied to the library's SHA-256), so the probe runs once per build.

Whatever goes wrong (no compiler, a compile or link error, a library that does not load,
crashes or computes wrong numbers) ends on MindSpore's native operators with one warning per
library; nothing is raised. The build writes to a temporary file and renames it into place:
concurrent processes (the workers of one msrun job) may both compile, but each only ever sees a
complete library.
"""
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

logger = logging.getLogger(__name__)

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
# -fno-trapping-math: the kernels never read floating-point exception flags, and without it gcc
# may not compute both sides of a select (a clamp, a sign) where the ISA lacks masked arithmetic
# (AVX2), leaving the loops around exp/erf scalar there (tests/test_build.py checks each loop).
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-fno-trapping-math', '-pthread', '-std=c++17',
         '-shared', '-fPIC', '-Wl,--no-undefined')
TARGET_FLAGS = ('-march=native',)  # the part of FLAGS that selects the instruction set
SELF_CHECK = 'MindcoatSelfCheck'  # int MindcoatSelfCheck(char *message, int length): 0 = pass
PROBE_TIMEOUT = 300

_built = {}  # source name -> library path, or None when it is not usable (per process)
_why = {}  # source name -> why it is not usable
_warned = set()  # warning texts already logged (the same cause is said once)
_targets = {}  # compiler path -> its resolved target (see target_isa)
_versions = {}  # compiler path -> the first line of its --version

# The kernels' thread count (csrc/common.h). Read from Python's environment, which is a copy taken
# when the interpreter started: MindSpore later sets OMP_NUM_THREADS to half the cores in the C
# environment, unless the user set it.
_cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
os.environ.setdefault('MINDCOAT_NUM_THREADS',
                      os.environ.get('OMP_NUM_THREADS', '').strip() or str(_cpus or 1))


class KernelUnavailable(Exception):
    """Why a library cannot be used (one line)."""


def cache_dir():
    return os.path.expanduser(os.environ.get('MINDCOAT_CACHE') or '~/.cache/mindcoat')


def find_compiler():
    """The C++ compiler to use: $CXX if set, else g++ / c++ / clang++ from PATH (None if none)."""
    for name in (os.environ.get('CXX'), 'g++', 'c++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(cmd, timeout=120):
    """stdout of ``cmd``; KernelUnavailable with its last error line if it fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f'{os.path.basename(cmd[0])} did not run ({err})') from None
    if res.returncode != 0:
        detail = _first_error(res.stderr or res.stdout) or f'exit status {res.returncode}'
        raise KernelUnavailable(f'{os.path.basename(cmd[0])} failed: {detail}')
    return res.stdout


def _first_error(output):
    """The line of a compiler's output that says what went wrong (not the linker driver's
    closing 'ld returned 1 exit status'), else its last line."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    for line in lines:
        if ('error' in line or 'undefined reference' in line) and 'collect2' not in line:
            return line
    return lines[-1] if lines else ''


def compiler_version(cxx):
    """First line of ``cxx --version``."""
    if cxx not in _versions:
        _versions[cxx] = (_run([cxx, '--version'], 30).strip().splitlines() or ['?'])[0]
    return _versions[cxx]


def target_isa(cxx):
    """What ``-march=native`` means to ``cxx`` on this machine: {'march': the CPU name it
    resolves to, 'features': the instruction-set macros it defines (AVX2, AVX512F, ...),
    'digest': a hash of all its predefined macros}. KernelUnavailable if it cannot tell."""
    if cxx in _targets:
        return _targets[cxx]
    macros = _run([cxx, *TARGET_FLAGS, '-E', '-dM', '-x', 'c++', os.devnull], 60)
    names = sorted(name for name in set(re.findall(
        r'#define __((?:AVX|SSE|FMA|AMX|F16C|BMI|ARM_FEATURE|ARM_NEON|AES|SHA|VAES|GFNI|POPCNT|'
        r'LZCNT)\w*?)__ ', macros)) if not name.endswith('_MATH'))
    _targets[cxx] = {'march': _resolved_march(cxx), 'features': names,
                     'digest': hashlib.sha256(macros.encode()).hexdigest()}
    return _targets[cxx]


def _resolved_march(cxx):
    """The CPU name -march=native resolves to (gcc: -Q --help=target; clang: -###), or '?'."""
    for cmd, pattern in (([cxx, *TARGET_FLAGS, '-Q', '--help=target'], r'^\s*-march=\s+(\S+)'),
                         ([cxx, *TARGET_FLAGS, '-###', '-x', 'c++', '-c', os.devnull],
                          r'"-target-cpu" "([^"]+)"')):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        found = re.search(pattern, res.stdout + res.stderr, re.M)
        if found:
            return found.group(1)
    return '?'


def dnnl_dir():
    """Where libdnnl.so.3 is taken from: $MINDCOAT_DNNL_DIR, else MindSpore's own lib/ (the
    oneDNN its CPU MatMul runs on)."""
    if os.environ.get('MINDCOAT_DNNL_DIR'):
        return os.path.abspath(os.path.expanduser(os.environ['MINDCOAT_DNNL_DIR']))
    import mindspore
    return os.path.join(os.path.dirname(os.path.abspath(mindspore.__file__)), 'lib')


def _dnnl_link():
    """(link flags, identity) for libdnnl.so.3; KernelUnavailable if it is missing."""
    lib_dir = dnnl_dir()
    path = os.path.join(lib_dir, 'libdnnl.so.3')
    try:
        st = os.stat(path)
    except OSError:
        raise KernelUnavailable(f'{path} not found') from None
    return ('-L' + lib_dir, '-l:libdnnl.so.3', '-Wl,-rpath,' + lib_dir), \
        f'{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}'


# sources that link against a library: source name -> function giving (flags, identity)
LINK = {'linear.cc': _dnnl_link}


def _mindspore_version():
    from importlib import metadata
    try:
        return metadata.version('mindspore')
    except metadata.PackageNotFoundError:
        return 'none'


def library_key(source, cxx):
    """(cache key, link flags) of ``csrc/<source>`` built by ``cxx`` on this machine."""
    link, link_id = LINK[source]() if source in LINK else ((), '')
    digest = hashlib.sha256()
    for path in [os.path.join(CSRC, source)] + sorted(glob.glob(os.path.join(CSRC, '*.h'))):
        with open(path, 'rb') as f:
            digest.update(f.read())
    target = target_isa(cxx)
    for part in (FLAGS + tuple(link), compiler_version(cxx), target['march'], target['digest'],
                 _mindspore_version(), link_id):
        digest.update(repr(part).encode() + b'\0')
    return digest.hexdigest()[:16], link


def _compile(cxx, source, lib, link):
    os.makedirs(os.path.dirname(lib), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=os.path.dirname(lib))
    os.close(fd)
    try:
        logger.info('mindcoat: compiling %s -> %s', source, lib)
        _run([cxx, *FLAGS, os.path.join(CSRC, source), '-o', tmp, *link], 600)
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)  # atomic: a racing process sees either nothing or a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


_PROBE = ('import ctypes, sys\n'
          'lib = ctypes.CDLL(sys.argv[1])\n'
          'msg = ctypes.create_string_buffer(512)\n'
          'rc = getattr(lib, sys.argv[2])(msg, 512)\n'
          'print(msg.value.decode(errors="replace"))\n'
          'sys.exit(0 if rc == 0 else 3)\n')


def probe(lib):
    """Load ``lib`` in a fresh interpreter and run its self-check. Returns None if it passed,
    else why not (a crash, a load error, wrong numbers). Never raises."""
    try:
        res = subprocess.run([sys.executable, '-I', '-c', _PROBE, lib, SELF_CHECK],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f'timeout: the self-check took over {PROBE_TIMEOUT} s'
    except (OSError, subprocess.SubprocessError) as err:
        return f'could not run the self-check ({err})'
    if res.returncode == 0:
        return None
    if res.returncode < 0:
        try:
            name = signal.Signals(-res.returncode).name
        except ValueError:
            name = f'signal {-res.returncode}'
        return f'the self-check crashed ({name})'
    if res.returncode == 3:
        return f'the self-check failed: {res.stdout.strip()}'
    lines = [ln.strip() for ln in res.stderr.strip().splitlines() if ln.strip()]
    return 'it does not load: ' + (lines[-1] if lines else f'exit status {res.returncode}')


def _probe_cached(lib):
    """probe(lib), remembered in ``<lib>.probe.json`` for this exact file (its SHA-256)."""
    record = os.path.splitext(lib)[0] + '.probe.json'
    sha = _sha256(lib)
    try:
        with open(record) as f:
            saved = json.load(f)
        if saved.get('sha256') == sha:
            return saved.get('failure')
    except (OSError, ValueError, AttributeError):
        pass
    failure = probe(lib)
    if failure is None or not failure.startswith('timeout'):  # a slow machine is not a verdict
        try:
            fd, tmp = tempfile.mkstemp(suffix='.tmp', dir=os.path.dirname(lib))
            with os.fdopen(fd, 'w') as f:
                json.dump({'sha256': sha, 'failure': failure}, f)
            os.replace(tmp, record)
        except OSError:  # a read-only cache: probe again next time
            pass
    return failure


def library_path(source, cxx):
    """Where ``csrc/<source>`` built by ``cxx`` is cached, and its link flags."""
    key, link = library_key(source, cxx)
    return os.path.join(cache_dir(), f'{os.path.splitext(source)[0]}-{key}.so'), link


def _usable_library(source):
    """The probed library of ``csrc/<source>``, building it if needed; KernelUnavailable."""
    cxx = find_compiler()
    if cxx is None:
        raise KernelUnavailable('no C++ compiler found (set CXX or install g++)')
    lib, link = library_path(source, cxx)
    if not os.path.exists(lib):
        try:
            _compile(cxx, source, lib, link)
        except OSError as err:
            raise KernelUnavailable(f'cannot write {lib} ({err})') from None
        except KernelUnavailable as err:
            raise KernelUnavailable(f'build failed: {err}') from None
    try:
        failure = _probe_cached(lib)
    except OSError as err:
        failure = f'cannot read it ({err})'
    if failure:
        raise KernelUnavailable(f'{lib}: {failure} (delete it to rebuild)')
    return lib


def build(source='depthwise.cc'):
    """Path of the compiled, probed ``csrc/<source>`` library; None if it cannot be used, with
    one warning saying why (``why(source)``). Never raises."""
    if source in _built:
        return _built[source]
    try:
        lib = _usable_library(source)
    except KernelUnavailable as err:
        _built[source], _why[source] = None, str(err)
        text = f'mindcoat: csrc/{source}: {err}; using MindSpore\'s native operators instead'
        if str(err) not in _warned:  # e.g. "no compiler" is said once, not per library
            _warned.add(str(err))
            logger.warning(text)
        return None
    _built[source], _why[source] = lib, None
    return lib


def why(source):
    """Why ``csrc/<source>`` is not used (after ``build``), or None."""
    return _why.get(source)
