# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: image downloads over HTTP(S): proxies, redirects, resume with ``Range``.

:func:`fetch_http` streams ``uri`` into a :class:`~._transfer_sink.Sink`; a partial file is
resumed with ``Range: bytes=N-``. ``http_proxy``, ``https_proxy`` and ``no_proxy`` are honoured
as urllib (and so Ansible's ``open_url``) reads them: ``http://`` through the proxy,
``https://`` tunnelled with ``CONNECT`` so that TLS and its certificate check stay end to end.
Redirects are followed (at most :data:`MAX_REDIRECTS`), never from ``https`` to ``http``.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import time
import urllib.parse
import urllib.request
from typing import Dict, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._transfer_sink import (
    BUFSIZE,
    Sink,
    TransferError,
    TransferResult,
    resume_point,
)

MAX_REDIRECTS = 5
USER_AGENT = "batchvirt.farm-image/1"


def _proxy(parsed: urllib.parse.SplitResult) -> Optional[urllib.parse.SplitResult]:
    """The proxy for ``parsed`` from ``http_proxy`` / ``https_proxy`` / ``no_proxy`` (read as
    urllib, and so Ansible's ``open_url``, reads them), or None for a direct connection."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(parsed.scheme)
    host = parsed.hostname or ""
    if parsed.port:
        host += ":%d" % parsed.port
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    if not url or bypass(host, proxies):
        return None
    proxy = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if proxy.scheme != "http" or not proxy.hostname:
        raise TransferError(
            "%s_proxy=%s: only http:// proxies are supported (https:// sources are tunnelled through them with "
            "CONNECT)" % (parsed.scheme, url)
        )
    return proxy


def _proxy_headers(proxy: urllib.parse.SplitResult) -> Dict[str, str]:
    if proxy.username is None:
        return {}
    credentials = "%s:%s" % (urllib.parse.unquote(proxy.username), urllib.parse.unquote(proxy.password or ""))
    return {"Proxy-Authorization": "Basic " + base64.b64encode(credentials.encode()).decode("ascii")}


def _connection(
    parsed: urllib.parse.SplitResult, connect_timeout: float, validate_certs: bool, ca_path: Optional[str]
) -> Tuple[http.client.HTTPConnection, str, Dict[str, str]]:
    """A connection for ``parsed`` (through the environment's proxy, if any), the request target
    to send on it, and the extra headers of that request."""
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    proxy = _proxy(parsed)
    host, port = parsed.hostname or "", parsed.port
    headers: Dict[str, str] = {}
    if proxy is not None:
        host, port = proxy.hostname or "", proxy.port or 80
    if parsed.scheme == "https":
        context = ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=connect_timeout, context=context
        )
        if proxy is not None:  # CONNECT to the server; TLS runs end to end through the tunnel
            conn.set_tunnel(parsed.hostname or "", parsed.port or 443, headers=_proxy_headers(proxy))
        return conn, path, headers
    conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
    if proxy is not None:  # the absolute URL goes to the proxy
        headers.update(_proxy_headers(proxy))
        return (
            conn,
            urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path or "/", parsed.query, "")),
            headers,
        )
    return conn, path, headers


def fetch_http(
    uri: str,
    dest: str,
    size: int,
    sha512: str,
    timeout: float,
    connect_timeout: float,
    total_timeout: Optional[float],
    validate_certs: bool,
    ca_path: Optional[str],
    headers: Dict[str, str],
    fsync: bool,
) -> TransferResult:
    offset = resume_point(dest, size)
    if offset == size:
        # A previous run received everything but died before the rename: verify the file.
        sink = Sink(uri, dest, size, offset, fsync)
        try:
            digest = sink.finish(sha512, fsync)
        except TransferError:
            sink.abort()
            raise
        return TransferResult(uri, dest, size, digest, 0, offset, 0.0)
    current = uri
    deadline = time.monotonic() + total_timeout if total_timeout else None
    for _hop in range(MAX_REDIRECTS + 1):
        parsed = urllib.parse.urlsplit(current)
        if parsed.scheme not in ("http", "https"):
            raise TransferError("%s redirects to %s: only http(s) redirects are followed" % (uri, current))
        conn, path, request_headers = _connection(parsed, connect_timeout, validate_certs, ca_path)
        request_headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        request_headers.update(headers)
        if offset:
            request_headers["Range"] = "bytes=%d-" % offset
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request("GET", path, headers=request_headers)
            response = conn.getresponse()
        except socket.timeout:
            conn.close()
            raise TransferError(
                "%s did not answer within %s s (connect) / %s s (response): the server stalls or is unreachable"
                % (current, connect_timeout, timeout),
                resumable=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransferError("cannot reach %s: %s" % (current, exc), resumable=True) from None
        status = response.status
        if status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            conn.close()
            if not location:
                raise TransferError("%s answered %d without a Location header" % (current, status), status=status)
            target = urllib.parse.urljoin(current, location)
            if parsed.scheme == "https" and urllib.parse.urlsplit(target).scheme != "https":
                raise TransferError(
                    "%s redirects from https to %s: refusing to continue without TLS (the image would travel "
                    "unauthenticated); publish an https:// location" % (current, target),
                    status=status,
                )
            current = target
            continue
        try:
            return _receive(uri, current, response, dest, size, sha512, offset, timeout, deadline, fsync)
        finally:
            conn.close()
    raise TransferError("%s: more than %d redirects" % (uri, MAX_REDIRECTS))


def _check_response(current: str, response: http.client.HTTPResponse, dest: str, size: int, offset: int) -> int:
    """Where the body of ``response`` starts in the image (``offset``, or 0 when the server
    ignored the range); raises when the status or the announced size is not the image's."""
    status = response.status
    if status == 416 and offset:
        # The server refuses our range: start again from the beginning next time.
        os.truncate(dest, 0)
        raise TransferError(
            "%s answered HTTP 416 to a resume from byte %d: the partial file was discarded; rerun" % (current, offset),
            resumable=True,
            status=status,
        )
    if status not in (200, 206):
        reason = response.reason or ""
        raise TransferError(
            "HTTP %d %s from %s: the image cannot be downloaded%s"
            % (
                status,
                reason,
                current,
                " (check the URI in the image list)" if status in (403, 404, 410) else " (server error; retry later)",
            ),
            resumable=status >= 500,
            status=status,
        )
    if status == 206:
        content_range = response.getheader("Content-Range") or ""
        if not content_range.startswith("bytes %d-" % offset):
            raise TransferError(
                "%s answered a resume from byte %d with Content-Range %r: refusing" % (current, offset, content_range),
                resumable=False,
                status=status,
            )
        total = content_range.rsplit("/", 1)[-1]
        if total.isdigit() and int(total) != size:
            raise TransferError(
                "size mismatch for %s: the server has %s bytes, the list publishes %d; refused" % (current, total, size)
            )
        return offset
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) != size:
        raise TransferError(
            "size mismatch for %s: the server announces %s bytes, the list publishes %d; refused"
            % (current, length, size)
        )
    return 0  # the server ignored Range: start over


def _receive(
    uri: str,
    current: str,
    response: http.client.HTTPResponse,
    dest: str,
    size: int,
    sha512: str,
    offset: int,
    timeout: float,
    deadline: Optional[float],
    fsync: bool,
) -> TransferResult:
    offset = _check_response(current, response, dest, size, offset)
    sink = Sink(uri, dest, size, offset, fsync)
    try:
        while True:
            try:
                chunk = response.read(BUFSIZE)
            except socket.timeout:
                raise TransferError(
                    "%s stalled: no data for %s s after %d of %d bytes; the partial download is kept and a "
                    "rerun resumes it" % (current, timeout, sink.written, size),
                    resumable=True,
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise TransferError(
                    "%s broke off after %d of %d bytes (%s); a rerun resumes it" % (current, sink.written, size, exc),
                    resumable=True,
                ) from None
            if not chunk:
                break
            sink.write(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise TransferError(
                    "%s: the transfer took longer than the total timeout (%d of %d bytes); a rerun resumes it"
                    % (current, sink.written, size),
                    resumable=True,
                )
        digest = sink.finish(sha512, fsync)
    except BaseException:
        sink.abort()
        raise
    return TransferResult(uri, dest, size, digest, sink.received, offset, 0.0)
