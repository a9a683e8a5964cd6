"""Fixtures of the image list integration tests: a test PKI, a real ``openssl ca`` over its root,
and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from typing import Optional

import pytest

from tests.unit.plugins.modules.image_list.imagelist_pki import PKI, Party, subject_hash


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


class OpensslCA:
    """The test root CA driven by the real ``openssl ca`` (its database, ``-revoke``, ``-gencrl``),
    writing its CRL into ``ca_dir`` as ``<hash>.r0``, the way fetch-crl leaves it."""

    def __init__(self, directory: str, ca: Party, ca_dir: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.ca, self.ca_dir = ca, ca_dir
        self.config = os.path.join(directory, "ca.cnf")
        with open(os.path.join(directory, "index.txt"), "w"):
            pass
        with open(os.path.join(directory, "crlnumber"), "w") as fh:
            fh.write("01\n")
        with open(self.config, "w") as fh:
            fh.write(
                "[ ca ]\ndefault_ca = farm_ca\n[ farm_ca ]\n"
                f"database = {directory}/index.txt\ncrlnumber = {directory}/crlnumber\n"
                f"certificate = {ca.cert_path}\nprivate_key = {ca.key_path}\n"
                "default_md = sha256\ndefault_crl_days = 7\n"
            )

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", "ca", "-config", self.config, *args], check=True, capture_output=True)

    def revoke(self, party: Party) -> None:
        self._openssl("-revoke", party.cert_path)

    def gencrl(self, last_update: Optional[str] = None, next_update: Optional[str] = None) -> str:
        """Write the CRL (dates as ``YYYYMMDDHHMMSSZ``, default now and now + 7 days); its path."""
        path = os.path.join(self.ca_dir, subject_hash(self.ca.cert_path) + ".r0")
        dates = []
        if last_update:
            dates += ["-crl_lastupdate", last_update]
        if next_update:
            dates += ["-crl_nextupdate", next_update]
        self._openssl("-gencrl", "-out", path, *dates)
        return path
