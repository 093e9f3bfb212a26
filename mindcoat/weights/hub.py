"""The official CoaT weights: download, verify and cache (``create_model(name, pretrained=True)``).

Files come from ``$MINDCOAT_WEIGHTS_URL`` (default https://vcl.ucsd.edu/coat/pretrained/, the
official README's links) and are kept, unconverted, in the cache folder ``$MINDCOAT_CACHE/weights``
(default ``~/.cache/mindcoat/weights``); every load reads them through the safe readers of
mindcoat.weights. Standard library (urllib) and tqdm only.

Cache layout. An official file (``pretrained=True``) sits directly in the cache folder under its
own name, whichever mirror it came from: ``weights/coat_lite_tiny_e88e96b0.pth``. Any other URL
(``pretrained='https://...'``) has a folder of its own, named after the URL and the hash its file
is checked against, so two URLs ending in the same file name never share a file:
``weights/<first 16 hex digits of the URL's SHA-256>-<expected SHA-256 prefix or 'nohash'>/<file>``.
Every failure's message gives the exact path where a copy made by hand is found.

Checks. The hex digits at the end of a file name (torch.hub's convention) are the start of its
SHA-256, checked after every download and on every use of a cached file. A download is written to
``<file>.partial``, resumed from there with an HTTP Range request, and renamed into place only
once its hash is right; one process downloads a file at a time, through a flock on
``.<file>.lock``. A download may not exceed ``max_bytes`` (default: the checkpoint size cap,
$MINDCOAT_MAX_CHECKPOINT_GB, 2 GB): a server announcing or sending more is refused and nothing
is kept (Content-Length is only an announcement: the bytes received are counted). The whole
download must end within ``deadline`` seconds (default $MINDCOAT_DOWNLOAD_TIMEOUT, else 30
minutes; checked between reads, each of which waits at most ``timeout``); what was received by
then stays for a resume. Redirects are followed to http(s) URLs only.

Shared machines. The cache is one user's. Nothing in it is opened through a symbolic link
(O_NOFOLLOW; files created afresh with O_EXCL). A .partial or .lock that is a symbolic link, not a
regular file, or another user's, and a URL's folder that is a link or another user's (its owner
could swap the files in it after they are checked), are refused in one line naming the path:
never written through and never removed, so that whoever runs it can see what was planted before
removing it. A symbolic link at a cached file's name is refused the same way; a cached regular
file is used once its hash checks, whoever owns it.
"""
import contextlib
import hashlib
import http.client
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request

from ..errors import CheckpointError, DownloadError
from ..models.registry import PRETRAINED_FILES
from .readers import MAX_GB_ENV, size_cap

DEFAULT_BASE_URL = 'https://vcl.ucsd.edu/coat/pretrained/'
BASE_URL_ENV = 'MINDCOAT_WEIGHTS_URL'
DEADLINE_ENV = 'MINDCOAT_DOWNLOAD_TIMEOUT'
DEFAULT_DEADLINE = 30 * 60.0
CHUNK = 1 << 20
# torch.hub's convention: '<stem>-<hex>.<ext>'; the official CoaT files use '_' instead of '-'
_HASH_IN_NAME = re.compile(r'[_-]([0-9a-f]{8,64})\.[A-Za-z0-9]+$')
_HEX = re.compile(r'[0-9a-f]{1,64}')
# never through a symbolic link, never waiting for a FIFO's reader, never inherited by a child
_SAFE_OPEN = getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_NONBLOCK', 0) | \
    getattr(os, 'O_CLOEXEC', 0)


def cache_dir():
    root = os.environ.get('MINDCOAT_CACHE') or '~/.cache/mindcoat'
    return os.path.join(os.path.expanduser(root), 'weights')


def base_url():
    url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith('/') else url + '/'


def hash_prefix_of(file_name):
    """The SHA-256 prefix a file name carries (torch.hub's naming convention), or None."""
    m = _HASH_IN_NAME.search(file_name)
    return m.group(1) if m else None


def pretrained_cfg(model_name):
    """Where ``model_name``'s official weights are: {'url', 'file', 'hash_prefix'} (empty if it has
    none)."""
    file_name = PRETRAINED_FILES.get(model_name)
    if not file_name:
        return {}
    return {'url': base_url() + file_name, 'file': file_name,
            'hash_prefix': hash_prefix_of(file_name)}


