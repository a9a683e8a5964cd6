# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: subscriptions and image selection (which version may be deployed).

Subscriptions (``image_subscription``) record here the accepted version of each image list and
the images it endorses (:meth:`ImageSelection.record_list`).

:func:`select_version` is THE rule every caller that picks an image version goes through
(``ImageCache.resolve`` and ``ImageCache.latest``, so the ``image`` module, the ``slot``
module's ``version: latest``, and the recycle and rolling update plays). A version may be
selected only when

* a currently accepted list endorses it and that entry is not past its ``expires`` time, or
* it was staged explicitly without a list (``image`` with ``source``, ``sha512`` and ``size``).

A version the list withdrew (or whose entry expired) is never selected, not even when it is
the only one staged: the caller fails with a message that says that nothing is endorsed.

Slots that still run a withdrawn version keep it (its file stays while they use it, see
``_image_prune``). So that the inventory (``batchvirt.farm.slots``, group
``farm_image_withdrawn``) can show them over a read-only libvirt connection, the cache keeps an
empty marker file ``<identifier>_<version>.withdrawn`` beside each withdrawn, still staged image
in the pool directory; libvirt lists it as a volume of the pool (:data:`WITHDRAWN_SUFFIX`).
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._image_states import ImageStates
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import (
    PARTIAL,
    READY,
    ImageCacheError,
    ImageRecord,
    validate_format,
    validate_name,
    validate_sha512,
    validate_size,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time
from ansible_collections.batchvirt.farm.plugins.module_utils._version import version_key

LATEST = "latest"
WITHDRAWN_SUFFIX = ".withdrawn"
_ENTRY_FIELDS = ("identifier", "version", "uri", "size", "sha512", "format", "expires")


class ImageNotEndorsed(ImageCacheError):
    """No version of an image may be deployed: none is endorsed (withdrawn, expired or unknown)."""


class ImageAvoided(ImageCacheError):
    """Versions of an image may be deployed, but the caller avoids every one of them (``avoid``)."""


def withdrawn_marker(identifier: str, version: str) -> str:
    """The marker volume name of a withdrawn, still staged image version."""
    return "%s_%s%s" % (identifier, version, WITHDRAWN_SUFFIX)


class ImageSelection(ImageStates):
    """Subscriptions, endorsements and the selection rule on top of the states."""

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
        ``withdrawn`` (endorsed before, not any more), each a list of image dicts. Accepting
        the same list again (same version, same entries) writes nothing, not even
        ``accepted_at``.
        """
        if not list_id or not isinstance(list_id, str):
            raise ImageCacheError("list identifier %r is empty or not a string" % (list_id,))
        clean = self._clean_list(list_id, images)
        conn = self.db
        with self._tx(conn):
            before = {
                (r["identifier"], r["version"]): dict(r)
                for r in conn.execute("SELECT * FROM endorsed WHERE list_id = ?", (list_id,)).fetchall()
            }
            row = conn.execute("SELECT version FROM subscriptions WHERE list_id = ?", (list_id,)).fetchone()
            same = row is not None and row["version"] == str(version) and _same_entries(before, clean)
            if not same:
                self._write_list(conn, list_id, str(version), clean)
        result: Dict[str, List[Dict[str, Any]]] = {"new": [], "current": [], "withdrawn": []}
        seen = set()
        for e in clean:
            seen.add((e["identifier"], e["version"]))
            result["current" if (e["identifier"], e["version"]) in before else "new"].append(e)
        for key, old in sorted(before.items()):
            if key not in seen:
                old.pop("list_id", None)
                result["withdrawn"].append(old)
        if not same:
            self.sync_withdrawn_markers()
        return result

    def forget_list(self, list_id: str) -> Dict[str, Any]:
        """Unsubscribe: remove the record of the list ``list_id`` and its endorsements (the staged
        files stay; an image no other list endorses is withdrawn from then on). Returns the version
        that was accepted (None when the list was unknown here) and the endorsements removed."""
        conn = self.db
        with self._tx(conn):
            row = conn.execute("SELECT version FROM subscriptions WHERE list_id = ?", (list_id,)).fetchone()
            removed = [
                {k: v for k, v in dict(r).items() if k != "list_id"}
                for r in conn.execute(
                    "SELECT * FROM endorsed WHERE list_id = ? ORDER BY identifier, version", (list_id,)
                ).fetchall()
            ]
            conn.execute("DELETE FROM endorsed WHERE list_id = ?", (list_id,))
            conn.execute("DELETE FROM subscriptions WHERE list_id = ?", (list_id,))
        if row is not None or removed:
            self.sync_withdrawn_markers()
        return {"previous_version": row["version"] if row is not None else None, "withdrawn": removed}

    def _clean_list(self, list_id: str, images: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
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
        return clean

    def _write_list(self, conn: Any, list_id: str, version: str, clean: List[Dict[str, Any]]) -> None:
        conn.execute(
            "INSERT INTO subscriptions (list_id, version, accepted_at) VALUES (?,?,?) "
            "ON CONFLICT(list_id) DO UPDATE SET version = excluded.version, accepted_at = excluded.accepted_at",
            (list_id, version, format_time(self.clock())),
        )
        conn.execute("DELETE FROM endorsed WHERE list_id = ?", (list_id,))
        for e in clean:
            conn.execute(
                "INSERT INTO endorsed (list_id, identifier, version, uri, size, sha512, format, expires) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (list_id, *(e[name] for name in _ENTRY_FIELDS)),
            )

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
            if not include_expired and expired(r["expires"], now):
                continue
            out.append(r)
        return out

    # -- selection ------------------------------------------------------------------------
    def resolve(self, identifier: str, version: str = LATEST, staged: bool = False) -> Dict[str, Any]:
        """The endorsement of ``identifier`` at ``version`` (``latest``: the highest one) that may be
        deployed, by :func:`select_version`; ``staged``: only versions ready on this hypervisor."""
        return select_version(self, identifier, version, staged=staged)

    def latest(self, identifier: str, state: Optional[str] = READY, avoid: Sequence[str] = ()) -> Optional[ImageRecord]:
        """The ready version a new slot of ``identifier`` gets (:func:`select_version`), skipping
        the versions in ``avoid`` (:class:`ImageAvoided` when that leaves none).

        None when no version of ``identifier`` is ready here at all; raises
        :class:`ImageNotEndorsed` when versions are ready but none may be deployed (withdrawn or
        expired), never returning one of those. With another ``state``: the highest version in
        that state (a report, not a selection).
        """
        if state != READY:
            candidates = [r for r in self.images(state) if r.identifier == identifier]
            return max(candidates, key=lambda r: version_key(r.version)) if candidates else None
        validate_name(identifier, "image identifier")
        if not any(r.identifier == identifier for r in self.images(READY)):
            return None
        entry = select_version(self, identifier, LATEST, staged=True, avoid=avoid)
        return self.get(identifier, entry["version"])

    def withdrawn(self) -> List[ImageRecord]:
        """Staged (ready or partial) images that came from a list which no longer endorses them
        (withdrawn, or the entry expired): never selected, kept only while slots use them."""
        allowed = {(e["identifier"], e["version"]) for e in self.endorsed()}
        return [
            r
            for r in self.images()
            if r.state in (READY, PARTIAL) and r.list_id and (r.identifier, r.version) not in allowed
        ]

    def sync_withdrawn_markers(self) -> bool:
        """Keep one marker file per withdrawn, still present image in the pool directory (and no
        other); True when a marker was added or removed (refresh the libvirt pool then)."""
        wanted: Set[str] = {
            withdrawn_marker(r.identifier, r.version) for r in self.withdrawn() if os.path.exists(r.path)
        }
        try:
            present = {n for n in os.listdir(self.root) if n.endswith(WITHDRAWN_SUFFIX)}
        except OSError:
            return False
        changed = False
        for name in sorted(wanted - present):
            path = os.path.join(self.root, name)
            try:
                with open(path, "w", encoding="utf-8"):
                    pass
                os.chmod(path, 0o644)
                changed = True
            except OSError as exc:
                raise ImageCacheError("cannot write the withdrawn marker %s: %s" % (path, exc)) from None
        for name in sorted(present - wanted):
            try:
                os.unlink(os.path.join(self.root, name))
                changed = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ImageCacheError("cannot remove the withdrawn marker %s: %s" % (name, exc)) from None
        return changed


def select_version(
    cache: ImageSelection,
    identifier: str,
    version: str = LATEST,
    now: Optional[datetime.datetime] = None,
    staged: bool = False,
    avoid: Sequence[str] = (),
) -> Dict[str, Any]:
    """THE image selection: the entry of ``identifier`` at ``version`` (``latest``: the highest
    allowed one) that may be deployed at ``now`` (default: the cache's clock).

    ``avoid``: versions ``latest`` skips (those in back-off on this hypervisor after repeated
    failures); when they are all that is left, :class:`ImageAvoided` names them. Only with
    ``latest``: an explicit version is never replaced by another one.

    Allowed: endorsed by a currently accepted list and not past the entry's ``expires``, or
    staged explicitly without a list. ``staged``: only versions ready in this cache. Returns a
    dict with ``list_id`` (empty for an explicit image), ``identifier``, ``version``, ``uri``,
    ``size``, ``sha512``, ``format`` and ``expires``. Raises :class:`ImageNotEndorsed` saying why
    nothing may be deployed; never falls back to a withdrawn or expired version.
    """
    validate_name(identifier, "image identifier")
    if version != LATEST:
        validate_name(version, "image version")
    when = now or cache.clock()
    ready = {r.version: r for r in cache.images(READY) if r.identifier == identifier}
    known = cache.endorsed(identifier, include_expired=True)
    allowed: List[Dict[str, Any]] = [e for e in known if not expired(e["expires"], when)]
    allowed += [_explicit_entry(r) for r in ready.values() if not r.list_id]
    if staged:
        allowed = [e for e in allowed if e["version"] in ready]
    if version != LATEST:
        allowed = [e for e in allowed if e["version"] == version]
    elif avoid and allowed:
        kept = [e for e in allowed if e["version"] not in avoid]
        if not kept:
            raise ImageAvoided(
                "image %s: every version that may be deployed here is avoided (%s)"
                % (identifier, ", ".join(sorted({e["version"] for e in allowed}, key=version_key))),
                "avoid",
            )
        allowed = kept
    if allowed:
        return max(allowed, key=lambda e: (version_key(e["version"]), e["version"], e["list_id"]))
    raise ImageNotEndorsed(_refusal(identifier, version, known, ready, when, staged), "version")


def _explicit_entry(record: ImageRecord) -> Dict[str, Any]:
    entry = {name: getattr(record, name) for name in _ENTRY_FIELDS}
    entry["list_id"] = ""
    return entry


def _refusal(
    identifier: str,
    version: str,
    known: List[Dict[str, Any]],
    ready: Dict[str, ImageRecord],
    now: datetime.datetime,
    staged: bool,
) -> str:
    """Why no version of ``identifier`` may be deployed, for a site admin."""
    wanted = "version %s" % version
    reasons: List[str] = []
    for entry in known:
        if version in (LATEST, entry["version"]) and expired(entry["expires"], now):
            reasons.append(
                "%s: the entry of list %s expired at %s" % (entry["version"], entry["list_id"], entry["expires"])
            )
    endorsed = {e["version"] for e in known}
    for v, record in sorted(ready.items()):
        if version in (LATEST, v) and record.list_id and v not in endorsed:
            reasons.append("%s: withdrawn by list %s" % (v, record.list_id))
    if staged:
        for entry in known:
            wanted_here = version in (LATEST, entry["version"]) and entry["version"] not in ready
            if wanted_here and not expired(entry["expires"], now):
                reasons.append("%s: endorsed but not staged here" % entry["version"])
    if reasons:
        return (
            "image %s %s: nothing is endorsed by a currently accepted image list (%s); a withdrawn or expired "
            "version is never deployed. "
            "Publish a list that endorses a version and subscribe (batchvirt.farm.image_subscription), then "
            "stage it, or stage one explicitly with source, sha512 and size"
            % (identifier, wanted, "; ".join(sorted(set(reasons))))
        )
    return (
        "image %s %s is not endorsed by any subscribed image list on this hypervisor: subscribe with "
        "batchvirt.farm.image_subscription first, or give uri, sha512 and size" % (identifier, wanted)
    )


def _same_entries(before: Dict[Tuple[str, str], Dict[str, Any]], clean: List[Dict[str, Any]]) -> bool:
    if len(before) != len(clean):
        return False
    for e in clean:
        old = before.get((e["identifier"], e["version"]))
        if old is None or any(old[name] != e[name] for name in _ENTRY_FIELDS):
            return False
    return True


def expired(expires: str, now: datetime.datetime) -> bool:
    """True when the ``expires`` time of an entry has passed at ``now`` (an unreadable one never expires)."""
    if not expires:
        return False
    try:
        return parse_time(expires, "expires") <= now
    except ValueError:
        return False
