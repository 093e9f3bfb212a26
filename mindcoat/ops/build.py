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
against a plain C++ reference), so the probe runs once per build.

Trust: a library is loaded (by the probe, then by MindSpore) only if this user built it. Each
build's SHA-256 and probe verdict go into the directory's ``trusted.json`` (mode 0600), and a
library is hashed against it before anything loads it; one missing from it or differing from it
is rebuilt (old or planted ``*.probe.json`` files are never read). Libraries and manifest must be
regular files (symlinks are not followed) owned by this user and not writable by group or others;
so must the directory, and every directory above it must be this user's or root's and writable by
others only if sticky (/tmp), or it could be swapped between the check and the load. A cache that
fails this (``MINDCOAT_CACHE=/tmp``, a group-writable or another user's cache) is not read at all:
the kernels go to the default cache, else ``<tempdir>/mindcoat-<uid>``, else a fresh directory
removed at exit, with one warning saying why; they stay fast.

Whatever goes wrong (no compiler, a compile or link error, a library that does not load,
crashes or computes wrong numbers) ends on MindSpore's native operators with one warning per
library; nothing is raised. The build writes to a temporary file; it is renamed into place and
entered in the manifest under the directory's lock (flock), so concurrent processes (the workers
of one msrun job) may both compile, but each only ever sees a complete, recorded library.
"""
import atexit
import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

from ..fileio import atomic_output

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
DEFAULT_CACHE = '~/.cache/mindcoat'
MANIFEST = 'trusted.json'  # {'libraries': {file name: {'sha256', 'probed', 'failure'}}}
MANIFEST_LIMIT = 1 << 20  # bytes; a longer file is not a manifest this package wrote

_built = {}  # source name -> library path, or None when it is not usable (per process)
_why = {}  # source name -> why it is not usable
_warned = set()  # causes already warned about (the same cause is said once)
_targets = {}  # compiler path -> its resolved target (see target_isa)
_versions = {}  # compiler path -> the first line of its --version
_dirs = {}  # configured cache (real path) -> (directory used, why the cache is not, or None)

# The kernels' thread count (csrc/common.h). Read from Python's environment, which is a copy taken
# when the interpreter started: MindSpore later sets OMP_NUM_THREADS to half the cores in the C
# environment, unless the user set it.
_cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
os.environ.setdefault('MINDCOAT_NUM_THREADS',
                      os.environ.get('OMP_NUM_THREADS', '').strip() or str(_cpus or 1))


class KernelUnavailable(Exception):
    """Why a library cannot be used (one line)."""


def cache_dir():
    """The configured cache directory (kernel_dir() says whether the kernels are kept there)."""
    return os.path.expanduser(os.environ.get('MINDCOAT_CACHE') or DEFAULT_CACHE)


def find_compiler():
    """The C++ compiler to use: $CXX if set, else g++ / c++ / clang++ from PATH (None if none)."""
    for name in (os.environ.get('CXX'), 'g++', 'c++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(cmd, timeout=120, umask=-1):
    """stdout of ``cmd``; KernelUnavailable with its last error line if it fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, umask=umask)
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


def _compile(cxx, source, out, link):
    logger.info('mindcoat: compiling %s -> %s', source, out)
    # umask 077: the linker recreates the file, and it must never be writable by others, even
    # for the moment before it is chmod-ed
    _run([cxx, *FLAGS, os.path.join(CSRC, source), '-o', out, *link], 600, umask=0o077)
    os.chmod(out, 0o755)


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


# ---- which directory and which files are trusted -----------------------------------------------

def _distrust(st):
    """Why another user could change the file or directory whose status is ``st``, or None."""
    if st.st_uid != os.geteuid():
        return f'belongs to uid {st.st_uid}, not to this user'
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return 'is writable by other users'
    return None


def _distrust_above(path):
    """Why another user could rename ``path`` away (and put theirs in its place), or None: every
    directory above it must be this user's or root's, and writable by others only if sticky."""
    above = os.path.dirname(path)
    while above != path:
        st = os.lstat(above)
        why = None
        if st.st_uid not in (0, os.geteuid()):
            why = f'belongs to uid {st.st_uid}'
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            why = 'is writable by other users'
        if why:
            return f'can be replaced by other users ({above} {why})'
        path, above = above, os.path.dirname(above)
    return None


