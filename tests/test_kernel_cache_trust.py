"""A compiled kernel library is loaded only if this user built it, in a directory no one else can
change (mindcoat/ops/build.py, "Trust").

Real libraries throughout: the kernels are built once per module into a cache that each case
copies, and the planted library is real C whose constructor writes a marker file the moment
anything loads it. After each run, every library the run reports is loaded the way MindSpore
loads it, so a planted library that slipped through would leave the marker."""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from mindcoat.ops import build, dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ('depthwise.cc', 'transformer.cc', 'resize.cc', 'linear.cc', 'detection.cc')
NOBODY = 65534

PLANTED = r'''
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran\n", f); fclose(f); }
}
int MindcoatSelfCheck(char *message, int length) { if (length > 0) message[0] = 0; return 0; }
'''

# Each op's libraries as dispatch decides them, with the mindcoat warnings and the cache note.
DECIDE = '''
import json, logging
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger('mindcoat').addHandler(Keep(logging.WARNING))
import mindspore as ms
ms.set_device('CPU')
from mindcoat.ops import build, dispatch
libs = {op: dispatch.decide(op)[0] for op in dispatch.OPS}
print(json.dumps({'warnings': warnings, 'libs': libs, 'note': build.cache_note()}))
'''


def _env(**updates):
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for name in list(env):
        if name.startswith('MINDCOAT_NATIVE') or name in ('CXX', 'MINDCOAT_DNNL_DIR',
                                                          'MINDCOAT_CACHE'):
            del env[name]
    env.update({k: str(v) for k, v in updates.items()})
    return env


def _run(args, env, cwd):
    """stdout of ``python *args``, which must succeed."""
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _script(code, env, cwd):
    """What ``code`` printed last, as JSON."""
    return json.loads(_run(['-c', code], env, cwd).strip().splitlines()[-1])


def _ops_report(env, cwd):
    """`python -m mindcoat.ops --json`: (its report, {op: libraries or None})."""
    report = json.loads(_run(['-m', 'mindcoat.ops', '--json'], env, cwd))
    return report, {row['op']: row['detail'].split(', ') if row['path'] == 'fast' else None
                    for row in report['ops'] if row['op'] in dispatch.OPS}


def _all_fast(libs):
    """The set of libraries, after checking that every op takes its fast path on them."""
    assert all(paths is not None for paths in libs.values()), libs
    found = {path for paths in libs.values() for path in paths if path.endswith('.so')}
    assert len(found) == len(SOURCES), found
    return found


def _load(libs, cwd):
    """Loads each library in a fresh interpreter, as MindSpore does when it builds a graph."""
    subprocess.run([sys.executable, '-c', 'import ctypes, sys\nfor p in sys.argv[1:]: '
                    'ctypes.CDLL(p)', *sorted(libs)], check=True, cwd=cwd, timeout=120)


def _assert_planted_code_never_ran(libs, marker, cwd):
    """Loads every library a run reported (``libs``: {op: paths or None}); none may be the
    planted one, and nothing may have run it before."""
    _load({path for paths in libs.values() if paths for path in paths if path.endswith('.so')},
          cwd)
    assert not marker.exists(), 'the planted library was loaded'


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _manifest(folder):
    with open(os.path.join(folder, build.MANIFEST)) as f:
        return json.load(f)['libraries']


