# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: image downloads into the cache's partial area (file, HTTP(S), BitTorrent).

:func:`fetch` writes ``uri`` to ``dest`` (a path in the partial area) and verifies the
published size and sha512 *in the same pass* as the download: the data is hashed while it
is written, never read back. A partial file left by an interrupted run is resumed: its
prefix is hashed once (hashlib state cannot be saved), then the rest is requested with an
HTTP ``Range`` header (or read from the offset for ``file://``). The hash runs in a
second thread so that receiving, writing and hashing overlap (hashlib and file I/O release
the GIL for large buffers); buffers are 1 MiB. With ``fsync`` (the default) writeback is
started every 32 MiB (Linux ``sync_file_range``), so the final ``fsync`` only waits for the tail.

Failures raise :class:`TransferError` with a message naming the URL and what happened and
a ``resumable`` flag: True when the partial file is a correct prefix worth keeping (the
connection stalled or broke), False when it must be discarded (checksum or size mismatch,
HTTP 404).

``magnet:`` links and ``*.torrent`` sources go to the BitTorrent transport
(``_torrent_fetch.fetch``) when it is installed with the collection.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

BUFSIZE = 1 << 20
WRITEBACK_STEP = 32 << 20  # start writing back every 32 MiB, so the final fsync has little left
MAX_REDIRECTS = 5
USER_AGENT = "batchvirt.farm-image/1"


class TransferError(Exception):
    """A download that failed, explained; ``resumable`` says whether the partial file is kept."""

    def __init__(self, message: str, resumable: bool = False, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.resumable = resumable
        self.status = status


@dataclass
class TransferResult:
    uri: str
    path: str
    size: int
    sha512: str
    transferred: int  # bytes received over the transport in this run
    resumed_from: int  # bytes already in the partial file when this run started
    seconds: float
    torrent: str = ""  # BitTorrent only: the .torrent kept for seeding


def _sync_file_range() -> Optional[Callable[[int, int, int], None]]:
    """Linux ``sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE)``: start writeback, do not wait."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; errors only mean no early writeback

    return start_writeback


_START_WRITEBACK = _sync_file_range()


class _Stage:
    """One pipeline stage in its own thread: applies ``work`` to each queued buffer, in order.

    hashlib and file writes release the GIL for large buffers, so receiving, hashing and
    writing run in parallel. A failure is kept and raised by :meth:`check` / :meth:`close`.
    """

    def __init__(self, name: str, work: Callable[[bytes], None], depth: int = 32) -> None:
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self._work(chunk)
                except BaseException as exc:  # reported to the receiving thread
                    self.error = exc

    def put(self, chunk: bytes) -> None:
        self.check()
        self._queue.put(chunk)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Finish every queued buffer, stop the thread, raise its failure if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.check()


def _hash_prefix(path: str, length: int) -> Tuple[Any, int]:
    """sha512 object over the first ``length`` bytes of ``path`` (an existing partial file)."""
    digest = hashlib.sha512()
    done = 0
    with open(path, "rb") as fh:
        while done < length:
            chunk = fh.read(min(BUFSIZE, length - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return digest, done


def _resume_point(dest: str, size: int) -> int:
    """How many bytes of ``dest`` can be kept (0 when absent or longer than the image)."""
    try:
        have = os.path.getsize(dest)
    except OSError:
        return 0
    if have > size:
        os.truncate(dest, 0)
        return 0
    return have


class _Sink:
    """Appends to the partial file and hashes, each in its own thread; enforces the size cap."""

    def __init__(self, uri: str, dest: str, size: int, offset: int, fsync: bool = True) -> None:
        self.fsync = fsync
        self.uri = uri
        self.dest = dest
        self.size = size
        self.received = 0
        self.digest = hashlib.sha512()
        self.written = 0
        if offset:
            self.digest, self.written = _hash_prefix(dest, offset)
        self.fh = open(dest, "r+b" if offset else "wb")  # noqa: SIM115 - closed in finish()/abort()
        self.fh.seek(self.written)
        self.fh.truncate()
        self.on_disk = self.written
        self.flushed = self.written
        self.hasher = _Stage("sha512", self.digest.update)
        self.writer = _Stage("writer", self._write)

    def _write(self, chunk: bytes) -> None:
        self.fh.write(chunk)
        self.on_disk += len(chunk)
        if self.fsync and _START_WRITEBACK is not None and self.on_disk - self.flushed >= WRITEBACK_STEP:
            self.fh.flush()
            _START_WRITEBACK(self.fh.fileno(), self.flushed, self.on_disk - self.flushed)
            self.flushed = self.on_disk

    def write(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self.size:
            raise TransferError(
                "%s sends more than the published size of %d bytes: refusing (the image on the server is not "
                "the published one)" % (self.uri, self.size)
            )
        self.hasher.put(chunk)
        try:
            self.writer.put(chunk)
        except (OSError, ValueError) as exc:
            raise TransferError("cannot write %s: %s" % (self.dest, exc)) from None
        self.written += len(chunk)
        self.received += len(chunk)

    def _drain(self) -> None:
        try:
            self.writer.close()
        except (OSError, ValueError) as exc:
            raise TransferError("cannot write %s: %s" % (self.dest, exc)) from None
        finally:
            self.hasher.close()

    def finish(self, sha512: str, fsync: bool) -> str:
        self._drain()
        self.fh.flush()
        if fsync:
            os.fsync(self.fh.fileno())
        self.fh.close()
        digest = self.digest.hexdigest()
        if self.written != self.size:
            raise TransferError(
                "%s ended after %d of %d bytes: the download is incomplete (truncated); a rerun resumes it"
                % (self.uri, self.written, self.size),
                resumable=True,
            )
        if digest != sha512:
            raise TransferError(
                "sha512 mismatch for %s: got %s..., the list publishes %s...; the file is refused and deleted "
                "(corrupt download, or the server holds a different image than the one endorsed)"
                % (self.uri, digest[:16], sha512[:16])
            )
        return digest

    def abort(self) -> None:
        """Keep what was received as a correct prefix (a rerun resumes from it)."""
        try:
            self._drain()
        except (TransferError, OSError):
            pass
        if not self.fh.closed:
            try:
                self.fh.flush()
                self.fh.close()
            except OSError:
                pass


def fetch(
    uri: str,
    dest: str,
    size: int,
    sha512: str,
    timeout: float = 60,
    connect_timeout: float = 30,
    total_timeout: Optional[float] = None,
    validate_certs: bool = True,
    ca_path: Optional[str] = None,
    allow_file: bool = True,
    headers: Optional[Dict[str, str]] = None,
    fsync: bool = True,
    **opts: Any,
) -> TransferResult:
    """Download ``uri`` into ``dest`` (resuming it), verify size and sha512 in the same pass.

    ``timeout``: seconds without any data before a stalled transfer fails; ``connect_timeout``:
    seconds to establish the connection; ``total_timeout``: optional bound on the whole transfer.
    """
    sha512 = sha512.lower()
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme == "magnet" or (scheme in ("http", "https", "file", "") and parsed.path.endswith(".torrent")):
        # The BitTorrent engine bounds the whole download, not the silence between packets.
        return _fetch_torrent(uri, dest, size, sha512, total_timeout or 3600, **opts)
    started = time.monotonic()
    if scheme == "file":
        if not allow_file:
            raise TransferError("%s: file:// sources are not allowed here (allow them explicitly)" % uri)
        result = _fetch_file(uri, urllib.parse.unquote(parsed.path), dest, size, sha512, fsync)
    elif scheme in ("http", "https"):
        result = _fetch_http(
            uri,
            dest,
            size,
            sha512,
            timeout=timeout,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            validate_certs=validate_certs,
            ca_path=ca_path,
            headers=headers or {},
            fsync=fsync,
        )
    else:
        raise TransferError(
            "%s: unsupported source scheme %r: use http://, https://, file://, a magnet: link or a .torrent"
            % (uri, scheme or "(none)")
        )
    result.seconds = time.monotonic() - started
    return result


def _fetch_torrent(uri: str, dest: str, size: int, sha512: str, timeout: float, **opts: Any) -> TransferResult:
    """BitTorrent through ``_torrent_fetch.fetch``, then the sha512 of the whole file.

    Pieces arrive out of order (each checked by the engine against the torrent's SHA-1 piece
    hashes), so the sha512 the list publishes can only be computed once the file is complete:
    this is the one transport that reads the file a second time.
    """
    try:
        from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_fetch
    except ImportError:
        raise TransferError(
            "%s: BitTorrent sources (magnet: links, .torrent files) need the BitTorrent transport, which this "
            "installation of batchvirt.farm does not have; use an http(s):// or file:// URI" % uri
        ) from None
    started = time.monotonic()
    resumed_from = _resume_point(dest, size)
    try:
        outcome = _torrent_fetch.fetch(uri, dest, size, sha512, timeout, **opts)
    except Exception as exc:
        raise TransferError(
            "%s: %s" % (uri, getattr(exc, "message", None) or exc), resumable=os.path.exists(dest)
        ) from None
    try:
        actual = os.path.getsize(dest)
    except OSError:
        raise TransferError("%s: the BitTorrent transport left no file at %s" % (uri, dest)) from None
    if actual != size:
        raise TransferError(
            "size mismatch for %s: the torrent delivered %d bytes, the list publishes %d; refused" % (uri, actual, size)
        )
    digest, _done = _hash_prefix(dest, size)
    if digest.hexdigest() != sha512:
        raise TransferError(
            "sha512 mismatch for %s: got %s..., the list publishes %s...; the file is refused and deleted "
            "(the torrent does not hold the endorsed image)" % (uri, digest.hexdigest()[:16], sha512[:16])
        )
    transferred = size - resumed_from
    if isinstance(outcome, dict) and isinstance(outcome.get("downloaded"), int):
        transferred = outcome["downloaded"]
    return TransferResult(
        uri=uri,
        path=dest,
        size=size,
        sha512=sha512,
        transferred=transferred,
        resumed_from=resumed_from,
        seconds=time.monotonic() - started,
        torrent=str(outcome.get("torrent") or "") if isinstance(outcome, dict) else "",
    )


def start_seeding(result: Any, path: str, options: Dict[str, Any]) -> Optional[str]:
    """After a BitTorrent image became ready at ``path``: seed it for ``seed_for_seconds``.

    Returns a warning when seeding could not start (the image stays ready).
    """
    torrent = getattr(result, "torrent", "")
    seconds = options.get("seed_for_seconds")
    if not torrent or not seconds:
        return None
    try:
        from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs

        # every engine option of the fetch, so a seeder started afresh behaves like the fetch's engine
        keys = (
            "state_dir",
            "engine_dir",
            "listen_port",
            "trackers",
            "web_seeds",
            "web_seed_delay",
            "max_upload_limit",
            "max_download_limit",
            "dht",
            "engine_settings",
        )
        _torrent_jobs.start_seeding(torrent, path, float(seconds), **{k: options[k] for k in keys if k in options})
    except Exception as exc:
        return "the image is ready but seeding it over BitTorrent did not start: %s" % (
            getattr(exc, "message", None) or exc
        )
    return None


def _fetch_file(uri: str, source: str, dest: str, size: int, sha512: str, fsync: bool) -> TransferResult:
    try:
        actual = os.path.getsize(source)
    except OSError as exc:
        raise TransferError("%s: cannot read %s: %s" % (uri, source, exc.strerror)) from None
    if actual != size:
        raise TransferError(
            "size mismatch for %s: the file has %d bytes, the list publishes %d; refused" % (uri, actual, size)
        )
    offset = _resume_point(dest, size)
    sink = _Sink(uri, dest, size, offset, fsync)
    try:
        with open(source, "rb") as src:
            src.seek(sink.written)
            while True:
                chunk = src.read(BUFSIZE)
                if not chunk:
                    break
                sink.write(chunk)
        digest = sink.finish(sha512, fsync)
    except TransferError:
        sink.abort()
        raise
    except OSError as exc:
        sink.abort()
        raise TransferError("%s: read failed: %s" % (uri, exc), resumable=True) from None
    return TransferResult(uri, dest, size, digest, sink.received, offset, 0.0)


def _connection(
    parsed: urllib.parse.SplitResult, connect_timeout: float, validate_certs: bool, ca_path: Optional[str]
) -> http.client.HTTPConnection:
    host = parsed.hostname or ""
    if parsed.scheme == "https":
        context = ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, parsed.port, timeout=connect_timeout, context=context)
    return http.client.HTTPConnection(host, parsed.port, timeout=connect_timeout)


def _fetch_http(
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
    offset = _resume_point(dest, size)
    if offset == size:
        # A previous run received everything but died before the rename: verify the file.
        sink = _Sink(uri, dest, size, offset, fsync)
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
        conn = _connection(parsed, connect_timeout, validate_certs, ca_path)
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
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
            current = urllib.parse.urljoin(current, location)
            continue
        try:
            return _receive(uri, current, response, dest, size, sha512, offset, timeout, deadline, fsync)
        finally:
            conn.close()
    raise TransferError("%s: more than %d redirects" % (uri, MAX_REDIRECTS))


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
    else:
        offset = 0  # the server ignored Range: start over
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) != size:
            raise TransferError(
                "size mismatch for %s: the server announces %s bytes, the list publishes %d; refused"
                % (current, length, size)
            )
    sink = _Sink(uri, dest, size, offset, fsync)
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