def _claim(path):
    """Why the directory ``path`` (a real path) cannot hold this user's kernels, or None. It is
    created (mode 0700) if missing."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        above = _distrust_above(path)
    except OSError as err:
        return f'cannot be used ({err.strerror or err})'
    if not stat.S_ISDIR(st.st_mode):
        return 'is not a directory'
    return _distrust(st) or above


def _private_dirs():
    """Where the kernels go when the cache cannot hold them, in order of preference."""
    default = os.path.expanduser(DEFAULT_CACHE)
    if not default.startswith('~'):  # left as it is when there is no home directory
        yield os.path.realpath(default)
    with contextlib.suppress(OSError):  # gettempdir raises when no temporary directory works
        yield os.path.realpath(os.path.join(tempfile.gettempdir(), f'mindcoat-{os.geteuid()}'))


def _fresh_dir():
    """A new private directory (0700) removed when the process exits; None if none works."""
    try:
        path = os.path.realpath(tempfile.mkdtemp(prefix='mindcoat-'))
    except OSError:
        return None
    atexit.register(shutil.rmtree, path, True)
    return path if _claim(path) is None else None


def _choose_dir(cache):
    """(directory to build in and load from, note saying why it is not ``cache``, or None)."""
    reason = _claim(cache)
    if reason is None:
        return cache, None
    for path in _private_dirs():
        if path != cache and _claim(path) is None:
            return path, f'{cache} {reason}; not loading kernels from it, using {path} instead'
    path = _fresh_dir()
    if path is None:
        raise KernelUnavailable(f'{cache} {reason}, and no private directory could be made')
    return path, f'{cache} {reason}; not loading kernels from it, building them in {path} ' \
        'for this process only'


def kernel_dir():
    """The directory the kernels are built in and loaded from: the cache if only this user can
    change it, else a private one (said once, in a warning). KernelUnavailable if none."""
    cache = os.path.realpath(cache_dir())
    if cache not in _dirs:
        _dirs[cache] = _choose_dir(cache)
        if _dirs[cache][1]:
            _warn_once(_dirs[cache][1], f'mindcoat: {_dirs[cache][1]}')
    return _dirs[cache][0]


def cache_note():
    """Why the kernels are not kept in cache_dir() (once kernel_dir() has looked), or None."""
    return _dirs.get(os.path.realpath(cache_dir()), (None, None))[1]


def _open_own(path):
    """A read-only descriptor of ``path`` if it is a regular file only this user can change (a
    symlink is not followed), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and _distrust(st) is None:
        return fd
    os.close(fd)
    return None


def _own_sha256(path):
    """SHA-256 of ``path`` if only this user can change it (see _open_own), else None."""
    fd = _open_own(path)
    if fd is None:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _valid_entry(entry):
    return isinstance(entry, dict) and isinstance(entry.get('sha256'), str) and \
        isinstance(entry.get('probed'), bool) and \
        (entry.get('failure') is None or isinstance(entry['failure'], str))


def _read_manifest(folder):
    """{library file name: entry} of what this user built in ``folder``; empty if the manifest
    is missing, malformed or not this user's alone."""
    fd = _open_own(os.path.join(folder, MANIFEST))
    if fd is None:
        return {}
    try:
        with os.fdopen(fd, 'rb') as f:
            entries = json.loads(f.read(MANIFEST_LIMIT))['libraries']
        return {name: entry for name, entry in entries.items() if _valid_entry(entry)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_manifest(folder, entries):
    """Replaces ``folder``'s manifest (mode 0600) atomically, without entries whose library is
    gone."""
    kept = {name: entry for name, entry in entries.items()
            if os.path.lexists(os.path.join(folder, name))}
    with atomic_output(os.path.join(folder, MANIFEST)) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, 'w') as f:
            json.dump({'libraries': kept}, f, indent=1, sort_keys=True)


