"""A real HTTP server on 127.0.0.1 for the download tests: the handler class decides what it
serves; the attributes given become the server's state, which the handler reads and the test
inspects."""
import http.server
import threading
from contextlib import contextmanager


@contextmanager
def local_server(handler, **state):
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    srv.daemon_threads = True
    for name, value in state.items():
        setattr(srv, name, value)
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
