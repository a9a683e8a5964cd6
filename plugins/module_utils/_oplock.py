# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the farm-wide operations lock (one lifecycle play at a time).

The lock is one small JSON record in a file on ONE designated host (by default the batch
controller, which every lifecycle play already reaches to drain nodes). AWX runs each job in a
fresh execution-environment container, so a lock kept where the play runs would be seen by
nobody else; the designated host is the one place every run of every job template sees.

Every change of the record happens under an exclusive ``flock`` of a guard file next to it, so
"read, decide, write" is atomic between processes on that host; the record itself is replaced
with ``os.replace`` (a reader never sees half a record). The kernel drops a ``flock`` when its
process dies, so a crashed module never leaves the guard held. A crashed *play* leaves the record:
its ``expires_at`` lets the next run take the lock over once it has passed.

Record: ``token`` (a random id of the run), ``operation`` (rolling_update, recycle, rebalance,
...), ``holder`` (play, AWX job id, host, pid, anything the play adds), ``acquired_at``,
``renewed_at``, ``expires_at`` (UTC ISO-8601).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._files import fsync_dir
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time, utcnow

DEFAULT_PATH = "/var/lib/batchvirt/operations.lock"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 65536


class OperationsLockError(FarmError):
    """The lock cannot be used (unreadable record, bad input, release by another run)."""


@dataclass
class LockResult:
    """What one call did: ``acquired`` (this run holds the lock), ``changed`` (the record was
    written or removed), ``record`` (this run's record when held), ``holder`` (the other run's
    record when busy), ``taken_over`` (an expired record this run replaced), ``waited`` (s)."""

    acquired: bool = False
    changed: bool = False
    record: Optional[Dict[str, Any]] = None
    holder: Optional[Dict[str, Any]] = None
    taken_over: Optional[Dict[str, Any]] = None
    waited: float = 0.0
    msg: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "acquired": self.acquired,
            "changed": self.changed,
            "lock": self.record,
            "holder": self.holder,
            "taken_over": self.taken_over,
            "waited": round(self.waited, 1),
            "msg": self.msg,
        }
        out.update(self.extra)
        return out


def describe(record: Optional[Dict[str, Any]]) -> str:
    """One line naming a holder for a person: operation, AWX job, host, pid, since, expiry."""
    if not record:
        return "nobody"
    holder = record.get("holder") or {}
    parts = [str(record.get("operation") or holder.get("play") or "an operation")]
    if holder.get("awx_job_id"):
        parts.append("AWX job %s" % holder["awx_job_id"])
    where = str(holder.get("host") or "?")
    if holder.get("pid"):
        where += " pid %s" % holder["pid"]
    parts.append("on " + where)
    parts.append("since %s" % record.get("acquired_at", "?"))
    parts.append("expires %s" % record.get("expires_at", "?"))
    return ", ".join(parts)