def _snapshot(folder):
    """{name: (kind, size, mtime)} of everything in ``folder``: to show nothing touched it."""
    return {name: (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
            for name in os.listdir(folder) for st in [os.lstat(os.path.join(folder, name))]}


@pytest.fixture(scope='module')
def names():
    """{source: file name of its library on this machine}."""
    cxx = build.find_compiler()
    if cxx is None:
        pytest.skip('needs a C++ compiler')
    return {source: os.path.basename(build.library_path(source, cxx)[0]) for source in SOURCES}


@pytest.fixture(scope='module')
def built(tmp_path_factory, names):
    """A cache holding every kernel, built and recorded by mindcoat (copied by each case)."""
    cache = tmp_path_factory.mktemp('built') / 'cache'
    _, libs = _ops_report(_env(MINDCOAT_CACHE=cache), cache.parent)
    assert {os.path.basename(p) for p in _all_fast(libs)} == set(names.values())
    assert sorted(_manifest(cache)) == sorted(names.values())
    modes = {name: stat.S_IMODE(os.stat(cache / name).st_mode) for name in os.listdir(cache)}
    assert modes == {build.MANIFEST: 0o600, **{name: 0o755 for name in names.values()}}
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    return cache


@pytest.fixture
def planted(tmp_path):
    """(a real library whose constructor writes the marker file, that marker file's path)."""
    marker = tmp_path / 'PLANTED_CODE_RAN'
    (tmp_path / 'planted.c').write_text(PLANTED)
    lib = tmp_path / 'planted.so'
    subprocess.run([build.find_compiler(), '-x', 'c', '-shared', '-fPIC',
                    f'-DMARKER="{marker}"', str(tmp_path / 'planted.c'), '-o', str(lib)],
                   check=True, timeout=120)
    _load([str(lib)], tmp_path)  # the marker works
    assert marker.exists()
    marker.unlink()
    return lib, marker


def _plant(folder, name, lib):
    """``lib`` under the expected ``name``, with a probe record saying it passed."""
    target = os.path.join(folder, name)
    if os.path.lexists(target):
        os.remove(target)
    shutil.copy(lib, target)
    with open(target[:-3] + '.probe.json', 'w') as f:
        json.dump({'sha256': _sha256(target), 'failure': None}, f)


def _vouch_for(folder, name):
    """Rewrites ``folder``'s manifest to vouch for what is at ``name`` now (what an attacker
    who can write the directory would do)."""
    entries = _manifest(folder)
    entries[name] = {'sha256': _sha256(os.path.join(folder, name)), 'probed': True,
                     'failure': None}
    with open(os.path.join(folder, build.MANIFEST), 'w') as f:
        json.dump({'libraries': entries}, f)


# ---- (a) a planted library in this user's own cache --------------------------------------------

def test_a_planted_library_is_rebuilt_never_loaded(built, names, planted, tmp_path):
    """The planted library under depthwise's exact file name (over a recorded build: the hash
    differs) and under resize's (with no manifest entry at all), each with a probe record saying
    it passed: neither is loaded, not even by the probe; both are rebuilt in place, every op
    takes its fast path, and the other two libraries are reused."""
    lib, marker = planted
    cache = tmp_path / 'cache'
    shutil.copytree(built, cache)
    entries = _manifest(cache)
    del entries[names['resize.cc']]
    with open(cache / build.MANIFEST, 'w') as f:
        json.dump({'libraries': entries}, f)
    for source in ('depthwise.cc', 'resize.cc'):
        _plant(cache, names[source], lib)
    kept = {name: os.stat(cache / name).st_mtime_ns
            for name in (names['transformer.cc'], names['linear.cc'])}
    report, libs = _ops_report(_env(MINDCOAT_CACHE=cache), tmp_path)
    _assert_planted_code_never_ran(libs, marker, tmp_path)
    assert report['cache'] == str(cache)
    assert _all_fast(libs) == {str(cache / name) for name in names.values()}
    recorded = _manifest(cache)
    for name in names.values():
        assert recorded[name] == {'sha256': _sha256(cache / name), 'probed': True,
                                  'failure': None}
    assert _sha256(cache / names['depthwise.cc']) != _sha256(lib)
    assert {name: os.stat(cache / name).st_mtime_ns for name in kept} == kept


# ---- (b), (c) a cache other users can change ---------------------------------------------------

def _one_warning(env, cwd, cache, private):
    """Runs DECIDE: every op fast on the libraries in ``private``, and exactly one warning,
    saying why ``cache`` was not used and where the kernels are instead."""
    out = _script(DECIDE, env, cwd)
    assert {os.path.dirname(p) for p in _all_fast(out['libs'])} == {str(private)}
    assert len(out['warnings']) == 1, out['warnings']
    assert out['warnings'][0] == f'mindcoat: {out["note"]}'
    assert out['note'].startswith(f'{cache} ') and f'using {private} instead' in out['note']
    return out['note']


def test_a_group_writable_cache_is_not_used(built, names, planted, tmp_path):
    """MINDCOAT_CACHE made group-writable, holding the planted library and a manifest rewritten
    to vouch for it: nothing in it is read or loaded. The kernels come from the user's own
    default cache (~/.cache/mindcoat, here a prepared copy), with one warning saying why."""
    lib, marker = planted
    cache, home = tmp_path / 'shared', tmp_path / 'home'
    shutil.copytree(built, cache)
    shutil.copytree(built, home / '.cache' / 'mindcoat')
    _plant(cache, names['depthwise.cc'], lib)
    _vouch_for(cache, names['depthwise.cc'])
    cache.chmod(0o770)
    before = _snapshot(cache)
    env = _env(MINDCOAT_CACHE=cache, HOME=home)
    private = home / '.cache' / 'mindcoat'
    report, libs = _ops_report(env, tmp_path)
    _assert_planted_code_never_ran(libs, marker, tmp_path)
    assert {os.path.dirname(p) for p in _all_fast(libs)} == {str(private)}
    assert 'is writable by other users' in report['cache']
    note = _one_warning(env, tmp_path, cache, private)
    assert note == f'{cache} is writable by other users; not loading kernels from it, using ' \
                   f'{private} instead'
    assert _snapshot(cache) == before


def test_a_cache_owned_by_another_user_is_not_used(built, names, planted, tmp_path):
    """The default cache (~/.cache/mindcoat) owned by another user ('nobody'), with the planted
    library and a manifest vouching for it: nothing in it is loaded. The next private place,
    <tempdir>/mindcoat-<uid> (here a prepared copy), holds the kernels; one warning says why."""
    if os.geteuid() != 0:
        pytest.skip('chown to another user needs root')
    lib, marker = planted
    home, tmp = tmp_path / 'home', tmp_path / 'tmp'
    cache = home / '.cache' / 'mindcoat'
    private = tmp / f'mindcoat-{os.geteuid()}'
    shutil.copytree(built, cache)
    shutil.copytree(built, private)
    _plant(cache, names['depthwise.cc'], lib)
    _vouch_for(cache, names['depthwise.cc'])
    for folder, _, files in os.walk(cache):
        for path in [folder] + [os.path.join(folder, name) for name in files]:
            os.chown(path, NOBODY, NOBODY)
    before = _snapshot(cache)
    env = _env(HOME=home, TMPDIR=tmp)
    report, libs = _ops_report(env, tmp_path)
    _assert_planted_code_never_ran(libs, marker, tmp_path)
    assert {os.path.dirname(p) for p in _all_fast(libs)} == {str(private)}
    note = _one_warning(env, tmp_path, cache, private)
    assert note.startswith(f'{cache} belongs to uid {NOBODY}, not to this user;')
    assert note in report['cache']
    assert _snapshot(cache) == before


def test_when_no_private_place_is_safe_a_fresh_directory_is_used(tmp_path):
    """The configured cache, the default cache and <tempdir>/mindcoat-<uid> all writable by
    others: the kernels go to a fresh private directory, removed when the process exits."""
    home, tmp = tmp_path / 'home', tmp_path / 'tmp'
    for folder in (tmp_path / 'shared', home / '.cache' / 'mindcoat',
                   tmp / f'mindcoat-{os.geteuid()}'):
        folder.mkdir(parents=True)
        folder.chmod(0o777)
    code = ('import json, os; from mindcoat.ops import build\n'
            'folder = build.kernel_dir()\n'
            'print(json.dumps([folder, oct(os.stat(folder).st_mode & 0o777), '
            'build.cache_note()]))\n')
    env = _env(MINDCOAT_CACHE=tmp_path / 'shared', HOME=home, TMPDIR=tmp)
    folder, mode, note = _script(code, env, tmp_path)
    assert os.path.dirname(folder) == str(tmp) and mode == '0o700'
    assert os.path.basename(folder) != f'mindcoat-{os.geteuid()}'
    assert note == f'{tmp_path / "shared"} is writable by other users; not loading kernels ' \
                   f'from it, building them in {folder} for this process only'
    assert not os.path.exists(folder)  # removed at exit


def test_a_cache_below_a_directory_others_can_change_is_not_used(tmp_path):
    """A cache of this user's own (0700) inside a group-writable directory: another user could
    rename it away and put theirs in its place between the check and the load."""
    team = tmp_path / 'team'
    (team / 'cache').mkdir(parents=True, mode=0o700)
    team.chmod(0o775)
    code = 'import json; from mindcoat.ops import build; build.kernel_dir(); ' \
           'print(json.dumps(build.cache_note()))'
    note = _script(code, _env(MINDCOAT_CACHE=team / 'cache', HOME=tmp_path / 'home'), tmp_path)
    assert note.startswith(f'{team / "cache"} can be replaced by other users ({team} is '
                           'writable by other users); not loading kernels from it, using ')


# ---- (d) symlinks ------------------------------------------------------------------------------

def test_a_symlinked_library_is_not_followed(built, names, planted, tmp_path):
    """depthwise's library a symlink to the planted one, resize's a symlink to a copy of the
    very library the manifest records (its target could be changed at any time): neither link
    is followed; both are replaced by real rebuilt files, and the targets are left alone."""
    lib, marker = planted
    cache = tmp_path / 'cache'
    shutil.copytree(built, cache)
    good = tmp_path / 'elsewhere.so'
    shutil.copy(cache / names['resize.cc'], good)
    for source, target in (('depthwise.cc', lib), ('resize.cc', good)):
        os.remove(cache / names[source])
        os.symlink(target, cache / names[source])
    targets = {path: _sha256(path) for path in (lib, good)}
    _, libs = _ops_report(_env(MINDCOAT_CACHE=cache), tmp_path)
    _assert_planted_code_never_ran(libs, marker, tmp_path)
    assert _all_fast(libs) == {str(cache / name) for name in names.values()}
    for source in ('depthwise.cc', 'resize.cc'):
        path = cache / names[source]
        assert not path.is_symlink() and _manifest(cache)[path.name]['sha256'] == _sha256(path)
    assert {path: _sha256(path) for path in targets} == targets


def test_the_manifest_counts_only_if_it_is_this_users_alone(built, names, tmp_path):
    """A manifest that is a symlink, group-writable, or (as root) another user's vouches for
    nothing: every library is treated as unknown (and would be rebuilt)."""
    folder = tmp_path / 'cache'
    shutil.copytree(built, folder)
    manifest = folder / build.MANIFEST
    assert sorted(build._read_manifest(str(folder))) == sorted(names.values())
    manifest.chmod(0o620)
    assert build._read_manifest(str(folder)) == {}
    manifest.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(manifest, NOBODY, NOBODY)
        assert build._read_manifest(str(folder)) == {}
        os.chown(manifest, 0, 0)
    manifest.rename(tmp_path / 'real.json')
    manifest.symlink_to(tmp_path / 'real.json')
    assert build._read_manifest(str(folder)) == {}


# ---- (e) a legitimate cache is reused ----------------------------------------------------------

def _logging_compiler(tmp_path):
    """A compiler that logs each build (-o) to a file before running the real one."""
    log = tmp_path / 'compiles.log'
    cxx = tmp_path / 'cxx'
    cxx.write_text(f'#!/bin/sh\ncase " $* " in *" -o "*) echo "$*" >> {log};; esac\n'
                   f'exec {build.find_compiler()} "$@"\n')
    cxx.chmod(0o755)
    return cxx, log


def test_a_legitimate_cache_is_reused_without_rebuilding(built, names, tmp_path):
    """The libraries mindcoat built and recorded are used as they are on the next run: nothing
    is compiled, nothing in the cache is rewritten."""
    cache = tmp_path / 'cache'
    shutil.copytree(built, cache)
    before = _snapshot(cache)
    cxx, log = _logging_compiler(tmp_path)
    _, libs = _ops_report(_env(MINDCOAT_CACHE=cache, CXX=cxx), tmp_path)
    assert _all_fast(libs) == {str(cache / name) for name in names.values()}
    assert not log.exists()
    assert _snapshot(cache) == before


def test_a_failed_probe_is_remembered_for_the_build_that_failed(tmp_path):
    """A compiler that writes garbage: the library it built does not load, which ends on the
    native path with one warning; the next run trusts that recorded verdict (no rebuild, no
    probe) and says the same."""
    cxx = tmp_path / 'cxx'
    log = tmp_path / 'compiles.log'
    cxx.write_text('#!/bin/sh\ncase " $* " in *" -o "*)\n'
                   f'  echo "$*" >> {log}\n'
                   '  while [ "$1" != "-o" ]; do shift; done; head -c 4096 /dev/urandom > "$2"\n'
                   f'  exit 0;;\nesac\nexec {build.find_compiler()} "$@"\n')
    cxx.chmod(0o755)
    others = {flag: 1 for op, (_, flag, _) in dispatch.OPS.items() if op not in ('dwconv', 'crpe')}
    env = _env(MINDCOAT_CACHE=tmp_path / 'cache', CXX=cxx, **others)
    runs = [_script(DECIDE, env, tmp_path) for _ in range(2)]
    for out in runs:
        assert out['libs']['dwconv'] is None and out['libs']['crpe'] is None
        assert len(out['warnings']) == 1, out['warnings']
        assert 'does not load' in out['warnings'][0] and 'invalid ELF header' in \
            out['warnings'][0] and 'delete it to rebuild' in out['warnings'][0]
        assert '.so.tmp' not in out['warnings'][0]  # it names the library as it is found
    assert runs[0]['warnings'] == runs[1]['warnings']
    assert len(log.read_text().splitlines()) == 1
