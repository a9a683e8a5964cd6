"""The one test HTTP(S) image server: a directory served with ``Range`` support, misbehaving on demand.

In-process (the images tests, bench/prestage.py)::

    with ImageServer(directory) as srv:            # http://127.0.0.1:<port>/
        srv.url("a.qcow2")
    ImageServer(directory, tls=(cert, key))        # https://

or as its own process, so that it can live in a network namespace (the BitTorrent tests' BEP-19
web seed, bench/distribution.py)::

    python _server.py --bind 198.18.0.1 --port 0 --dir /srv/images

which prints the port it listens on as its first line, then serves until killed.

Requests: ``GET`` and ``HEAD``, ``Range: bytes=A-``, ``bytes=A-B`` and ``bytes=-N`` (the last N),
HTTP/1.1 keep-alive. Body bytes go out with ``os.sendfile`` unless TLS or a rate is in play.
Misbehaviour per file name through ``server.behave(name, mode, ...)``: ``404``, ``500``,
``redirect`` (302 to ``location``), ``stall`` (send ``after`` bytes, then nothing for
``stall_for`` s), ``truncate`` (announce the full length, send ``after`` bytes, close),
``ignore_range`` (always 200), and ``rate`` (bytes per second, to make a download slow enough
to kill mid-way). It counts the body bytes sent per file (``server.sent[name]``) and records the
requests (``server.requests``: ``(name, Range header)``).
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    """``(first, last)`` of a ``Range`` header (``(size, -1)`` when unsatisfiable), None: whole file."""
    match = _RANGE.match(header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(0, size - int(match.group(2))), size - 1
    return (start, end) if start < size and start <= end else (size, -1)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        srv = self.server.owner
        name = self.path.split("?", 1)[0].lstrip("/")
        behaviour = dict(srv.behaviour.get(name, {}))
        mode = behaviour.get("mode")
        range_header = self.headers.get("Range")
        srv.requests.append((name, range_header))
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", str(behaviour["location"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = os.path.join(srv.directory, name)
        if not name or "/" in name or not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        wanted = _byte_range(range_header or "", size) if mode != "ignore_range" else None
        if wanted is not None:
            start, end = wanted
            if end < 0:
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
        if not body:
            return
        self.wfile.flush()
        limit = end + 1 - start
        if mode in ("stall", "truncate"):
            limit = min(limit, int(behaviour.get("after", 0)))
            self.close_connection = True
        try:
            with open(path, "rb") as fh:
                self._send(fh, start, limit, name, behaviour.get("rate"))
            if mode == "stall":
                srv.stopping.wait(float(behaviour.get("stall_for", 120)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, fh: Any, offset: int, limit: int, name: str, rate: Optional[int]) -> None:
        srv = self.server.owner
        sock = self.connection
        sent = 0
        if not rate and not isinstance(sock, ssl.SSLSocket):
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
            ahead = sent / float(rate) - (time.monotonic() - began) if rate else 0
            if ahead > 0:
                time.sleep(ahead)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: ImageServer


class ImageServer:
    """``with ImageServer(directory) as srv: srv.url("a.qcow2")``; ``tls=(certfile, keyfile)`` for https."""

    def __init__(
        self, directory: str, host: str = "127.0.0.1", port: int = 0, tls: Optional[Tuple[str, str]] = None
    ) -> None:
        self.directory = directory
        self.host = host
        self.scheme = "https" if tls else "http"
        self.behaviour: Dict[str, Dict[str, Any]] = {}
        self.sent: Dict[str, int] = defaultdict(int)
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        return "%s://%s:%d/%s" % (self.scheme, self.host, self.port, name)

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

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a directory over HTTP with Range support")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    server = ImageServer(args.dir, host=args.bind, port=args.port)
    sys.stdout.write(f"{server.port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