class OperationsLock:
    """The lock record at ``path`` (on the host this code runs on)."""

    def __init__(self, path: str = DEFAULT_PATH, clock: Callable[[], datetime.datetime] = utcnow) -> None:
        if not path or not os.path.isabs(path):
            raise OperationsLockError(f"path must be an absolute path, got {path!r}", "path")
        self.path = path
        self.guard_path = path + ".guard"
        self.clock = clock

    # -- the record ----------------------------------------------------------------------
    def read(self) -> Optional[Dict[str, Any]]:
        """The current record (expired or not), None when there is none; refuses a bad one."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise OperationsLockError(f"cannot read the operations lock {self.path}: {exc.strerror}", "path") from None
        problem = ""
        record: Any = None
        if len(data) > MAX_RECORD_BYTES:
            problem = "it is larger than %d bytes" % MAX_RECORD_BYTES
        else:
            try:
                record = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problem = f"it is not JSON ({exc})"
        if not problem:
            if not isinstance(record, dict) or not isinstance(record.get("token"), str) or not record["token"]:
                problem = "it has no token"
            else:
                try:
                    parse_time(record.get("expires_at"), "expires_at", error=OperationsLockError)
                except OperationsLockError as exc:
                    problem = str(exc)
        if problem:
            raise OperationsLockError(
                f"the operations lock {self.path} is unreadable: {problem}. Nothing was changed; check who wrote "
                "it, then remove the file (or release the lock with force=true) to free the farm",
                "path",
            )
        return record

    def expired(self, record: Dict[str, Any], now: Optional[datetime.datetime] = None) -> bool:
        expires = parse_time(record["expires_at"], "expires_at", error=OperationsLockError)
        return (now or self.clock()) >= expires

    def _write(self, record: Dict[str, Any]) -> None:
        directory = os.path.dirname(self.path)
        tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(self.path), os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(directory)

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(self.path))

    def _guarded(self) -> _Guard:
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise OperationsLockError(
                f"cannot create {directory} for the operations lock: {exc.strerror}", "path"
            ) from None
        return _Guard(self.guard_path)

    # -- acquire, renew, release -----------------------------------------------------------
    def try_acquire(
        self,
        operation: str,
        ttl: int,
        holder: Optional[Dict[str, Any]] = None,
        token: str = "",
        check_mode: bool = False,
    ) -> LockResult:
        """One attempt: take a free or expired lock, renew our own (same ``token``), or report
        the live holder. Never waits."""
        if not operation:
            raise OperationsLockError("operation is required (the play taking the lock)", "operation")
        if int(ttl) <= 0:
            raise OperationsLockError(f"ttl must be a positive number of seconds, got {ttl!r}", "ttl")
        with self._guarded():
            now = self.clock()
            current = self.read()
            result = LockResult()
            if current is not None and current["token"] != token and not self.expired(current, now):
                result.holder = current
                result.msg = "the farm is busy: the operations lock is held by " + describe(current)
                return result
            if current is not None and current["token"] != token:
                result.taken_over = current
            renewing = current is not None and current["token"] == token
            record = {
                "version": RECORD_VERSION,
                "token": token or uuid.uuid4().hex,
                "operation": operation,
                "holder": dict(holder or {}),
                "acquired_at": current["acquired_at"] if renewing and current else format_time(now),
                "renewed_at": format_time(now),
                "expires_at": format_time(now + datetime.timedelta(seconds=int(ttl))),
            }
            if not check_mode:
                self._write(record)
            result.acquired = True
            result.changed = True
            result.record = record
            if renewing:
                result.msg = "renewed the operations lock until %s" % record["expires_at"]
            elif result.taken_over is not None:
                result.msg = "took over the expired operations lock of " + describe(result.taken_over)
            else:
                result.msg = "acquired the operations lock until %s" % record["expires_at"]
            return result

    def acquire(
        self,
        operation: str,
        ttl: int,
        holder: Optional[Dict[str, Any]] = None,
        token: str = "",
        wait_timeout: float = 0,
        poll_interval: float = 5,
        check_mode: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> LockResult:
        """:meth:`try_acquire` until it succeeds or ``wait_timeout`` seconds have passed (then
        the result names the holder and ``acquired`` is false)."""
        start = time.monotonic()
        while True:
            result = self.try_acquire(operation, ttl, holder, token, check_mode)
            result.waited = time.monotonic() - start
            if result.acquired or check_mode or result.waited >= wait_timeout:
                if not result.acquired and wait_timeout > 0:
                    result.msg += " (waited %d s)" % int(result.waited)
                return result
            sleep(max(0.05, min(float(poll_interval), wait_timeout - result.waited)))

    def release(self, token: str, force: bool = False, check_mode: bool = False) -> LockResult:
        """Remove the record if ``token`` holds it (or ``force``); refuses another run's lock."""
        if not token and not force:
            raise OperationsLockError("releasing the lock needs the token its acquire returned", "token")
        with self._guarded():
            current = self.read()
            result = LockResult()
            if current is None:
                result.msg = "the operations lock is not held"
                return result
            if current["token"] != token and not force:
                raise OperationsLockError(
                    "refusing to release the operations lock held by another run: " + describe(current) + ". "
                    "Only its holder releases it; it lapses at its expiry, or an operator frees it with force=true",
                    "token",
                )
            if not check_mode:
                self._remove()
            result.changed = True
            result.holder = current
            result.msg = "released the operations lock of " + describe(current)
            return result


class _Guard:
    """An exclusive ``flock`` of the guard file for the duration of a ``with`` block."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Guard:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OperationsLockError(f"cannot open {self.path}: {exc.strerror}", "path") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def run_module(params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    """The ``operations_lock`` module's work: acquire (or renew) or release; returns the result."""
    lock = OperationsLock(params["path"])
    if params["state"] == "released":
        return lock.release(params.get("token") or "", bool(params.get("force")), check_mode).as_dict()
    result = lock.acquire(
        params.get("operation") or "",
        int(params["ttl"]),
        holder=params.get("holder") or {},
        token=params.get("token") or "",
        wait_timeout=float(params.get("wait_timeout") or 0),
        poll_interval=float(params.get("poll_interval") or 5),
        check_mode=check_mode,
    )
    out = result.as_dict()
    out["token"] = result.record["token"] if result.record else ""
    if not result.acquired and params.get("on_busy", "fail") == "fail":
        out["failed"] = True
        out["msg"] = result.msg + "; run again later, or give a longer wait_timeout"
    return out
