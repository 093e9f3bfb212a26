"""Files that are either whole or absent, and paths checked before they are opened.

``atomic_output(path)`` is how every file that must never be left half-written is made
(checkpoints, converted weights, exports, logs rewritten in place, plots, downloads): the writer
fills a temporary file beside ``path``; it is flushed to disk and renamed over ``path`` only once
the writer is done, so a crash, a kill or a full disk leaves the previous file as it was. Names
of temporaries carry the writer's pid, so ``remove_stale_temporaries`` can clear those of dead
processes without touching a write still under way.
"""
import glob
import os
import re
import stat
from contextlib import contextmanager

from .errors import UsageError

# .<name>.<pid>.tmp<anything>: ours, and side files a writer derives from the name it was given
_TEMPORARY = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(\..*)?$')


def temporary_path(path, suffix=''):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}.tmp{suffix}')


def _fsync(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def remove_temporary(tmp):
    """Removes ``tmp`` and any side file a writer made from its name (MindSpore's save_checkpoint
    writes ``<name>.tmp`` on its way to ``<name>``; export appends the format's suffix)."""
    for path in [tmp] + glob.glob(glob.escape(tmp) + '*') + \
            glob.glob(glob.escape(os.path.splitext(tmp)[0]) + '.*'):
        try:
            os.remove(path)
        except OSError:
            pass


@contextmanager
def atomic_output(path, suffix=''):
    """Yields a temporary path in ``path``'s folder (ending in ``suffix``: some writers insist on
    one). When the block ends without error, the file there is synced and renamed over ``path``;
    on any error or interruption it is removed and ``path`` keeps what it held."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_temporary(tmp)
        raise
    _fsync(folder, directory=True)


def write_text(path, text):
    """Replaces ``path`` with ``text`` (UTF-8), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Deletes the temporaries of writes whose process is gone (killed mid-write); a write still
    under way in another live process is left alone."""
    for name in os.listdir(folder):
        m = _TEMPORARY.match(name)
        if m and not _alive(int(m.group('pid'))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


# what each kind of non-regular file is called in a message
_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'))


def not_a_file(path):
    """None for an existing regular file, else why not (one phrase). Checked with os.stat before
    anything opens the path: open() on a FIFO blocks until a writer appears."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 'no such file'
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), 'a special file')
    return f'{kind}, not a regular file'


def read_small_text(path, what, error, max_bytes=1 << 20):
    """The text of ``path``, a regular UTF-8 file of at most ``max_bytes`` (its kind checked before
    it is opened: a FIFO would block, /dev/zero never ends); anything else is ``error`` with one
    line naming ``what`` (e.g. 'config file') and the path."""
    why = not_a_file(path)
    if why:
        raise error(f"cannot read {what} {path}: {why}")
    try:
        with open(path, 'rb') as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes >> 10} KB: not a {what}")
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text (a binary file?)") from None


def regular_file(path, what, error=UsageError):
    """``path`` if it is an existing regular file, else ``error`` naming ``what`` it is."""
    reason = not_a_file(path)
    if reason:
        raise error(f"{what} {path}: {reason}")
    return path
