# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the hypervisor image cache (SQLite state, lock, staging, expiry, hooks).

Layout on a hypervisor (default root ``/var/lib/batchvirt/images``)::

    /var/lib/batchvirt/images/              ready image files only: the libvirt ``dir`` pool
                                            ``batchvirt-images`` lists each file as a volume
    /var/lib/batchvirt/images.cache/        beside it, same filesystem, never a pool
        cache.sqlite (+ -wal, -shm)         the database (WAL journal, schema version table)
        lock                                the one deploy lock (fcntl.flock), holder pid/command
        partial/<file>.part                 downloads in progress (resumable)

Image states: ``partial`` (a download started, the file lives in ``partial/``), ``ready``
(size and sha512 verified, file renamed into the pool directory), ``failed`` (the last
attempt was refused: checksum or size mismatch, HTTP error; nothing is visible),
``expired`` (removed from the pool directory). Every transition is written to the
``history`` table with its time and reason. A file appears in the pool directory only by an
atomic ``rename()`` after it was verified, so a half-downloaded or unverified file is never
visible as ready, not even to libvirt.

Subscriptions (``image_subscription``) record here the accepted list version and the images
the list endorses (:meth:`ImageCache.record_list`).

Which images are in use: an image must not be expired while a slot overlay is backed by it
(removing the base of a running VM's qcow2 overlay corrupts the VM's view on its next
restart and breaks new slots). :meth:`ImageCache.users` derives users from two sources:

* libvirt: every domain (running or not) whose disk, or a disk's qcow2 backing chain (read
  from the qcow2 header, so inactive domains count too), resolves to the image file;
* the ``users`` table, for overlays not (yet) attached to a domain: the ``slot`` module may
  call :meth:`ImageCache.add_user` / :meth:`ImageCache.remove_user`.

Expiry refuses, naming the users, unless forced.

Event hooks: a shell command run when an image becomes ``ready`` or ``expired`` (as
vmcatcher's ``--cache-event``), with the environment ``FARM_EVENT_TYPE`` (``ready``,
``expired``), ``FARM_EVENT_IDENTIFIER``, ``FARM_EVENT_VERSION``, ``FARM_EVENT_PATH``,
``FARM_EVENT_VOLUME``, ``FARM_EVENT_POOL``, ``FARM_EVENT_SHA512``, ``FARM_EVENT_SIZE``,
``FARM_EVENT_FORMAT``, ``FARM_EVENT_URI``, ``FARM_EVENT_LIST``, ``FARM_EVENT_REASON`` and
``FARM_EVENT_TIME``. A failing hook does not undo the transition; it is reported.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

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


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImageCacheError(Exception):
    """A cache failure explained for a site admin."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def version_key(version: str) -> Tuple[Tuple[int, Any], ...]:
    """Order versions naturally: ``1.10`` after ``1.9``, ``2024-05-01`` after ``2024-04-30``."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


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


