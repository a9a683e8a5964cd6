# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: who uses an image, expiry, and pruning what no list endorses.

An image must not be expired while a slot overlay is backed by it (removing the base of a
running VM's qcow2 overlay corrupts the VM's view on its next restart and breaks new slots).
:meth:`ImagePrune.users` derives users from two sources:

* libvirt: every domain (running or not) whose disk, or a disk's qcow2 backing chain (read
  from the qcow2 header, so inactive domains count too), resolves to the image file;
* the ``users`` table, for overlays not (yet) attached to a domain: the ``slot`` module may
  call :meth:`ImagePrune.add_user` / :meth:`ImagePrune.remove_user`.

Expiry refuses, naming the users, unless forced. :func:`prune` expires every image no accepted
list endorses any more and keeps (with a warning) those still in use.
"""

from __future__ import annotations

import contextlib
import os
import struct
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._image_selection import ImageSelection
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import (
    EXPIRED,
    FAILED,
    PARTIAL,
    READY,
    ImageCacheError,
    ImageInUse,
    ImageRecord,
    validate_name,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time


class ImagePrune(ImageSelection):
    """Users, expiry and the prune candidates on top of the selection."""

    # -- users --------------------------------------------------------------------------
    def add_user(self, identifier: str, version: str, user: str) -> bool:
        """Register that ``user`` (a slot name) uses an image; True if it was not registered."""
        validate_name(identifier, "image identifier")
        validate_name(version, "image version")
        conn = self.db
        with self._tx(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO users (identifier, version, user, since) VALUES (?,?,?,?)",
                (identifier, version, user, format_time(self.clock())),
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
        self.sync_withdrawn_markers()
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


def prune(cache: ImagePrune, force: bool, lock_timeout: float, check_mode: bool) -> Dict[str, Any]:
    """Expire every image no accepted list endorses any more; keep (and warn about) those in use.

    Returns ``changed``, ``expired`` and ``kept`` (each entry with ``identifier``, ``version``,
    ``path`` and ``users``), ``warnings`` and ``markers_changed`` (a withdrawn marker was added or
    removed, so the libvirt pool needs a refresh).
    """
    expired: List[Dict[str, Any]] = []
    kept: List[Dict[str, Any]] = []
    warnings: List[str] = []
    if not cache.unendorsed():
        changed_markers = False if check_mode else cache.sync_withdrawn_markers()
        return {"changed": False, "expired": [], "kept": [], "warnings": [], "markers_changed": changed_markers}
    markers_changed = False
    with contextlib.ExitStack() as stack:
        if not check_mode:
            stack.enter_context(cache.lock(lock_timeout, purpose="prune unendorsed images"))
        for record in cache.unendorsed():
            users = cache.users(record.identifier, record.version)
            entry = {"identifier": record.identifier, "version": record.version, "path": record.path, "users": users}
            if users and not force:
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
        if not check_mode:
            markers_changed = cache.sync_withdrawn_markers()
    return {
        "changed": bool(expired),
        "expired": expired,
        "kept": kept,
        "warnings": warnings,
        "markers_changed": markers_changed,
    }


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
