"""The official CoaT weights: download, verify and cache (``create_model(name, pretrained=True)``).

Files come from ``$MINDCOAT_WEIGHTS_URL`` (default https://vcl.ucsd.edu/coat/pretrained/, the
official README's links) and are kept, unconverted, in ``$MINDCOAT_CACHE/weights`` (default
``~/.cache/mindcoat/weights``); every load reads them through the safe readers of mindcoat.weights.
The 8 hex digits in each official file name are the start of its SHA-256, checked after every
download and on every use of a cached file. A download is written to ``<file>.partial``, resumed
from there with an HTTP Range request, and renamed into place only once its hash is right.
Standard library (urllib) and tqdm only.
"""
import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from ..errors import DownloadError
from ..models.registry import PRETRAINED_FILES

DEFAULT_BASE_URL = 'https://vcl.ucsd.edu/coat/pretrained/'
BASE_URL_ENV = 'MINDCOAT_WEIGHTS_URL'
CHUNK = 1 << 20
# torch.hub's convention: '<stem>-<hex>.<ext>'; the official CoaT files use '_' instead of '-'
_HASH_IN_NAME = re.compile(r'[_-]([0-9a-f]{8,64})\.[A-Za-z0-9]+$')


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


def fetch_weights(url, hash_prefix=None, cache=None, progress=True, timeout=30.0, log=print):
    """The local path of ``url``'s file in the cache, downloaded (or resumed) if needed and checked
    against ``hash_prefix`` (default: the prefix in the file name, if any). Raises DownloadError
    (a ValueError) with one line saying what failed and how to use a local file instead."""
    file_name = os.path.basename(urllib.parse.urlparse(url).path)
    if not file_name:
        raise DownloadError(f"{url}: the URL names no file")
    hash_prefix = (hash_prefix or hash_prefix_of(file_name) or '').lower() or None
    folder = cache or cache_dir()
    final = os.path.join(folder, file_name)
    where = _local_file_hint(url, final)
    try:
        os.makedirs(folder, exist_ok=True)
        with _file_lock(os.path.join(folder, f'.{file_name}.lock')):
            return _fetch_locked(url, final, hash_prefix, timeout, progress, where, log)
    except DownloadError:
        raise
    except OSError as exc:  # unwritable cache, full disk: what was received stays for a resume
        raise DownloadError(f"cannot store {file_name} in {folder} ({exc.strerror or exc}): set "
                            f"MINDCOAT_CACHE to a writable folder; {where}") from None


def _fetch_locked(url, final, hash_prefix, timeout, progress, where, log):
    if os.path.exists(final):
        digest = sha256_of(final)
        if hash_prefix and not digest.startswith(hash_prefix):
            raise DownloadError(f"cached {final} has SHA-256 {digest}, expected it to start "
                                f"with {hash_prefix}: delete it to download again; {where}")
        return final
    partial = final + '.partial'
    log(f"downloading {url} to {final}")
    _download(url, partial, os.path.basename(final), timeout, progress, where)
    digest = sha256_of(partial)
    if hash_prefix and not digest.startswith(hash_prefix):
        os.remove(partial)  # a resume would only extend a wrong file
        raise DownloadError(f"{url}: SHA-256 mismatch, expected a digest starting with "
                            f"{hash_prefix}, got {digest} (the file was not kept); {where}")
    if not hash_prefix:
        log(f"warning: {os.path.basename(final)} carries no SHA-256 prefix in its name: "
            "not verified")
    os.replace(partial, final)  # never a half-written or unverified file under the final name
    return final


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def _local_file_hint(url, final):
    return (f"to use a local copy, download {url} yourself and pass checkpoint_path=FILE "
            f"(--ckpt_path FILE), or put it at {final} for pretrained=True")


@contextlib.contextmanager
def _file_lock(path):
    """One downloader per file: msrun starts every rank with pretrained=True at once, and they
    share the cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(url, start, timeout, where):
    """The response for ``url`` from byte ``start`` on (a Range request when start > 0)."""
    headers = {'User-Agent': 'mindcoat'}
    if start:
        headers['Range'] = f'bytes={start}-'
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the partial file is not a prefix the server can extend
            return None
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}; "
                            f"{where}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not download {url}: {_reason(exc.reason)} (offline?); "
                            f"{where}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise DownloadError(f"could not download {url}: {_reason(exc)}; {where}") from None


def _reason(exc):
    if isinstance(exc, TimeoutError) or 'timed out' in str(exc):
        return 'timed out'
    return str(exc) or type(exc).__name__


def _resume_offset(response, start):
    """Where the response's body begins in the file: ``start`` for a 206 that continues the
    partial file, 0 for a full 200 body (a server that ignores Range: start over), None for a
    206 that starts elsewhere."""
    if response.status != 206:
        return 0
    m = re.match(r'bytes (\d+)-', response.headers.get('Content-Range', ''))
    return start if m and int(m.group(1)) == start else None


def _download(url, partial, label, timeout, progress, where):
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    response = _open(url, start, timeout, where)
    offset = None if response is None else _resume_offset(response, start)
    if offset is None:  # 416 or an unusable 206: ask for the whole file
        if response is not None:
            response.close()
        response = _open(url, 0, timeout, where)
        offset = 0
    with response:
        length = response.headers.get('Content-Length')
        total = offset + int(length) if length and length.isdigit() else None
        with open(partial, 'ab' if offset else 'wb') as out:
            done = _copy(response, out, offset, total, label, progress)
            out.flush()
            os.fsync(out.fileno())
    if isinstance(done, Exception) or (total is not None and done != total):
        reason = _reason(done) if isinstance(done, Exception) else 'connection closed'
        raise DownloadError(f"download of {url} stopped at {os.path.getsize(partial)} of "
                            f"{total or '?'} bytes ({reason}): run again to resume from {partial}; "
                            f"{where}")


def _copy(response, out, offset, total, label, progress):
    """Copies the body into ``out``; returns the file's size, or the exception that stopped it
    (what was received stays in the file, for a resume)."""
    from tqdm import tqdm
    done = offset
    with tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
              desc=label, disable=not progress) as bar:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException, ValueError) as exc:  # resets, timeouts
                return exc
            if not block:
                return done
            out.write(block)
            done += len(block)
            bar.update(len(block))
