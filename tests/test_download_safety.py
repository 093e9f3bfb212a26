"""Downloads on shared machines and from hostile servers (mindcoat.weights.hub): links planted at
the cache's .partial, .lock and final names, a server sending more than the cap, one trickling
bytes past the deadline, two URLs ending in the same file name, and bad redirects. Every download
is real, from an HTTP server this test starts on 127.0.0.1."""
import hashlib
import http.server
import os
import time

import pytest

from mindcoat.errors import DownloadError
from mindcoat.weights import hub
from http_server import local_server

BODY = bytes(range(256)) * 16  # 4 KiB
DIGEST = hashlib.sha256(BODY).hexdigest()
NAME = f'tiny_{DIGEST[:8]}.ckpt'
VICTIM_TEXT = b'a file of yours outside the cache\n'


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers each path with ``server.routes[path](handler)``; a path not there is a 404."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, 'Not Found')
        else:
            route(self)

    def log_message(self, *_):
        pass


def _file(body, length=None):
    """A route serving ``body`` whole, announcing ``length`` (default: its size; False: no
    Content-Length, the body ends when the connection closes)."""
    def route(h):
        h.send_response(200)
        if length is not False:
            h.send_header('Content-Length', str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True
    return route


def _redirect(location):
    def route(h):
        h.send_response(302)
        h.send_header('Location', location)
        h.send_header('Content-Length', '0')
        h.end_headers()
    return route


def _trickle(size, every):
    """A route announcing ``size`` bytes and sending one every ``every`` seconds."""
    def route(h):
        h.send_response(200)
        h.send_header('Content-Length', str(size))
        h.end_headers()
        try:
            for i in range(size):
                h.wfile.write(bytes([i % 256]))
                h.wfile.flush()
                time.sleep(every)
        except OSError:  # the client hung up
            pass
        h.close_connection = True
    return route


def _garbage(h):
    h.wfile.write(b'this is not HTTP\r\n\r\n')
    h.close_connection = True


@pytest.fixture()
def server():
    with local_server(_Handler, routes={}, requests=[]) as srv:
        yield srv


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MINDCOAT_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('MINDCOAT_DOWNLOAD_TIMEOUT', raising=False)
    monkeypatch.delenv('MINDCOAT_MAX_CHECKPOINT_GB', raising=False)
    return tmp_path / 'cache' / 'weights'


@pytest.fixture()
def victim(tmp_path):
    path = tmp_path / 'victim.txt'
    path.write_bytes(VICTIM_TEXT)
    return path


def _entry(cache, url, hash_prefix):
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{hash_prefix}"


def _fetch(url, **kw):
    return hub.fetch_weights(url, progress=False, log=[].append, **kw)


def _one_line_error(url, **kw):
    with pytest.raises(DownloadError) as err:
        _fetch(url, **kw)
    msg = str(err.value)
    assert '\n' not in msg and '\r' not in msg
    return msg


def _served(server, name=NAME, body=BODY):
    server.routes['/' + name] = _file(body)
    return f'{server.url}/{name}'


# (a), (b) and the final name: a link planted in the cache is never written through

@pytest.mark.parametrize('planted', ['.partial', '.lock'])
@pytest.mark.parametrize('target', ['existing', 'missing'])
def test_a_planted_link_is_refused_and_its_target_untouched(server, cache, victim, planted,
                                                            target):
    url = _served(server)
    entry = _entry(cache, url, DIGEST[:8])
    os.makedirs(entry)
    link = entry / (NAME + '.partial' if planted == '.partial' else f'.{NAME}.lock')
    aim = victim if target == 'existing' else victim.with_name('not-yet.txt')
    os.symlink(aim, link)
    msg = _one_line_error(url)
    assert f'{link} is a symbolic link: refusing to use it' in msg
    assert 'remove it and run again' in msg and 'checkpoint_path=FILE' in msg
    assert victim.read_bytes() == VICTIM_TEXT
    assert not victim.with_name('not-yet.txt').exists()  # not created through a dangling link
    assert os.path.islink(link) and not (entry / NAME).exists()
    if planted == '.partial':
        assert server.requests == []  # refused before anything was asked of the server
    os.remove(link)  # once the user has seen it: the download goes through
    assert hub.sha256_of(_fetch(url)) == DIGEST


def test_a_link_at_the_cached_name_is_not_followed(server, cache, victim):
    """The official layout: a link where the file belongs, even to the right content, is refused."""
    right = victim.with_name(NAME)
    right.write_bytes(BODY)
    os.makedirs(cache)
    os.symlink(right, cache / NAME)
    msg = _one_line_error(_served(server), official=True)
    assert f'{cache / NAME} is a symbolic link' in msg and server.requests == []
    os.remove(cache / NAME)
    os.symlink(victim, cache / NAME)  # a link to a file of yours: refused, the file untouched
    assert 'is a symbolic link' in _one_line_error(_served(server), official=True)
    assert victim.read_bytes() == VICTIM_TEXT


def test_a_url_folder_that_is_a_link_is_refused(server, cache, tmp_path):
    url = _served(server)
    elsewhere = tmp_path / 'elsewhere'
    os.makedirs(elsewhere)
    os.makedirs(cache)
    os.symlink(elsewhere, _entry(cache, url, DIGEST[:8]))
    msg = _one_line_error(url)
    assert 'is a symbolic link' in msg and os.listdir(elsewhere) == []


@pytest.mark.skipif(not hasattr(os, 'getuid') or os.getuid() != 0,
                    reason='giving a file to another user needs root')
def test_another_users_partial_is_refused(server, cache):
    url = _served(server)
    entry = _entry(cache, url, DIGEST[:8])
    os.makedirs(entry)
    partial = entry / (NAME + '.partial')
    partial.write_bytes(BODY[:100])
    os.chown(partial, 65534, 65534)
    msg = _one_line_error(url)
    assert f'{partial} is owned by user id 65534, not by you' in msg
    assert partial.read_bytes() == BODY[:100]


def test_a_partial_that_is_a_folder_is_refused(server, cache):
    url = _served(server)
    partial = _entry(cache, url, DIGEST[:8]) / (NAME + '.partial')
    os.makedirs(partial)
    assert f'{partial} is not a regular file' in _one_line_error(url)


# (c) the size cap

def test_a_server_announcing_more_than_the_cap_is_refused(server, cache):
    url = _served(server)
    msg = _one_line_error(url, max_bytes=len(BODY) - 1)
    assert msg.startswith(f'refused {url}: the server announces {len(BODY)} bytes, and the cap '
                          f'is {len(BODY) - 1} bytes (max_bytes); nothing was kept')
    assert os.listdir(_entry(cache, url, DIGEST[:8])) == [f'.{NAME}.lock']


def test_bytes_received_beyond_the_cap_are_refused(server, cache):
    """No Content-Length (the body ends when the server hangs up): the bytes are counted."""
    server.routes['/big.ckpt'] = _file(BODY, length=False)
    url = f'{server.url}/big.ckpt'
    msg = _one_line_error(url, max_bytes=1000)
    assert 'the server sent more than 1000 bytes, and the cap is 1000 bytes (max_bytes)' in msg
    assert os.listdir(_entry(cache, url, 'nohash')) == ['.big.ckpt.lock']


def test_the_default_cap_is_the_checkpoint_cap(server, cache, monkeypatch):
    monkeypatch.setenv('MINDCOAT_MAX_CHECKPOINT_GB', str(1000 / (1 << 30)))  # 1000 bytes
    url = _served(server)
    msg = _one_line_error(url)
    assert 'the cap is 1000 bytes (the weight-file cap, MINDCOAT_MAX_CHECKPOINT_GB)' in msg
    assert hub.sha256_of(_fetch(url, max_bytes=len(BODY))) == DIGEST  # the caller's cap wins


# (d) the deadline

@pytest.mark.parametrize('how', ['argument', 'environment'])
def test_a_trickling_server_is_stopped_at_the_deadline(server, cache, monkeypatch, how):
    server.routes['/slow.ckpt'] = _trickle(1000, 0.2)
    url = f'{server.url}/slow.ckpt'
    kw = {'deadline': 1.0}
    if how == 'environment':
        monkeypatch.setenv('MINDCOAT_DOWNLOAD_TIMEOUT', '1')
        kw = {}
    start = time.monotonic()
    msg = _one_line_error(url, **kw)
    took = time.monotonic() - start
    assert 1.0 <= took < 2.5, took  # a deadline check after every read, each within 0.2 s
    partial = _entry(cache, url, 'nohash') / 'slow.ckpt.partial'
    assert f'of 1000 bytes (the 1 s deadline passed; a slow link needs a larger ' \
           f'MINDCOAT_DOWNLOAD_TIMEOUT): run again to resume from {partial}' in msg
    kept = partial.read_bytes()  # kept for a resume
    assert 1 <= len(kept) <= 7 and kept == bytes(range(len(kept)))


def test_a_bad_deadline_setting_is_one_line(cache, monkeypatch):
    monkeypatch.setenv('MINDCOAT_DOWNLOAD_TIMEOUT', 'soon')
    msg = _one_line_error('http://127.0.0.1:9/x.ckpt')
    assert msg == "MINDCOAT_DOWNLOAD_TIMEOUT must be a positive number of seconds, got 'soon'"


# (e) the cache key

def test_two_urls_ending_in_the_same_name_get_their_own_files(server, cache):
    server.routes['/a/model.ckpt'] = _file(b'from a' * 100)
    server.routes['/b/model.ckpt'] = _file(b'from b' * 100)
    a, b = f'{server.url}/a/model.ckpt', f'{server.url}/b/model.ckpt'
    path_a, path_b = _fetch(a), _fetch(b)
    assert path_a == str(_entry(cache, a, 'nohash') / 'model.ckpt')
    assert path_b == str(_entry(cache, b, 'nohash') / 'model.ckpt')
    assert open(path_a, 'rb').read() == b'from a' * 100
    assert open(path_b, 'rb').read() == b'from b' * 100
    assert _fetch(a) == path_a and _fetch(b) == path_b
    assert server.requests == ['/a/model.ckpt', '/b/model.ckpt']  # then from the cache


def test_the_same_url_with_another_expected_hash_is_another_entry(server, cache):
    url = _served(server, 'model.ckpt')
    assert _fetch(url, hash_prefix=DIGEST[:12]) == str(_entry(cache, url, DIGEST[:12]) /
                                                      'model.ckpt')
    msg = _one_line_error(url, hash_prefix='0' * 8)  # not answered from the other entry
    assert 'SHA-256 mismatch' in msg and len(server.requests) == 2


def test_the_hint_names_where_a_copy_is_found(server, cache, tmp_path):
    """Offline: the file put where the message says is used, for a URL and for an official
    file."""
    url = f'{server.url}/{NAME}'  # nothing served: a 404
    for official in (False, True):
        msg = _one_line_error(url, official=official)
        use = 'pretrained=True' if official else 'that URL'
        assert msg.endswith(f' for {use}')
        where = msg.split('or put it at ')[1][:-len(f' for {use}')]
        assert where == str(cache / NAME if official else _entry(cache, url, DIGEST[:8]) / NAME)
        with open(where, 'wb') as f:
            f.write(BODY)
        assert _fetch(url, official=official) == where


# (f) redirects and garbled answers

@pytest.mark.parametrize('location, expect', [
    ('/loop.ckpt', 'HTTP 302 The HTTP server returned a redirect error that would lead to an '
                   'infinite loop. The last 30x error message was: Found'),
    ('ftp://127.0.0.1:9/x.ckpt', 'HTTP 302 Found, a redirect to ftp://127.0.0.1:9/x.ckpt '
                                 '(refused)'),
    ('file:///etc/passwd', "Redirection to url 'file:///etc/passwd' is not allowed"),
], ids=['loop', 'to-ftp', 'to-file'])
def test_a_bad_redirect_is_one_line(server, cache, location, expect):
    server.routes['/loop.ckpt'] = _redirect(location)
    msg = _one_line_error(f'{server.url}/loop.ckpt')
    assert msg.startswith(f'could not download {server.url}/loop.ckpt: ') and expect in msg
    assert 'checkpoint_path=FILE' in msg


def test_a_redirect_to_http_is_followed(server, cache):
    url = _served(server)
    server.routes['/moved.ckpt'] = _redirect(url)
    path = _fetch(f'{server.url}/moved.ckpt', hash_prefix=DIGEST[:8])
    assert hub.sha256_of(path) == DIGEST


def test_a_garbled_answer_is_one_line(server, cache):
    server.routes['/x.ckpt'] = _garbage
    assert 'this is not HTTP' in _one_line_error(f'{server.url}/x.ckpt')


def test_only_http_urls_are_downloaded(cache):
    assert 'only http:// and https:// URLs' in _one_line_error('ftp://127.0.0.1/x.ckpt')
