"""pretrained=True: download, SHA-256 check, cache, resume, and the one-line failures, against an
HTTP server this test starts on 127.0.0.1 (nothing reaches the internet). The served file is a
real MindSpore checkpoint of a shrunken coat_lite_tiny."""
import hashlib
import http.server
import os
import socket
import time

import mindspore as ms
import numpy as np
import pytest

from mindcoat import create_model
from mindcoat.errors import DownloadError
from mindcoat.weights import hub
from mindcoat.models import PRETRAINED_FILES
from http_server import local_server

TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support. ``server.drop_after`` (bytes) cuts the next
    body short and closes the connection; ``server.ignore_range`` answers every Range with the
    whole file (200); ``server.stall`` never answers."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append((self.path, self.headers.get('Range')))
        if srv.stall:
            time.sleep(3)
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, 'Not Found')
            return
        start = 0
        rng = self.headers.get('Range')
        if rng and not srv.ignore_range:
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(body):
                self.send_error(416, 'Range Not Satisfiable')
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        else:
            self.send_response(200)
        self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        if srv.drop_after is not None:
            self.wfile.write(body[start:start + srv.drop_after])
            srv.drop_after = None
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *_):
        pass


@pytest.fixture()
def server():
    with local_server(_Handler, files={}, requests=[], drop_after=None, ignore_range=False,
                      stall=False) as srv:
        yield srv


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MINDCOAT_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache' / 'weights'


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
    """(bytes, SHA-256, {name: array}) of a real checkpoint of a shrunken coat_lite_tiny."""
    model = create_model('coat_lite_tiny', **TINY)
    rng = np.random.default_rng(0)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    path = str(tmp_path_factory.mktemp('w') / 'tiny.ckpt')
    ms.save_checkpoint(model, path)
    data = open(path, 'rb').read()
    return data, hashlib.sha256(data).hexdigest(), {p.name: p.asnumpy()
                                                   for p in model.get_parameters()}


def _holds(model, weights):
    return all(np.array_equal(p.asnumpy(), weights[p.name]) for p in model.get_parameters())


def _files(folder):
    return sorted(f for f in os.listdir(folder) if not f.endswith('.lock'))


def _entry(cache, url, hash_prefix):
    """The cache folder of a URL that is not an official file: one per URL and expected hash."""
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{hash_prefix}"


def test_pretrained_true_downloads_verifies_caches_and_loads(server, cache, weights_file,
                                                             monkeypatch, capsys):
    data, digest, weights = weights_file
    name = f'coat_lite_tiny_{digest[:8]}.ckpt'  # the registry's naming, a MindSpore file
    monkeypatch.setitem(PRETRAINED_FILES, 'coat_lite_tiny', name)
    monkeypatch.setenv('MINDCOAT_WEIGHTS_URL', server.url + '/coat')
    server.files['/coat/' + name] = data
    model = create_model('coat_lite_tiny', pretrained=True, **TINY)
    assert model.default_cfg['url'] == f'{server.url}/coat/{name}'
    assert model.default_cfg['hash_prefix'] == digest[:8]
    assert _holds(model, weights)
    assert _files(cache) == [name]
    assert hub.sha256_of(str(cache / name)) == digest
    assert f'downloading {server.url}/coat/{name}' in capsys.readouterr().out
    # the second time it comes from the cache: no request
    again = create_model('coat_lite_tiny', pretrained=True, **TINY)
    assert _holds(again, weights) and len(server.requests) == 1
    # another head: the classifier is re-initialised with a line saying so, the rest is loaded
    lines = []
    ten = create_model('coat_lite_tiny', pretrained=True, num_classes=10, log=lines.append, **TINY)
    assert ten.head.weight.shape == (10, 16)
    assert any('classifier re-initialised' in line for line in lines)
    assert np.array_equal(ten.cls_token4.asnumpy(), weights['cls_token4'])


def test_a_url_is_checked_against_the_hash_in_its_name(server, cache, weights_file):
    data, digest, weights = weights_file
    server.files[f'/x/tiny_{digest[:8]}.ckpt'] = data
    url = f'{server.url}/x/tiny_{digest[:8]}.ckpt'
    model = create_model('coat_lite_tiny', pretrained=url, **TINY)
    assert _holds(model, weights)
    assert _files(_entry(cache, url, digest[:8])) == [f'tiny_{digest[:8]}.ckpt']


