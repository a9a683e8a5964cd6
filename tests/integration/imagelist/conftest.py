"""Fixtures of the image list integration tests: a test PKI and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from tests.unit.plugins.modules.image_list.imagelist_pki import PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; ``/status/<code>`` answers that code, ``/stall`` never answers in time."""

    stall_seconds = 5.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self.send_error(code, "test status")
            return
        if self.path == "/stall":
            time.sleep(self.stall_seconds)
            self.send_error(504, "stalled")
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    """(base URL, served directory) of an HTTP server on 127.0.0.1 at a random port."""
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    os.chmod(path, 0o755)
    return path
