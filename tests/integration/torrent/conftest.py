"""Fixtures of the BitTorrent tests (engine: libtorrent): a real opentracker, a Range-capable HTTP server (the web
seed), images of random bytes, and network namespaces; all removed by ``hostbed``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pytest

from tests.integration.torrent.netlab import NetLab

HERE = os.path.dirname(os.path.abspath(__file__))
RANGESERVER = os.path.join(os.path.dirname(HERE), "images", "_server.py")  # the one test HTTP server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, prefix: Optional[List[str]] = None, timeout: float = 10.0) -> None:
    """Wait until something listens on host:port (inside the namespace of ``prefix``)."""
    deadline = time.monotonic() + timeout
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    while time.monotonic() < deadline:
        if prefix:
            ok = (
                subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=False).returncode == 0
            )
        else:
            try:
                socket.create_connection((host, port), timeout=1).close()
                ok = True
            except OSError:
                ok = False
        if ok:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


class Swarm:
    """Starts the pieces of a BitTorrent distribution, each registered for cleanup."""

    def __init__(self, bed) -> None:  # type: ignore[no-untyped-def]
        self.bed = bed
        self.tmp = bed.tmp
        self.servers: Dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]  # base URL -> HTTP server
        os.chmod(self.tmp, 0o755)  # opentracker drops to 'nobody' and reads its whitelist here

    def image(self, name: str = "image.raw", size: int = 8 * 1024 * 1024, directory: Optional[str] = None) -> str:
        directory = directory or os.path.join(self.tmp, "srv")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "wb") as handle:
            handle.write(os.urandom(size))
        return path

    def tracker(self, host: str = "127.0.0.1", prefix: Optional[List[str]] = None) -> Tracker:
        root = os.path.join(self.tmp, f"tracker-{host}")
        os.makedirs(root, mode=0o755, exist_ok=True)
        open(os.path.join(root, "whitelist"), "w").close()
        port = free_port() if not prefix else 6969
        proc = subprocess.Popen(
            [*(prefix or []), "opentracker", "-i", host, "-p", str(port), "-P", str(port),
             "-w", "whitelist", "-d", root, "-u", "nobody"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.bed.process(proc)
        wait_port(host, port, prefix)
        return Tracker(proc, root, f"http://{host}:{port}/announce")

    def http(self, directory: str, host: str = "127.0.0.1", prefix: Optional[List[str]] = None) -> str:
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, RANGESERVER, "--bind", host, "--port", "0", "--dir", directory],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.bed.process(proc)
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        self.servers[f"http://{host}:{port}"] = proc
        return f"http://{host}:{port}"

    def state_dir(self, name: str) -> str:
        """A seeding state directory whose seeders are stopped at cleanup."""
        path = os.path.join(self.tmp, name, "state")
        os.makedirs(path, exist_ok=True)

        def stop() -> None:
            from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs

            for record in _torrent_jobs.seeding_status(path):
                _torrent_jobs.stop_seeding(record["info_hash"], path)

        self.bed.cleanup(stop)
        return path


class Tracker:
    def __init__(self, proc: subprocess.Popen, root: str, url: str) -> None:  # type: ignore[type-arg]
        self.proc = proc
        self.root = root
        self.url = url

    def allow(self, info_hash: str) -> None:
        """Whitelist an info hash (opentracker rereads its whitelist on SIGHUP)."""
        with open(os.path.join(self.root, "whitelist"), "a") as handle:
            handle.write(info_hash + "\n")
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)


@pytest.fixture(scope="session", autouse=True)
def engine_dir_left_as_found():
    """The transport installs its engine into the system's default engine directory at its first
    use; remove what these tests installed there when it was not there before."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_jobs import DEFAULT_ENGINE_DIR

    created = [path for path in (DEFAULT_ENGINE_DIR, os.path.dirname(DEFAULT_ENGINE_DIR)) if not os.path.exists(path)]
    yield
    for path in created:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def swarm(hostbed) -> Swarm:  # type: ignore[no-untyped-def]
    if shutil.which("opentracker") is None:
        pytest.fail("opentracker is needed (bindep.txt, profile test: opentracker)")
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        pytest.fail("libtorrent's Python binding is needed (requirements.txt: libtorrent)")
    return Swarm(hostbed)


@pytest.fixture
def netlab(hostbed) -> NetLab:  # type: ignore[no-untyped-def]
    return NetLab(hostbed.cleanup)