def test_a_wrong_hash_is_one_line_and_keeps_nothing(server, cache, weights_file, monkeypatch):
    """The registry's real name and prefix (e88e96b0) against a file whose digest differs."""
    data, digest, _ = weights_file
    monkeypatch.setenv('MINDCOAT_WEIGHTS_URL', server.url)
    server.files['/coat_lite_tiny_e88e96b0.pth'] = data
    with pytest.raises(DownloadError) as err:
        create_model('coat_lite_tiny', pretrained=True, **TINY)
    msg = str(err.value)
    assert '\n' not in msg
    assert f'SHA-256 mismatch, expected a digest starting with e88e96b0, got {digest}' in msg
    assert 'checkpoint_path=' in msg and str(cache / 'coat_lite_tiny_e88e96b0.pth') in msg
    assert _files(cache) == []  # neither the final name nor a .partial to resume from
    assert isinstance(err.value, ValueError)


def test_a_cached_file_with_the_wrong_hash_is_refused(cache, weights_file):
    os.makedirs(cache)
    (cache / 'coat_lite_tiny_e88e96b0.pth').write_bytes(weights_file[0])
    with pytest.raises(DownloadError, match='cached .* expected it to start with e88e96b0: '
                                                'delete it to download again'):
        hub.fetch_weights('http://127.0.0.1:9/coat_lite_tiny_e88e96b0.pth', official=True)


@pytest.mark.parametrize('ignore_range', [False, True], ids=['range', 'server-ignores-range'])
def test_a_cut_download_resumes(server, cache, weights_file, ignore_range):
    data, digest, _ = weights_file
    name = f'tiny_{digest[:8]}.ckpt'
    server.files['/' + name] = data
    server.drop_after = cut = len(data) // 3
    url = f'{server.url}/{name}'
    with pytest.raises(DownloadError, match=rf'stopped at {cut} of {len(data)} bytes .*'
                                                'run again to resume'):
        hub.fetch_weights(url, progress=False, log=[].append)
    entry = _entry(cache, url, digest[:8])
    assert _files(entry) == [name + '.partial']
    assert os.path.getsize(entry / (name + '.partial')) == cut
    server.ignore_range = ignore_range
    path = hub.fetch_weights(url, progress=False, log=[].append)
    assert server.requests[-1] == ('/' + name, f'bytes={cut}-')  # asked to resume
    assert hub.sha256_of(path) == digest
    assert _files(entry) == [name]


def test_a_partial_file_longer_than_the_file_starts_over(server, cache, weights_file):
    data, digest, _ = weights_file
    name = f'tiny_{digest[:8]}.ckpt'
    server.files['/' + name] = data
    url = f'{server.url}/{name}'
    entry = _entry(cache, url, digest[:8])
    os.makedirs(entry)
    (entry / (name + '.partial')).write_bytes(b'x' * (len(data) + 5))  # the server says 416
    path = hub.fetch_weights(url, progress=False, log=[].append)
    assert hub.sha256_of(path) == digest


def test_not_found_is_one_line(server, cache):
    url = f'{server.url}/coat_tiny_c6efc33c.pth'
    with pytest.raises(DownloadError) as err:
        hub.fetch_weights(url, log=[].append)
    msg = str(err.value)
    assert 'HTTP 404' in msg and 'checkpoint_path=FILE (--ckpt_path FILE)' in msg
    assert '\n' not in msg and _files(_entry(cache, url, 'c6efc33c')) == []


def test_a_refused_connection_is_one_line(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('MINDCOAT_WEIGHTS_URL', f'http://127.0.0.1:{port}/')
    with pytest.raises(DownloadError, match=r'could not download http://127\.0\.0\.1:\d+/'
                                                r'coat_mini_40667eec\.pth: .*refused.*offline'):
        create_model('coat_mini', pretrained=True, log=[].append, **TINY)


def test_a_silent_server_times_out(server, cache):
    server.stall = True
    start = time.monotonic()
    with pytest.raises(DownloadError, match='timed out'):
        hub.fetch_weights(f'{server.url}/coat_tiny_c6efc33c.pth', timeout=0.5, log=[].append)
    assert time.monotonic() - start < 2.5


def test_an_unusable_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('')
    monkeypatch.setenv('MINDCOAT_CACHE', str(blocker))
    with pytest.raises(DownloadError, match='cannot store coat_tiny_c6efc33c.pth in .*not-a-'
                                                'folder/weights .*set MINDCOAT_CACHE'):
        hub.fetch_weights('http://127.0.0.1:9/coat_tiny_c6efc33c.pth', log=[].append)
