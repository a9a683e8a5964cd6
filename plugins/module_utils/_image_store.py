# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the image cache's store: records, errors, the SQLite database and the deploy lock.

Layout on a hypervisor (default root ``/var/lib/batchvirt/images``)::

    /var/lib/batchvirt/images/              ready image files only: the libvirt ``dir`` pool
                                            ``batchvirt-images`` lists each file as a volume
    /var/lib/batchvirt/images.cache/        beside it, same filesystem, never a pool
        cache.sqlite (+ -wal, -shm)         the database (WAL journal, schema version table)
        lock                                the one deploy lock (fcntl.flock), holder pid/command
        partial/<file>.part                 downloads in progress (resumable)

The other parts of the cache build on :class:`ImageStore`: ``_image_states`` (states, history,
staging, hooks), ``_image_selection`` (subscriptions and which version may be deployed),
``_image_prune`` (users and expiry); ``_image_cache.ImageCache`` puts them together.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, utcnow

DEFAULT_ROOT = "/var/lib/batchvirt/images"
DEFAULT_POOL = "batchvirt-images"
SCHEMA_VERSION = 1

PARTIAL = "partial"
READY = "ready"
FAILED = "failed"
EXPIRED = "expired"
STATES = (PARTIAL, READY, FAILED, EXPIRED)

FORMATS = ("qcow2", "raw", "iso", "vmdk", "vdi", "img")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")
_FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
_SHA512_RE = re.compile(r"^[0-9a-f]{128}$")

Clock = Callable[[], datetime.datetime]


class ImageCacheError(FarmError):
    """A cache failure explained for a site admin (``option``: the input to blame, when known)."""


class CacheLockTimeout(ImageCacheError):
    """Another deploy holds the cache lock for longer than we were willing to wait."""


class ImageInUse(ImageCacheError):
    """An image cannot be expired: slots still use it."""

    def __init__(self, message: str, users: List[str]) -> None:
        super().__init__(message)
        self.users = users


class ImageVerificationError(ImageCacheError):
    """A downloaded file does not match the size or sha512 it was published with."""


def validate_name(value: Any, what: str) -> str:
    """An identifier or version safe as part of a file name (no path traversal, no separators)."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise ImageCacheError(
            "%s %r is not allowed: use 1-128 letters, digits, '.', '_', '+', '~' or '-', starting with a "
            "letter or digit, without '..' or '/' (a hostile value could escape the image directory)" % (what, value)
        )
    return value


def validate_sha512(value: Any, what: str = "sha512") -> str:
    text = str(value or "").strip().lower()
    if not _SHA512_RE.match(text):
        raise ImageCacheError("%s %r is not a sha512 checksum (128 hexadecimal digits)" % (what, value))
    return text


def validate_size(value: Any, what: str = "size") -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ImageCacheError("%s %r is not a number of bytes" % (what, value)) from None
    if size <= 0:
        raise ImageCacheError("%s %r must be a positive number of bytes" % (what, value))
    return size


def validate_format(value: Any) -> str:
    fmt = str(value or "qcow2").lower()
    if not _FORMAT_RE.match(fmt):
        raise ImageCacheError(
            "format %r is not allowed: use a short lower-case name such as %s" % (value, ", ".join(FORMATS))
        )
    return fmt


def image_filename(identifier: str, version: str, fmt: str) -> str:
    """The file (and libvirt volume) name of one image version: ``<identifier>_<version>.<format>``."""
    validate_name(identifier, "image identifier")
    validate_name(version, "image version")
    return "%s_%s.%s" % (identifier, version, validate_format(fmt))


@dataclass
class ImageRecord:
    """One image version as the cache knows it."""

    identifier: str
    version: str
    state: str
    path: str
    volume: str
    pool: str
    sha512: str
    size: int
    format: str
    uri: str = ""
    list_id: str = ""
    expires: str = ""
    updated_at: str = ""
    reason: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {
            "identifier": self.identifier,
            "version": self.version,
            "state": self.state,
            "path": self.path,
            "volume": self.volume,
            "pool": self.pool,
            "sha512": self.sha512,
            "size": self.size,
            "format": self.format,
            "uri": self.uri,
            "list_id": self.list_id,
            "expires": self.expires,
            "updated_at": self.updated_at,
            "reason": self.reason,
        }


@dataclass
class StageResult:
    record: ImageRecord
    changed: bool
    transferred: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    warnings: List[str] = field(default_factory=list)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    identifier TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    filename TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    sha512 TEXT NOT NULL,
    format TEXT NOT NULL,
    list_id TEXT NOT NULL DEFAULT '',
    expires TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (identifier, version)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identifier TEXT NOT NULL,
    version TEXT NOT NULL,
    at TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS subscriptions (
    list_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endorsed (
    list_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    version TEXT NOT NULL,
    uri TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    sha512 TEXT NOT NULL,
    format TEXT NOT NULL,
    expires TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (list_id, identifier, version)
);
CREATE TABLE IF NOT EXISTS users (
    identifier TEXT NOT NULL,
    version TEXT NOT NULL,
    user TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (identifier, version, user)
);
"""


_Store = TypeVar("_Store", bound="ImageStore")