class ImageCache:
    """The image cache of one hypervisor.

    ``root`` is the pool directory holding ready images; the database, the lock and the
    partial area live in ``<root>.cache`` beside it (same filesystem, so the final move is an
    atomic rename, and libvirt never lists them as volumes). ``clock`` returns an aware UTC
    datetime (injected by tests). ``event_hook`` is a shell command run on ``ready`` and
    ``expired`` events. ``libvirt_conn`` (an open connection), when given, lets
    :meth:`users` see the domains whose disks are backed by an image.
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

    def __enter__(self) -> ImageCache:
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

        Re-entrant within one :class:`ImageCache` object. On timeout raise
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
            info = "pid %d\ncommand %s\nsince %s\n" % (os.getpid(), command, _iso(self.clock()))
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

    def latest(self, identifier: str, state: Optional[str] = READY) -> Optional[ImageRecord]:
        """The highest version of ``identifier`` in ``state`` (natural version order)."""
        candidates = [r for r in self.images(state) if r.identifier == identifier]
        if not candidates:
            return None
        return max(candidates, key=lambda r: version_key(r.version))

    def history(self, identifier: Optional[str] = None, version: Optional[str] = None) -> List[Dict[str, Any]]:
        sql = "SELECT identifier, version, at, from_state, to_state, reason FROM history"
        args: List[str] = []
        if identifier is not None:
            sql += " WHERE identifier = ?"
            args.append(identifier)
            if version is not None:
                sql += " AND version = ?"
                args.append(version)
        sql += " ORDER BY id"
        return [dict(r) for r in self.db.execute(sql, args).fetchall()]

    def _transition(
        self,
        identifier: str,
        version: str,
        to_state: str,
        reason: str,
        values: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Set an image's state (creating the row from ``values`` if needed) and log it."""
        now = _iso(self.clock())
        conn = self.db
        with self._tx(conn):
            row = conn.execute(
                "SELECT state FROM images WHERE identifier = ? AND version = ?", (identifier, version)
            ).fetchone()
            from_state = row["state"] if row is not None else None
            if row is None:
                if values is None:
                    raise ImageCacheError(
                        "internal error: image %s version %s is not in the cache" % (identifier, version)
                    )
                try:
                    conn.execute(
                        "INSERT INTO images (identifier, version, state, filename, uri, size, sha512, format, "
                        "list_id, expires, created_at, updated_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            identifier,
                            version,
                            to_state,
                            values["filename"],
                            values.get("uri", ""),
                            values["size"],
                            values["sha512"],
                            values["format"],
                            values.get("list_id", ""),
                            values.get("expires", ""),
                            now,
                            now,
                            reason,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise ImageCacheError(
                        "image %s version %s would use the file name %s that another image already uses: "
                        "rename one of them" % (identifier, version, values["filename"])
                    ) from None
            else:
                sets = ["state = ?", "updated_at = ?", "reason = ?"]
                args: List[Any] = [to_state, now, reason]
                for key in ("uri", "size", "sha512", "format", "list_id", "expires"):
                    if values and key in values:
                        sets.append("%s = ?" % key)
                        args.append(values[key])
                args += [identifier, version]
                conn.execute("UPDATE images SET %s WHERE identifier = ? AND version = ?" % ", ".join(sets), args)
            if from_state != to_state or reason:
                conn.execute(
                    "INSERT INTO history (identifier, version, at, from_state, to_state, reason) VALUES (?,?,?,?,?,?)",
                    (identifier, version, now, from_state, to_state, reason),
                )

    # -- subscriptions ------------------------------------------------------------------
    def accepted_list_version(self, list_id: str) -> Optional[str]:
        """The ``hv:version`` of the list ``list_id`` last accepted here, or None."""
        row = self.db.execute("SELECT version FROM subscriptions WHERE list_id = ?", (list_id,)).fetchone()
        return row["version"] if row is not None else None

    def subscriptions(self) -> List[Dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM subscriptions ORDER BY list_id").fetchall()]

    def record_list(self, list_id: str, version: str, images: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
        """Record an accepted (already verified) list and the images it endorses.

        ``images``: dicts with ``identifier``, ``version``, ``uri``, ``size``, ``sha512``,
        ``format`` (default qcow2) and ``expires``. Returns ``new`` (endorsed now, not by the
        previously accepted version of this list), ``current`` (endorsed before and now) and
        ``withdrawn`` (endorsed before, not any more), each a list of image dicts.
        """
        if not list_id or not isinstance(list_id, str):
            raise ImageCacheError("list identifier %r is empty or not a string" % (list_id,))
        clean: List[Dict[str, Any]] = []
        seen = set()
        for index, image in enumerate(images):
            if not isinstance(image, dict):
                raise ImageCacheError("image #%d of list %s is not a mapping" % (index, list_id))
            entry = self._clean_image(image, "image #%d of list %s" % (index, list_id))
            key = (entry["identifier"], entry["version"])
            if key in seen:
                raise ImageCacheError(
                    "list %s endorses image %s version %s twice" % (list_id, entry["identifier"], entry["version"])
                )
            seen.add(key)
            clean.append(entry)
        conn = self.db
        now = _iso(self.clock())
        with self._tx(conn):
            before = {
                (r["identifier"], r["version"]): dict(r)
                for r in conn.execute("SELECT * FROM endorsed WHERE list_id = ?", (list_id,)).fetchall()
            }
            conn.execute(
                "INSERT INTO subscriptions (list_id, version, accepted_at) VALUES (?,?,?) "
                "ON CONFLICT(list_id) DO UPDATE SET version = excluded.version, accepted_at = excluded.accepted_at",
                (list_id, str(version), now),
            )
            conn.execute("DELETE FROM endorsed WHERE list_id = ?", (list_id,))
            for e in clean:
                conn.execute(
                    "INSERT INTO endorsed (list_id, identifier, version, uri, size, sha512, format, expires) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (
                        list_id,
                        e["identifier"],
                        e["version"],
                        e["uri"],
                        e["size"],
                        e["sha512"],
                        e["format"],
                        e["expires"],
                    ),
                )
        result: Dict[str, List[Dict[str, Any]]] = {"new": [], "current": [], "withdrawn": []}
        for e in clean:
            result["current" if (e["identifier"], e["version"]) in before else "new"].append(e)
        for key, old in sorted(before.items()):
            if key not in seen:
                old.pop("list_id", None)
                result["withdrawn"].append(old)
        return result

    @staticmethod
    def _clean_image(image: Dict[str, Any], what: str) -> Dict[str, Any]:
        identifier = validate_name(image.get("identifier"), "identifier of %s" % what)
        version = validate_name(str(image.get("version", "")), "version of %s" % what)
        return {
            "identifier": identifier,
            "version": version,
            "uri": str(image.get("uri") or ""),
            "size": validate_size(image.get("size"), "size of %s" % what),
            "sha512": validate_sha512(image.get("sha512"), "sha512 of %s" % what),
            "format": validate_format(image.get("format")),
            "expires": str(image.get("expires") or ""),
        }

    def endorsed(
        self, identifier: Optional[str] = None, version: Optional[str] = None, include_expired: bool = False
    ) -> List[Dict[str, Any]]:
        """Images endorsed by any accepted list (optionally one identifier/version).

        Entries whose ``expires`` date has passed are left out unless ``include_expired``.
        """
        rows = [dict(r) for r in self.db.execute("SELECT * FROM endorsed ORDER BY list_id, identifier").fetchall()]
        now = self.clock()
        out = []
        for r in rows:
            if identifier is not None and r["identifier"] != identifier:
                continue
            if version is not None and r["version"] != version:
                continue
            if not include_expired and _expired(r["expires"], now):
                continue
            out.append(r)
        return out

    def resolve(self, identifier: str, version: str = "latest") -> Dict[str, Any]:
        """The endorsed entry for ``identifier`` at ``version`` (``latest``: the highest endorsed)."""
        validate_name(identifier, "image identifier")
        if version != "latest":
            validate_name(version, "image version")
        entries = self.endorsed(identifier, None if version == "latest" else version)
        if not entries:
            known = self.endorsed(identifier, None if version == "latest" else version, include_expired=True)
            if known:
                raise ImageCacheError(
                    "image %s version %s is endorsed only by lists whose entry has expired (%s): publish a new "
                    "list or give uri, sha512 and size" % (identifier, version, known[0]["expires"])
                )
            raise ImageCacheError(
                "image %s version %s is not endorsed by any subscribed image list on this hypervisor: subscribe "
                "with batchvirt.farm.image_subscription first, or give uri, sha512 and size" % (identifier, version)
            )
        return max(entries, key=lambda e: version_key(e["version"]))

    # -- users --------------------------------------------------------------------------
    def add_user(self, identifier: str, version: str, user: str) -> bool:
        """Register that ``user`` (a slot name) uses an image; True if it was not registered."""
        validate_name(identifier, "image identifier")
        validate_name(version, "image version")
        conn = self.db
        with self._tx(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO users (identifier, version, user, since) VALUES (?,?,?,?)",
                (identifier, version, user, _iso(self.clock())),
            )
            return cur.rowcount > 0

    def remove_user(self, identifier: str, version: str, user: str) -> bool:
        conn = self.db
        with self._tx(conn):
            cur = conn.execute(
                "DELETE FROM users WHERE identifier = ? AND version = ? AND user = ?", (identifier, version, user)
            )
            return cur.rowcount > 0

    def users(self, identifier: str, version: str) -> List[str]:
        """Who uses an image: registered users and libvirt domains backed by its file."""
        names = {
            r["user"]
            for r in self.db.execute(
                "SELECT user FROM users WHERE identifier = ? AND version = ?", (identifier, version)
            ).fetchall()
        }
        record = self.get(identifier, version)
        if record is not None and self.libvirt_conn is not None:
            names.update(domains_backed_by(self.libvirt_conn, record.path))
        return sorted(names)

    # -- staging ------------------------------------------------------------------------
    def partial_path(self, filename: str) -> str:
        return os.path.join(self.partial_dir, filename + ".part")

    def needs_stage(self, identifier: str, version: str, sha512: str, size: int) -> bool:
        """True when the image is not ready with exactly this content (or its file vanished)."""
        record = self.get(identifier, version)
        if record is None or record.state != READY:
            return True
        self._check_same_content(record, sha512, size)
        try:
            return os.path.getsize(record.path) != record.size
        except OSError:
            return True

    @staticmethod
    def _check_same_content(record: ImageRecord, sha512: str, size: int) -> None:
        if record.sha512 != sha512 or record.size != size:
            raise ImageVerificationError(
                "image %s version %s is already staged with sha512 %s... and size %d, but now published with "
                "sha512 %s... and size %d: an image version must never change its content. Publish it under a "
                "new version (the staged file stays in use)"
                % (record.identifier, record.version, record.sha512[:16], record.size, sha512[:16], size)
            )

    def stage(
        self,
        identifier: str,
        version: str,
        uri: str,
        size: Any,
        sha512: str,
        fmt: str = "qcow2",
        fetch: Optional[Callable[..., Any]] = None,
        list_id: str = "",
        expires: str = "",
        fetch_options: Optional[Dict[str, Any]] = None,
    ) -> StageResult:
        """Make one image version ready: download into the partial area, verify, rename into place.

        ``fetch(uri, partial_path, size, sha512, **fetch_options)`` downloads (resuming an
        existing partial file) and verifies size and sha512; it returns an object with
        ``transferred`` and ``resumed_from`` and raises an exception with a ``resumable``
        attribute on failure. Must run under :meth:`lock`.
        """
        self._require_lock("stage")
        validate_name(identifier, "image identifier")
        validate_name(version, "image version")
        size = validate_size(size)
        sha512 = validate_sha512(sha512)
        fmt = validate_format(fmt)
        filename = image_filename(identifier, version, fmt)
        record = self.get(identifier, version)
        if record is not None and record.state == READY:
            self._check_same_content(record, sha512, size)
            try:
                if os.path.getsize(record.path) == record.size:
                    return StageResult(record=record, changed=False)
            except OSError:
                pass
            reason = "the ready file %s vanished or changed size: staging again" % record.path
        else:
            reason = "staging from %s" % uri
        if record is not None and record.volume != filename:
            filename = record.volume  # keep the name the record already has (format unchanged)
        values = {
            "filename": filename,
            "uri": uri,
            "size": size,
            "sha512": sha512,
            "format": fmt,
            "list_id": list_id,
            "expires": expires,
        }
        self._transition(identifier, version, PARTIAL, reason, values)
        partial = self.partial_path(filename)
        final = os.path.join(self.root, filename)
        if fetch is None:
            from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import fetch as default_fetch

            fetch = default_fetch
        started = time.monotonic()
        try:
            outcome = fetch(uri, partial, size, sha512, **(fetch_options or {}))
        except Exception as exc:
            message = str(exc)
            resumable = bool(getattr(exc, "resumable", False))
            if resumable:
                self._transition(identifier, version, PARTIAL, "interrupted, resumable: %s" % message)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                self._transition(identifier, version, FAILED, message)
            raise ImageCacheError(
                "image %s version %s was not staged: %s%s"
                % (
                    identifier,
                    version,
                    message,
                    "; the partial download is kept in %s and a rerun resumes it" % partial if resumable else "",
                )
            ) from exc
        # fetch verified size and sha512 while writing; check the size on disk once more.
        try:
            on_disk = os.path.getsize(partial)
        except OSError as exc:
            self._transition(identifier, version, FAILED, "the downloaded file vanished: %s" % exc)
            raise ImageCacheError(
                "image %s version %s: the downloaded file %s vanished" % (identifier, version, partial)
            ) from None
        if on_disk != size:
            os.unlink(partial)
            msg = "size mismatch after download: %d bytes on disk, %d published" % (on_disk, size)
            self._transition(identifier, version, FAILED, msg)
            raise ImageVerificationError("image %s version %s was not staged: %s" % (identifier, version, msg))
        os.chmod(partial, 0o644)
        os.replace(partial, final)
        _fsync_dir(self.root)
        self._transition(identifier, version, READY, "verified size %d and sha512 from %s" % (size, uri))
        record = self._must_get(identifier, version)
        result = StageResult(
            record=record,
            changed=True,
            transferred=int(getattr(outcome, "transferred", 0) or 0),
            resumed_from=int(getattr(outcome, "resumed_from", 0) or 0),
            seconds=time.monotonic() - started,
        )
        warning = self.run_hook("ready", record, "staged from %s" % uri)
        if warning:
            result.warnings.append(warning)
        if getattr(outcome, "torrent", ""):
            from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import start_seeding

            warning = start_seeding(outcome, final, fetch_options or {})
            if warning:
                result.warnings.append(warning)
        return result

    # -- expiry -------------------------------------------------------------------------
    def expire(self, identifier: str, version: str, reason: str, force: bool = False) -> Tuple[bool, List[str]]:
        """Remove an image's file and mark it expired. Returns (changed, warnings).

        Refuses with :class:`ImageInUse` naming the slots while any slot uses it, unless
        ``force``. Must run under :meth:`lock`.
        """
        self._require_lock("expire")
        record = self.get(identifier, version)
        if record is None:
            return False, []
        partial = self.partial_path(record.volume)
        if record.state in (EXPIRED, FAILED) and not os.path.exists(record.path) and not os.path.exists(partial):
            return False, []
        users = self.users(identifier, version)
        warnings: List[str] = []
        if users:
            if not force:
                raise ImageInUse(
                    "image %s version %s is still used by %s: the slot overlays are backed by %s. Destroy or recycle "
                    "those slots first (or force, which breaks them on their next start)"
                    % (identifier, version, ", ".join(users), record.path),
                    users=users,
                )
            warnings.append(
                "image %s version %s expired by force while still used by %s" % (identifier, version, ", ".join(users))
            )
        for path in (record.path, partial):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ImageCacheError("cannot remove %s: %s" % (path, exc)) from None
        was_ready = record.state == READY
        self._transition(identifier, version, EXPIRED, reason)
        if was_ready:
            record = self._must_get(identifier, version)
            warning = self.run_hook("expired", record, reason)
            if warning:
                warnings.append(warning)
        return True, warnings

    def unendorsed(self) -> List[ImageRecord]:
        """Ready (or partial) images that no accepted list endorses any more (or whose entry expired)."""
        endorsed = {(e["identifier"], e["version"]) for e in self.endorsed()}
        return [
            r
            for r in self.images()
            if r.state in (READY, PARTIAL, FAILED) and r.list_id and (r.identifier, r.version) not in endorsed
        ]

    # -- hooks --------------------------------------------------------------------------
    def hook_environment(self, event: str, record: ImageRecord, reason: str) -> Dict[str, str]:
        return {
            "FARM_EVENT_TYPE": event,
            "FARM_EVENT_IDENTIFIER": record.identifier,
            "FARM_EVENT_VERSION": record.version,
            "FARM_EVENT_PATH": record.path,
            "FARM_EVENT_VOLUME": record.volume,
            "FARM_EVENT_POOL": record.pool,
            "FARM_EVENT_SHA512": record.sha512,
            "FARM_EVENT_SIZE": str(record.size),
            "FARM_EVENT_FORMAT": record.format,
            "FARM_EVENT_URI": record.uri,
            "FARM_EVENT_LIST": record.list_id,
            "FARM_EVENT_REASON": reason,
            "FARM_EVENT_TIME": _iso(self.clock()),
        }

    def run_hook(self, event: str, record: ImageRecord, reason: str) -> Optional[str]:
        """Run the event hook; return a warning when it fails (the transition stands)."""
        if not self.event_hook:
            return None
        env = dict(os.environ)
        env.update(self.hook_environment(event, record, reason))
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", self.event_hook],
                env=env,
                capture_output=True,
                timeout=self.hook_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            message = "event hook %r timed out after %d s on %s of %s version %s" % (
                self.event_hook,
                self.hook_timeout,
                event,
                record.identifier,
                record.version,
            )
        except OSError as exc:
            message = "event hook %r could not run: %s" % (self.event_hook, exc)
        else:
            if proc.returncode == 0:
                return None
            message = "event hook %r exited with %d on %s of %s version %s: %s" % (
                self.event_hook,
                proc.returncode,
                event,
                record.identifier,
                record.version,
                proc.stderr.decode("utf-8", "replace").strip()[-500:],
            )
        self._transition(record.identifier, record.version, record.state, message)
        return message


def _expired(expires: str, now: datetime.datetime) -> bool:
    if not expires:
        return False
    try:
        when = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when <= now


def _own_command() -> str:
    try:
        with open("/proc/%d/cmdline" % os.getpid(), "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]
    except OSError:
        return " ".join(sys.argv)[:300]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- who uses an image: libvirt domains and qcow2 backing chains -----------------------------
def qcow2_backing_file(path: str) -> Optional[str]:
    """The backing file a qcow2 file names in its header (absolute), or None."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, length = struct.unpack(">QI", header[8:20])
            if not offset or not length or length > 4096:
                return None
            fh.seek(offset)
            name = fh.read(length).decode("utf-8", "replace")
    except OSError:
        return None
    if not os.path.isabs(name):
        name = os.path.join(os.path.dirname(path), name)
    return os.path.normpath(name)


def backing_chain(path: str, depth: int = 16) -> List[str]:
    """The files below ``path`` in its qcow2 backing chain (nearest first)."""
    chain: List[str] = []
    current: Optional[str] = path
    while current and len(chain) < depth:
        current = qcow2_backing_file(current)
        if current:
            chain.append(current)
    return chain


def disk_sources(domain_xml: str) -> List[str]:
    """Files a domain's disks use: sources and any ``backingStore`` sources libvirt reports."""
    root = ET.fromstring(domain_xml)
    files: List[str] = []
    for disk in root.findall("./devices/disk"):
        for source in disk.iter("source"):
            value = source.get("file") or source.get("dev")
            if value:
                files.append(value)
    return files


def domains_backed_by(conn: Any, image_path: str) -> List[str]:
    """Names of libvirt domains (running or not) whose disks are, or are backed by, ``image_path``."""
    target = os.path.realpath(image_path)
    names = []
    for dom in conn.listAllDomains(0):
        try:
            xml = dom.XMLDesc(0)
        except Exception:  # a domain vanished while we looked
            continue
        for source in disk_sources(xml):
            candidates = [source, *backing_chain(source)]
            if any(os.path.realpath(c) == target for c in candidates):
                names.append(dom.name())
                break
    return sorted(set(names))


# -- the image module's logic ---------------------------------------------------------------
IMAGE_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "identifier": {"type": "str"},
    "version": {"type": "str", "default": "latest"},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent", "pruned"]},
    "source": {"type": "str", "aliases": ["url"]},
    "sha512": {"type": "str"},
    "size": {"type": "int"},
    "format": {"type": "str", "default": "qcow2"},
    "force": {"type": "bool", "default": False},
    "root": {"type": "path", "default": DEFAULT_ROOT},
    "pool": {"type": "str", "default": DEFAULT_POOL},
    "refresh_pool": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 60},
    "connect_timeout": {"type": "int", "default": 30},
    "lock_timeout": {"type": "int", "default": 600},
    "event_hook": {"type": "str"},
    "validate_certs": {"type": "bool", "default": True},
    "allow_file_uri": {"type": "bool", "default": True},
    "transport_options": {"type": "dict", "default": {}},
}


def _fetch_options(params: Dict[str, Any]) -> Dict[str, Any]:
    options = dict(params.get("transport_options") or {})
    options.update(
        timeout=params["timeout"],
        connect_timeout=params["connect_timeout"],
        validate_certs=params["validate_certs"],
        allow_file=params["allow_file_uri"],
    )
    return options


def refresh_pool(conn: Any, pool: str) -> Optional[str]:
    """Refresh the libvirt pool so a new or removed volume shows; a warning when it cannot."""
    if conn is None:
        return None
    try:
        handle = conn.storagePoolLookupByName(pool)
    except Exception:
        return (
            "the libvirt storage pool %s is not defined: the image is staged but slots cannot clone it as a "
            "volume; run the hypervisor role (or set pool to the dir pool over the cache root)" % pool
        )
    try:
        if not handle.isActive():
            return "the libvirt storage pool %s is not active: start it (virsh pool-start %s)" % (pool, pool)
        handle.refresh(0)
    except Exception as exc:
        return "refreshing the libvirt storage pool %s failed: %s" % (pool, exc)
    return None


def run_image(
    params: Dict[str, Any], check_mode: bool, conn: Any = None, clock: Optional[Clock] = None
) -> Dict[str, Any]:
    """What ``batchvirt.farm.image`` does; returns the module result (raises ImageCacheError)."""
    cache = ImageCache(
        params["root"], pool=params["pool"], clock=clock, event_hook=params.get("event_hook"), libvirt_conn=conn
    )
    try:
        state = params["state"]
        if state == "pruned":
            return _prune(cache, params, check_mode, conn)
        identifier = params.get("identifier")
        if not identifier:
            raise ImageCacheError("identifier is required with state=%s" % state)
        validate_name(identifier, "identifier")
        if state == "absent":
            return _absent(cache, identifier, params, check_mode, conn)
        return _present(cache, identifier, params, check_mode, conn)
    finally:
        cache.close()


def _wanted(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    version = params["version"]
    if params.get("source"):
        missing = [name for name in ("sha512", "size") if not params.get(name)]
        if missing or version == "latest":
            raise ImageCacheError(
                "with source, also give %s: an explicit image must be verifiable (sha512 and size as published) "
                "and have an explicit version (not 'latest')"
                % ", ".join(missing + (["version"] if version == "latest" else []))
            )
        return {
            "identifier": identifier,
            "version": validate_name(version, "version"),
            "uri": params["source"],
            "size": validate_size(params["size"]),
            "sha512": validate_sha512(params["sha512"]),
            "format": validate_format(params["format"]),
            "expires": "",
            "list_id": "",
        }
    try:
        entry = cache.resolve(identifier, version)
    except ImageCacheError:
        if not (check_mode and version != "latest" and params.get("sha512") and params.get("size")):
            raise
        # Check mode after a subscription that, in check mode, recorded nothing: preview.
        return {
            "identifier": identifier,
            "version": validate_name(version, "version"),
            "uri": "",
            "size": validate_size(params["size"]),
            "sha512": validate_sha512(params["sha512"]),
            "format": validate_format(params["format"]),
            "expires": "",
            "list_id": "",
        }
    if params.get("sha512") and validate_sha512(params["sha512"]) != entry["sha512"]:
        raise ImageCacheError(
            "sha512 given for image %s version %s differs from the one its image list %s endorses: drop the "
            "sha512 option or fix it" % (identifier, entry["version"], entry["list_id"])
        )
    return entry


def _result(record: Optional[ImageRecord], changed: bool, **extra: Any) -> Dict[str, Any]:
    result: Dict[str, Any] = {"changed": changed}
    if record is not None:
        result.update(
            identifier=record.identifier,
            version=record.version,
            state=record.state,
            path=record.path,
            volume=record.volume,
            pool=record.pool,
            sha512=record.sha512,
            size=record.size,
            format=record.format,
        )
    result.update(extra)
    return result


def _present(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    want = _wanted(cache, identifier, params, check_mode)
    version = want["version"]
    if not cache.needs_stage(identifier, version, want["sha512"], want["size"]):
        return _result(cache.get(identifier, version), False, transferred=0, resumed_from=0)
    if check_mode:
        fmt = want["format"]
        record = cache.get(identifier, version)
        filename = record.volume if record is not None else image_filename(identifier, version, fmt)
        preview = ImageRecord(
            identifier=identifier,
            version=version,
            state=READY,
            path=os.path.join(cache.root, filename),
            volume=filename,
            pool=cache.pool,
            sha512=want["sha512"],
            size=want["size"],
            format=fmt,
        )
        return _result(preview, True, transferred=0, resumed_from=0)
    with cache.lock(params["lock_timeout"], purpose="stage %s version %s" % (identifier, version)):
        staged = cache.stage(
            identifier,
            version,
            want["uri"],
            want["size"],
            want["sha512"],
            want["format"],
            list_id=want.get("list_id", ""),
            expires=want.get("expires", ""),
            fetch_options=_fetch_options(params),
        )
    warnings = list(staged.warnings)
    if staged.changed and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return _result(
        staged.record,
        staged.changed,
        transferred=staged.transferred,
        resumed_from=staged.resumed_from,
        seconds=round(staged.seconds, 3),
        warnings=warnings,
    )


def _absent(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    version = params["version"]
    if version == "latest":
        raise ImageCacheError("state=absent needs an explicit version of image %s (not 'latest')" % identifier)
    validate_name(version, "version")
    record = cache.get(identifier, version)
    present = record is not None and (
        os.path.exists(record.path) or os.path.exists(cache.partial_path(record.volume)) or record.state == READY
    )
    if not present:
        return _result(record, False)
    users = cache.users(identifier, version)
    if users and not params["force"]:
        raise ImageInUse(
            "image %s version %s is still used by %s: destroy or recycle those slots first, or set force=true "
            "(which breaks them on their next start)" % (identifier, version, ", ".join(users)),
            users=users,
        )
    if check_mode:
        return _result(record, True, users=users)
    with cache.lock(params["lock_timeout"], purpose="expire %s version %s" % (identifier, version)):
        changed, warnings = cache.expire(identifier, version, "removed by state=absent", force=params["force"])
    if changed and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return _result(cache.get(identifier, version), changed, users=users, warnings=warnings)


def _prune(cache: ImageCache, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    expired: List[Dict[str, Any]] = []
    kept: List[Dict[str, Any]] = []
    warnings: List[str] = []
    candidates = cache.unendorsed()
    if not candidates:
        return {"changed": False, "expired": [], "kept": []}
    with contextlib.ExitStack() as stack:
        if not check_mode:
            stack.enter_context(cache.lock(params["lock_timeout"], purpose="prune unendorsed images"))
        for record in cache.unendorsed():
            users = cache.users(record.identifier, record.version)
            entry = {"identifier": record.identifier, "version": record.version, "path": record.path, "users": users}
            if users and not params["force"]:
                kept.append(entry)
                warnings.append(
                    "image %s version %s is no longer endorsed but still used by %s: kept until those slots are gone"
                    % (record.identifier, record.version, ", ".join(users))
                )
                continue
            if not check_mode:
                _changed, more = cache.expire(
                    record.identifier, record.version, "no longer endorsed by list %s" % record.list_id, force=True
                )
                warnings.extend(more)
            expired.append(entry)
    if expired and not check_mode and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return {"changed": bool(expired), "expired": expired, "kept": kept, "warnings": warnings}