def fetch_weights(url, hash_prefix=None, cache=None, progress=True, timeout=30.0, log=print,
                  max_bytes=None, deadline=None, official=False):
    """The local path of ``url``'s file in the cache, downloaded (or resumed) if needed and checked
    against ``hash_prefix`` (default: the prefix in the file name, if any).

    official: the file is one of the registry's, cached under its own name (module docstring).
    max_bytes: the most the download may bring (default: the checkpoint size cap).
    deadline: seconds the whole download may take (default $MINDCOAT_DOWNLOAD_TIMEOUT, else 30
        minutes); ``timeout`` is the longest wait for one read.
    Raises DownloadError (a ValueError) with one line saying what failed and how to use a local
    file instead."""
    file_name = _file_name(url)
    hash_prefix = _expected_hash(hash_prefix, file_name)
    root = cache or cache_dir()
    folder = _entry_folder(url, hash_prefix, root, official)
    final = os.path.join(folder, file_name)
    where = _local_file_hint(url, final, 'pretrained=True' if folder == root else 'that URL')
    job = _Download(url, final, where, _cap(max_bytes), _deadline(deadline), timeout)
    try:
        os.makedirs(root, exist_ok=True)
        if folder != root:
            _own_folder(folder, where)
        with _file_lock(os.path.join(folder, f'.{file_name}.lock'), where):
            return _fetch_locked(job, final, hash_prefix, progress, log)
    except DownloadError:
        raise
    except OSError as exc:  # unwritable cache, full disk: what was received stays for a resume
        raise DownloadError(f"cannot store {file_name} in {root} "
                            f"({_one_line(exc.strerror or exc)}): set MINDCOAT_CACHE to a "
                            f"writable folder; {where}") from None


def _file_name(url):
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ('http', 'https'):
        raise DownloadError(f"{url}: only http:// and https:// URLs are downloaded; pass a local "
                            "file as checkpoint_path=FILE (--ckpt_path FILE)")
    name = os.path.basename(parts.path)
    if name in ('', '.', '..'):
        raise DownloadError(f"{url}: the URL names no file")
    return name


def _expected_hash(hash_prefix, file_name):
    expected = (hash_prefix or hash_prefix_of(file_name) or '').lower() or None
    if expected and not _HEX.fullmatch(expected):  # it names a folder of the cache
        raise DownloadError(f"hash_prefix must be 1 to 64 hex digits of a SHA-256, got "
                            f"{hash_prefix!r}")
    return expected


def _entry_folder(url, hash_prefix, root, official):
    """The folder of ``url``'s file: the cache folder itself for an official file (its name
    carries its hash, so every mirror's copy is the same file), else one per URL and hash."""
    if official and hash_prefix:
        return root
    key = hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]
    return os.path.join(root, f"{key}-{hash_prefix or 'nohash'}")


def _cap(max_bytes):
    """(bytes a download may bring, what sets that number)."""
    if max_bytes is None:
        try:
            return size_cap(), f'the weight-file cap, {MAX_GB_ENV}'
        except CheckpointError as exc:
            raise DownloadError(str(exc)) from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise DownloadError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
    return max_bytes, 'max_bytes'


def _deadline(seconds):
    """Seconds a whole download may take: ``seconds``, else $MINDCOAT_DOWNLOAD_TIMEOUT, else 30
    minutes."""
    source = 'deadline'
    if seconds is None:
        seconds, source = os.environ.get(DEADLINE_ENV) or DEFAULT_DEADLINE, DEADLINE_ENV
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float('nan')
    if not value > 0:
        raise DownloadError(f"{source} must be a positive number of seconds, got {seconds!r}")
    return value


def _fetch_locked(job, final, hash_prefix, progress, log):
    digest = _cached_digest(final, job.where)
    if digest is not None:
        if hash_prefix and not digest.startswith(hash_prefix):
            raise DownloadError(f"cached {final} has SHA-256 {digest}, expected it to start "
                                f"with {hash_prefix}: delete it to download again; {job.where}")
        return final
    log(f"downloading {job.url} to {final}")
    job.run(progress)
    digest = _sha256_fd(_open_existing(job.partial, os.O_RDONLY, job.where, own=True))
    if hash_prefix and not digest.startswith(hash_prefix):
        os.remove(job.partial)  # a resume would only extend a wrong file
        raise DownloadError(f"{job.url}: SHA-256 mismatch, expected a digest starting with "
                            f"{hash_prefix}, got {digest} (the file was not kept); {job.where}")
    if not hash_prefix:
        log(f"warning: {os.path.basename(final)} carries no SHA-256 prefix in its name: "
            "not verified")
    os.replace(job.partial, final)  # replaces a link planted at the name, never writes through it
    return final