class ImageStore:
    """The database, the lock and the records of one hypervisor's image cache.

    ``root`` is the pool directory holding ready images; the database, the lock and the
    partial area live in ``<root>.cache`` beside it (same filesystem, so the final move is an
    atomic rename, and libvirt never lists them as volumes). ``clock`` returns an aware UTC
    datetime (injected by tests). ``event_hook`` is a shell command run on ``ready`` and
    ``expired`` events. ``libvirt_conn`` (an open connection), when given, lets
    ``users`` see the domains whose disks are backed by an image.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        pool: str = DEFAULT_POOL,
        clock: Optional[Clock] = None,
        event_hook: Optional[str] = None,
        libvirt_conn: Any = None,
        hook_timeout: int = 300,
    ) -> None:
        root = os.path.abspath(root)
        if root == "/":
            raise ImageCacheError("the image cache root cannot be '/'")
        self.root = root
        self.state_dir = root.rstrip("/") + ".cache"
        self.partial_dir = os.path.join(self.state_dir, "partial")
        self.db_path = os.path.join(self.state_dir, "cache.sqlite")
        self.lock_path = os.path.join(self.state_dir, "lock")
        self.pool = pool
        self.clock: Clock = clock or utcnow
        self.event_hook = event_hook or None
        self.hook_timeout = hook_timeout
        self.libvirt_conn = libvirt_conn
        self._lock_fd: Optional[int] = None
        self._lock_depth = 0
        self._db: Optional[sqlite3.Connection] = None

    # -- storage ------------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        for path, mode in ((self.root, 0o755), (self.state_dir, 0o750), (self.partial_dir, 0o750)):
            try:
                os.makedirs(path, mode=mode, exist_ok=True)
            except OSError as exc:
                raise ImageCacheError("cannot create the image cache directory %s: %s" % (path, exc)) from None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.ensure_dirs()
            try:
                conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                with self._tx(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    row = conn.execute("SELECT version FROM schema_version").fetchone()
                    if row is None:
                        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    elif row[0] > SCHEMA_VERSION:
                        raise ImageCacheError(
                            "the image cache database %s has schema version %s, newer than this collection "
                            "understands (%s): upgrade batchvirt.farm" % (self.db_path, row[0], SCHEMA_VERSION)
                        )
            except sqlite3.DatabaseError as exc:
                raise ImageCacheError("cannot open the image cache database %s: %s" % (self.db_path, exc)) from None
            self._db = conn
        return self._db

    @staticmethod
    @contextlib.contextmanager
    def _tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        while self._lock_depth:
            self._release()

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the lock -----------------------------------------------------------------------
    def lock_holder(self) -> str:
        """Who holds the lock, as written by the holder (pid, command, since)."""
        try:
            with open(self.lock_path, encoding="utf-8", errors="replace") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    @contextlib.contextmanager
    def lock(self, timeout: float = 600, purpose: str = "") -> Iterator[None]:
        """Hold the one deploy lock of this cache; wait up to ``timeout`` seconds for it.

        Re-entrant within one image cache object. On timeout raise
        :class:`CacheLockTimeout` naming the holder's pid and command.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._release()
            return
        self.ensure_dirs()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise ImageCacheError("cannot lock the image cache %s: %s" % (self.lock_path, exc)) from None
            if time.monotonic() >= deadline:
                holder = self.lock_holder().replace("\n", ", ") or "an unknown process"
                os.close(fd)
                raise CacheLockTimeout(
                    "the image cache %s is locked by another deploy (%s); waited %d s: another pre-stage "
                    "runs on this hypervisor. Wait for it to finish, or raise the lock timeout"
                    % (self.root, holder, int(timeout))
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            command = _own_command()
            info = "pid %d\ncommand %s\nsince %s\n" % (os.getpid(), command, format_time(self.clock()))
            if purpose:
                info += "purpose %s\n" % purpose
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode("utf-8", "replace"), 0)
        except OSError:
            pass
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._lock_depth -= 1
        if self._lock_depth == 0 and self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self._lock_depth > 0

    def _require_lock(self, what: str) -> None:
        if not self._lock_depth:
            raise ImageCacheError("internal error: %s needs the image cache lock (use ImageCache.lock())" % what)

    # -- records ------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(
            identifier=row["identifier"],
            version=row["version"],
            state=row["state"],
            path=os.path.join(self.root, row["filename"]),
            volume=row["filename"],
            pool=self.pool,
            sha512=row["sha512"],
            size=int(row["size"]),
            format=row["format"],
            uri=row["uri"],
            list_id=row["list_id"],
            expires=row["expires"],
            updated_at=row["updated_at"],
            reason=row["reason"],
        )

    def get(self, identifier: str, version: str) -> Optional[ImageRecord]:
        """The record of one image version, or None. ``.state == 'ready'`` means usable."""
        validate_name(identifier, "image identifier")
        validate_name(version, "image version")
        row = self.db.execute(
            "SELECT * FROM images WHERE identifier = ? AND version = ?", (identifier, version)
        ).fetchone()
        return self._record(row) if row is not None else None

    def _must_get(self, identifier: str, version: str) -> ImageRecord:
        record = self.get(identifier, version)
        if record is None:
            raise ImageCacheError("internal error: image %s version %s vanished from the cache" % (identifier, version))
        return record

    def images(self, state: Optional[str] = None) -> List[ImageRecord]:
        if state:
            rows = self.db.execute("SELECT * FROM images WHERE state = ? ORDER BY identifier, version", (state,))
        else:
            rows = self.db.execute("SELECT * FROM images ORDER BY identifier, version")
        return [self._record(r) for r in rows.fetchall()]


def _own_command() -> str:
    try:
        with open("/proc/%d/cmdline" % os.getpid(), "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]
    except OSError:
        return " ".join(sys.argv)[:300]