@contextlib.contextmanager
def _locked(folder, exclusive=False):
    """Holds ``folder``'s lock: installing a library with its manifest entry is exclusive,
    checking the pair is shared, so no process sees one without the other. Where flock is
    refused (some network file systems) it goes on unlocked: a race then costs a rebuild."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# ---- building, probing and recording -----------------------------------------------------------

def _recorded(folder, name):
    """The manifest entry of ``folder/name`` if that file is still the one this user built
    there (same SHA-256, and only this user can change it), else None."""
    with _locked(folder):
        entry = _read_manifest(folder).get(name)
        if entry is not None and _own_sha256(os.path.join(folder, name)) == entry['sha256']:
            return entry
    return None


def _probed(path, sha):
    """The manifest entry of the library at ``path`` (SHA-256 ``sha``) after its probe. A
    timeout is no verdict (a slow machine): the library is probed again next time."""
    failure = probe(path)
    return {'sha256': sha, 'probed': not (failure or '').startswith('timeout'),
            'failure': failure}


def _install(folder, name, tmp, entry):
    """Renames the built ``tmp`` to ``folder/name`` and records ``entry``; if another process
    has just installed a probed build of the same library, keeps that one and returns its
    entry."""
    with _locked(folder, exclusive=True):
        entries = _read_manifest(folder)
        theirs = entries.get(name)
        if theirs is not None and theirs['probed'] and \
                _own_sha256(os.path.join(folder, name)) == theirs['sha256']:
            return theirs
        os.replace(tmp, os.path.join(folder, name))
        entries[name] = entry
        _write_manifest(folder, entries)
    return entry


def _build(cxx, source, folder, name, link):
    """Compiles ``csrc/<source>`` into a temporary file in ``folder``, hashes and probes it, then
    installs it as ``name``; its manifest entry."""
    fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=folder)
    os.close(fd)
    try:
        _compile(cxx, source, tmp, link)
        sha = _own_sha256(tmp)
        if sha is None:
            raise KernelUnavailable(f'{tmp} changed hands while it was built')
        entry = _probed(tmp, sha)
        if entry['failure']:  # the verdict names the file as it will be found
            entry['failure'] = entry['failure'].replace(tmp, os.path.join(folder, name))
        return _install(folder, name, tmp, entry)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _reprobed(folder, name, entry):
    """Probes a recorded library whose probe gave no verdict; records the verdict if the file is
    still that one."""
    entry = _probed(os.path.join(folder, name), entry['sha256'])
    if entry['probed']:
        with _locked(folder, exclusive=True):
            entries = _read_manifest(folder)
            if entries.get(name, {}).get('sha256') == entry['sha256']:
                entries[name] = entry
                _write_manifest(folder, entries)
    return entry


def _library_name(source, key):
    return f'{os.path.splitext(source)[0]}-{key}.so'


def library_path(source, cxx):
    """Where ``csrc/<source>`` built by ``cxx`` is cached, and its link flags. (It is built and
    loaded there if kernel_dir() is that directory.)"""
    key, link = library_key(source, cxx)
    return os.path.join(cache_dir(), _library_name(source, key)), link


def _usable_library(source):
    """The probed library of ``csrc/<source>``, building it if needed; KernelUnavailable."""
    cxx = find_compiler()
    if cxx is None:
        raise KernelUnavailable('no C++ compiler found (set CXX or install g++)')
    key, link = library_key(source, cxx)
    folder = kernel_dir()
    name = _library_name(source, key)
    lib = os.path.join(folder, name)
    try:
        entry = _recorded(folder, name)
        if entry is None:
            entry = _build(cxx, source, folder, name, link)
        elif not entry['probed']:
            entry = _reprobed(folder, name, entry)
    except OSError as err:
        raise KernelUnavailable(f'cannot write {lib} ({err})') from None
    except KernelUnavailable as err:
        raise KernelUnavailable(f'build failed: {err}') from None
    if entry['failure']:
        raise KernelUnavailable(f'{lib}: {entry["failure"]} (delete it to rebuild)')
    return lib


def _warn_once(cause, text):
    """Logs ``text`` unless a warning for the same ``cause`` was logged already."""
    if cause not in _warned:
        _warned.add(cause)
        logger.warning(text)


def build(source='depthwise.cc'):
    """Path of the compiled, probed ``csrc/<source>`` library; None if it cannot be used, with
    one warning saying why (``why(source)``). Never raises."""
    if source in _built:
        return _built[source]
    try:
        lib = _usable_library(source)
    except KernelUnavailable as err:
        _built[source], _why[source] = None, str(err)
        # the same cause (e.g. "no compiler") is said once, not per library
        _warn_once(str(err), f'mindcoat: csrc/{source}: {err}; using MindSpore\'s native '
                   'operators instead')
        return None
    _built[source], _why[source] = lib, None
    return lib


def why(source):
    """Why ``csrc/<source>`` is not used (after ``build``), or None."""
    return _why.get(source)