def _cached_digest(final, where):
    """The SHA-256 of the cached file, or None if there is none."""
    try:
        fd = _open_existing(final, os.O_RDONLY, where, own=False)
    except FileNotFoundError:
        return None
    return _sha256_fd(fd)


def sha256_of(path):
    with open(path, 'rb') as f:
        return _sha256_stream(f)


def _sha256_fd(fd):
    with os.fdopen(fd, 'rb') as f:
        return _sha256_stream(f)


def _sha256_stream(f):
    h = hashlib.sha256()
    for block in iter(lambda: f.read(CHUNK), b''):
        h.update(block)
    return h.hexdigest()


def _local_file_hint(url, final, use):
    return (f"to use a local copy, download {url} yourself and pass checkpoint_path=FILE "
            f"(--ckpt_path FILE), or put it at {final} for {use}")


def _problem(st, own, is_kind=stat.S_ISREG, kind='a regular file'):
    """Why a cache entry with this lstat/fstat result must not be used, or None."""
    if stat.S_ISLNK(st.st_mode):
        return 'a symbolic link'
    if not is_kind(st.st_mode):
        return f'not {kind}'
    uid = os.getuid() if hasattr(os, 'getuid') else st.st_uid
    if own and st.st_uid != uid:
        return f'owned by user id {st.st_uid}, not by you ({uid})'
    return None


def _refuse_unless_safe(path, st, where, own, **kind):
    problem = _problem(st, own, **kind)
    if problem:
        raise DownloadError(f"{path} is {problem}: refusing to use it (on a shared machine "
                            f"another user may have put it there); remove it and run again; "
                            f"{where}")


def _open_existing(path, flags, where, own):
    """A descriptor of the existing ``path``, opened without following a symbolic link and refused
    in one line unless it is a regular file (the current user's, when ``own``)."""
    try:
        fd = os.open(path, flags | _SAFE_OPEN)
    except FileNotFoundError:
        raise
    except OSError:  # a link (ELOOP), a FIFO or socket nobody reads (ENXIO), a folder (EISDIR)
        _refuse_unless_safe(path, os.lstat(path), where, own)
        raise
    try:
        _refuse_unless_safe(path, os.fstat(fd), where, own)
    except DownloadError:
        os.close(fd)
        raise
    return fd


def _open_own(path, flags, where):
    """A descriptor of ``path``: created afresh if missing, else an existing regular file of the
    current user's, opened without following a symbolic link."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL | _SAFE_OPEN, 0o666)
    except FileExistsError:
        return _open_existing(path, flags, where, own=True)


def _own_folder(path, where):
    """Creates a URL's folder; one that exists must be the current user's own: its owner could
    swap the files in it after they are checked."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    _refuse_unless_safe(path, os.lstat(path), where, own=True, is_kind=stat.S_ISDIR,
                        kind='a folder')


