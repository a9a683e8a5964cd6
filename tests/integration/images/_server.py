"""A small threaded HTTP image server on 127.0.0.1 for tests and bench/prestage.py.

It serves the files of one directory with ``Range`` support (``os.sendfile`` when nothing
special is asked) and misbehaves on demand, per file name, through ``server.behave(name,
mode, ...)``: ``404``, ``500``, ``stall`` (send ``after`` bytes, then nothing), ``truncate``
(announce the full length, send ``after`` bytes, close), ``ignore_range`` (always 200),
and ``rate`` (bytes per second, to make a download slow enough to kill mid-way). It counts
the body bytes sent per file (``server.sent[name]``) and records the requests.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def do_GET(self) -> None:
        srv = self.server.owner
        name = self.path.lstrip("/").split("?", 1)[0]
        behaviour = dict(srv.behaviour.get(name, {}))
        mode = behaviour.get("mode")
        range_header = self.headers.get("Range")
        srv.requests.append((name, range_header))
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        path = os.path.join(srv.directory, name)
        if "/" in name or not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        if range_header and mode != "ignore_range":
            match = _RANGE.match(range_header)
            if match:
                start = int(match.group(1))
                if match.group(2):
                    end = min(int(match.group(2)), size - 1)
                if start >= size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", "bytes */%d" % size)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        self.wfile.flush()
        limit = end + 1 - start
        if mode in ("stall", "truncate"):
            limit = min(limit, int(behaviour.get("after", 0)))
        try:
            with open(path, "rb") as fh:
                self._send(fh, start, limit, name, behaviour.get("rate"))
            if mode == "stall":
                srv.stopping.wait(float(behaviour.get("stall_for", 120)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _send(self, fh: Any, offset: int, limit: int, name: str, rate: Optional[int]) -> None:
        srv = self.server.owner
        sock = self.connection
        sent = 0
        if not rate:
            while sent < limit:
                n = os.sendfile(sock.fileno(), fh.fileno(), offset + sent, min(limit - sent, 1 << 24))
                if n == 0:
                    break
                sent += n
                srv.count(name, n)
            return
        chunk = 64 * 1024
        fh.seek(offset)
        began = time.monotonic()
        while sent < limit:
            data = fh.read(min(chunk, limit - sent))
            if not data:
                break
            sock.sendall(data)
            sent += len(data)
            srv.count(name, len(data))
            ahead = sent / float(rate) - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer


class ImageServer:
    """``with ImageServer(directory) as srv: srv.url("a.qcow2")``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.behaviour: Dict[str, Dict[str, Any]] = {}
        self.sent: Dict[str, int] = defaultdict(int)
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def behave(self, name: str, mode: Optional[str] = None, **options: Any) -> None:
        """Set how ``name`` is served (``mode=None`` with no options: normally)."""
        if mode is None and not options:
            self.behaviour.pop(name, None)
        else:
            self.behaviour[name] = dict(options, mode=mode)

    def count(self, name: str, n: int) -> None:
        with self._lock:
            self.sent[name] += n

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
