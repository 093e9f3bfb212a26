"""Builds the C++ kernels in ``csrc/`` on first use with the machine's compiler.

The shared library is cached in ``$MINDCOAT_CACHE`` (default ``~/.cache/mindcoat``) under a name
keyed by a hash of the source, the flags and the compiler version, so an edit or another compiler
gets a fresh build, and ``-march=native`` is safe because the cache belongs to the machine.
(The key also covers the shared headers in ``csrc/``.)
The build writes to a temporary file and renames it into place: concurrent processes (e.g. the
workers of one msrun job) may both compile, but each only ever sees a complete library.
"""
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

logger = logging.getLogger(__name__)

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-pthread', '-std=c++17', '-shared', '-fPIC')

_built = {}  # source name -> library path (or None when the build failed), per process

# The kernels' thread count (csrc/common.h). Read from Python's environment, which is a copy taken
# when the interpreter started: MindSpore later sets OMP_NUM_THREADS to half the cores in the C
# environment, unless the user set it.
_cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
os.environ.setdefault('MINDCOAT_NUM_THREADS',
                      os.environ.get('OMP_NUM_THREADS', '').strip() or str(_cpus or 1))


def _dnnl_flags():
    """Link flags for MindSpore's own oneDNN (its CPU MatMul library), or None if absent."""
    import mindspore
    lib_dir = os.path.join(os.path.dirname(os.path.abspath(mindspore.__file__)), 'lib')
    if not os.path.exists(os.path.join(lib_dir, 'libdnnl.so.3')):
        return None
    return ('-L' + lib_dir, '-l:libdnnl.so.3', '-Wl,-rpath,' + lib_dir)


# sources that link against a library: source name -> function giving the flags (None: absent)
LINK = {'linear.cc': _dnnl_flags}


def cache_dir():
    return os.path.expanduser(os.environ.get('MINDCOAT_CACHE') or '~/.cache/mindcoat')


def find_compiler():
    """The C++ compiler to use: $CXX if set, else g++ / c++ / clang++ from PATH (None if none)."""
    for name in (os.environ.get('CXX'), 'g++', 'c++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_id(cxx):
    try:
        return subprocess.run([cxx, '--version'], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return cxx


def build(source='depthwise.cc'):
    """Path of the compiled ``csrc/<source>`` library, compiling it if needed; None if it cannot
    be built (no compiler, compile error). Failures are logged once, never raised."""
    if source in _built:
        return _built[source]
    _built[source] = None
    cxx = find_compiler()
    if cxx is None:
        logger.warning('mindcoat: no C++ compiler found; using the native kernels')
        return None
    link = LINK[source]() if source in LINK else ()
    if link is None:
        logger.warning('mindcoat: the library %s links against is missing; using the native '
                       'kernels', source)
        return None
    src_path = os.path.join(CSRC, source)
    text = b''
    for path in [src_path] + sorted(glob.glob(os.path.join(CSRC, '*.h'))):
        with open(path, 'rb') as f:
            text += f.read()
    flags = FLAGS + tuple(link)
    key = hashlib.sha256(text + ' '.join(flags).encode() + _compiler_id(cxx).encode()).hexdigest()
    out_dir = cache_dir()
    lib = os.path.join(out_dir, f'{os.path.splitext(source)[0]}-{key[:16]}.so')
    if not os.path.exists(lib):
        tmp = None
        try:
            os.makedirs(out_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=out_dir)
            os.close(fd)
            logger.info('mindcoat: compiling %s -> %s', source, lib)
            res = subprocess.run([cxx, *FLAGS, src_path, '-o', tmp, *link], capture_output=True,
                                 text=True, timeout=600)
            if res.returncode != 0:
                logger.warning('mindcoat: compiling %s failed; using the native kernels:\n%s',
                               source, res.stderr[-2000:])
                return None
            os.chmod(tmp, 0o755)
            os.replace(tmp, lib)  # atomic: a racing process sees either nothing or a whole file
            tmp = None
        except (OSError, subprocess.SubprocessError) as err:
            logger.warning('mindcoat: cannot build %s (%s); using the native kernels', source, err)
            return None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    _built[source] = lib
    return lib
