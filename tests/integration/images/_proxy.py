"""A tiny forwarding HTTP proxy on 127.0.0.1 for tests: absolute-form requests are forwarded
(streamed), ``CONNECT`` is tunnelled byte for byte (TLS stays end to end). It records every
request as ``(method, target, Proxy-Authorization header)`` in ``proxy.requests``."""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Optional, Tuple

_HOP_BY_HOP = ("connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "trailers", "upgrade")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def _record(self) -> None:
        self.server.owner.requests.append((self.command, self.path, self.headers.get("Proxy-Authorization")))

    def do_GET(self) -> None:
        self._record()
        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http":
            self.send_error(400, "absolute http:// URL expected")
            return
        upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=30)
        path = (target.path or "/") + ("?" + target.query if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream.request("GET", path, headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            upstream.close()
        self.close_connection = True

    def do_CONNECT(self) -> None:
        self._record()
        host, _sep, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        client = self.connection
        try:
            while True:
                readable, _w, _x = select.select([client, upstream], [], [], 30)
                if not readable:
                    break
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ForwardingProxy


class ForwardingProxy:
    """``with ForwardingProxy() as proxy: os.environ["http_proxy"] = proxy.url``."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self._httpd.server_address[1]

    def __enter__(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