@contextlib.contextmanager
def _file_lock(path, where):
    """One downloader per file: msrun starts every rank with pretrained=True at once, and they
    share the cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = _open_own(path, os.O_RDWR, where)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _one_line(text):
    return ' '.join(str(text).split())


def _reason(exc):
    if isinstance(exc, TimeoutError) or 'timed out' in str(exc):
        return 'timed out'
    return _one_line(exc) or type(exc).__name__


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would also follow a redirect to ftp://: a download stays on http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme not in ('http', 'https'):
            raise urllib.error.HTTPError(newurl, code, f"{msg}, a redirect to {newurl} (refused)",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _announced_size(response, offset):
    """The file's size by the response's Content-Length, or None if it gives none."""
    length = response.headers.get('Content-Length', '')
    return offset + int(length) if re.fullmatch(r'[0-9]{1,20}', length) else None


def _resume_offset(response, start):
    """Where the response's body begins in the file: ``start`` for a 206 that continues the
    partial file, 0 for a full 200 body (a server that ignores Range: start over), None for a
    206 that starts elsewhere."""
    if response.status != 206:
        return 0
    m = re.match(r'bytes ([0-9]+)-', response.headers.get('Content-Range', ''))
    return start if m and int(m.group(1)) == start else None


class _Download:
    """Brings ``url`` into ``<final>.partial`` within a size cap and a deadline; every failure is
    a one-line DownloadError."""

    def __init__(self, url, final, where, cap, deadline, timeout):
        self.url, self.partial, self.where = url, final + '.partial', where
        self.label = os.path.basename(final)
        (self.cap, self.cap_source), self.deadline, self.timeout = cap, deadline, timeout
        self.stop_at = None

    def run(self, progress):
        self.stop_at = time.monotonic() + self.deadline
        response, offset = self._respond(self._partial_size())
        with response:
            total = _announced_size(response, offset)
            if total is not None and total > self.cap:
                raise self._too_big(f"the server announces {total} bytes")
            with os.fdopen(_open_own(self.partial, os.O_WRONLY, self.where), 'wb') as out:
                out.truncate(offset)
                out.seek(offset)
                done, why = self._copy(response, out, offset, total, progress)
                out.flush()
                os.fsync(out.fileno())
        if why or (total is not None and done != total):
            raise DownloadError(f"download of {self.url} stopped at {done} of {total or '?'} "
                                f"bytes ({why or 'connection closed'}): run again to resume from "
                                f"{self.partial}; {self.where}")

    def _partial_size(self):
        """Bytes already received (0 without a .partial); a planted one is refused here, before
        anything is asked of the server."""
        try:
            fd = _open_existing(self.partial, os.O_RDONLY, self.where, own=True)
        except FileNotFoundError:
            return 0
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _respond(self, start):
        """The response to read and where its body begins in the file: ``start`` when the server
        continues the partial file, else 0 (the whole file)."""
        response = self._open(start)
        offset = None if response is None else _resume_offset(response, start)
        if offset is None:  # 416 or an unusable 206: ask for the whole file
            if response is not None:
                response.close()
            response, offset = self._open(0), 0
        return response, offset

    def _open(self, start):
        """The response for the URL from byte ``start`` on (a Range request when start > 0), or
        None when the server cannot continue from there."""
        headers = {'User-Agent': 'mindcoat'}
        if start:
            headers['Range'] = f'bytes={start}-'
        left = max(self.stop_at - time.monotonic(), 0.01)
        timeout = left if self.timeout is None else min(self.timeout, left)
        opener = urllib.request.build_opener(_HttpRedirects)
        try:
            return opener.open(urllib.request.Request(self.url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # the partial file is not a prefix the server can extend
                return None
            raise self._failed(f"HTTP {exc.code} {_one_line(exc.reason)}") from None
        except urllib.error.URLError as exc:
            raise self._failed(f"{_reason(exc.reason)} (offline?)") from None
        # timeouts, resets, malformed URLs, answers that are not HTTP
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise self._failed(_reason(exc)) from None

    def _copy(self, response, out, done, total, progress):
        """Copies the body into ``out`` from byte ``done`` on; returns the file's size and why the
        copy stopped before the body's end (None if it did not). What was received stays in the
        file, for a resume; more than the cap is refused and removed."""
        from tqdm import tqdm
        with tqdm(total=total, initial=done, unit='B', unit_scale=True, unit_divisor=1024,
                  desc=self.label, disable=not progress) as bar:
            while True:
                if done > self.cap:
                    raise self._too_big(f"the server sent more than {self.cap} bytes")
                if time.monotonic() >= self.stop_at:
                    return done, (f"the {self.deadline:g} s deadline passed; a slow link needs "
                                  f"a larger {DEADLINE_ENV}")
                try:  # read1: one recv at most, so a trickle cannot hold off the deadline check
                    block = response.read1(min(CHUNK, self.cap + 1 - done))
                except (OSError, http.client.HTTPException, ValueError) as exc:  # resets, timeouts
                    return done, _reason(exc)
                if not block:
                    return done, None
                out.write(block)
                done += len(block)
                bar.update(len(block))

    def _failed(self, reason):
        return DownloadError(f"could not download {self.url}: {reason}; {self.where}")

    def _too_big(self, what):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.partial)
        return DownloadError(f"refused {self.url}: {what}, and the cap is {self.cap} bytes "
                             f"({self.cap_source}); nothing was kept; {self.where}")
