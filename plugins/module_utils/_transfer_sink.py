# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the download sink: write, hash and size-check an image in one pass, resumably.

Every transport of ``_transfer`` writes what it receives into a :class:`Sink`, which appends to
the partial file and hashes (sha512) each in its own thread, so that receiving, writing and
hashing overlap (hashlib and file I/O release the GIL for large buffers); buffers are 1 MiB.
With ``fsync`` (the default) writeback is started every 32 MiB (Linux ``sync_file_range``), so
the final ``fsync`` only waits for the tail. A partial file left by an interrupted run is
resumed: its prefix is hashed once (:func:`hash_prefix`; hashlib state cannot be saved).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

BUFSIZE = 1 << 20
WRITEBACK_STEP = 32 << 20  # start writing back every 32 MiB, so the final fsync has little left


class TransferError(FarmError):
    """A download that failed, explained; ``resumable`` says whether the partial file is kept,
    ``status`` is the HTTP status when a server answered, ``option`` the input to blame when one
    is (``source`` for a URL this transport refuses)."""

    def __init__(self, message: str, resumable: bool = False, status: Optional[int] = None, option: str = "") -> None:
        super().__init__(message, option)
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


def hash_prefix(path: str, length: int) -> Tuple[Any, int]:
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


def resume_point(dest: str, size: int) -> int:
    """How many bytes of ``dest`` can be kept (0 when absent or longer than the image)."""
    try:
        have = os.path.getsize(dest)
    except OSError:
        return 0
    if have > size:
        os.truncate(dest, 0)
        return 0
    return have


class Sink:
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
            self.digest, self.written = hash_prefix(dest, offset)
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
