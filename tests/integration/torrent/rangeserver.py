"""A threaded static HTTP server with ``Range: bytes=A-B`` support (what a BEP-19 web seed needs),
run as its own process so that it can live in a network namespace:

    python rangeserver.py --bind 198.18.0.1 --port 0 --dir /srv/images

It prints the port it listens on as its first line, then serves until killed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = os.path.join(self.server.directory, name)  # type: ignore[attr-defined]
        if not name or "/" in name or not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range", ""))
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(match.group(2)))
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        try:
            with open(path, "rb") as handle:
                offset, left = start, end - start + 1
                while left > 0:
                    sent = os.sendfile(self.connection.fileno(), handle.fileno(), offset, min(left, 1 << 22))
                    if sent == 0:
                        break
                    offset += sent
                    left -= sent
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    directory = "."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    httpd = Server((args.bind, args.port), Handler)
    httpd.directory = args.dir
    sys.stdout.write(f"{httpd.server_address[1]}\n")
    sys.stdout.flush()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
