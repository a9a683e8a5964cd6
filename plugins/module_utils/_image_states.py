# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: image states and their history, staging, and the event hooks.

Image states: ``partial`` (a download started, the file lives in ``partial/``), ``ready``
(size and sha512 verified, file renamed into the pool directory), ``failed`` (the last
attempt was refused: checksum or size mismatch, HTTP error; nothing is visible),
``expired`` (removed from the pool directory). Every transition is written to the
``history`` table with its time and reason. A file appears in the pool directory only by an
atomic ``rename()`` after it was verified, so a half-downloaded or unverified file is never
visible as ready, not even to libvirt.

Event hooks: a shell command run when an image becomes ``ready`` or ``expired`` (as
vmcatcher's ``--cache-event``), with the environment ``FARM_EVENT_TYPE`` (``ready``,
``expired``), ``FARM_EVENT_IDENTIFIER``, ``FARM_EVENT_VERSION``, ``FARM_EVENT_PATH``,
``FARM_EVENT_VOLUME``, ``FARM_EVENT_POOL``, ``FARM_EVENT_SHA512``, ``FARM_EVENT_SIZE``,
``FARM_EVENT_FORMAT``, ``FARM_EVENT_URI``, ``FARM_EVENT_LIST``, ``FARM_EVENT_REASON`` and
``FARM_EVENT_TIME``. A failing hook does not undo the transition; it is reported.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._files import fsync_dir
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import (
    FAILED,
    PARTIAL,
    READY,
    ImageCacheError,
    ImageRecord,
    ImageStore,
    ImageVerificationError,
    StageResult,
    image_filename,
    validate_format,
    validate_name,
    validate_sha512,
    validate_size,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time


class ImageStates(ImageStore):
    """States, history, staging and hooks on top of the store."""

    # -- states and history ---------------------------------------------------------------
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
        now = format_time(self.clock())
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
        started = time.monotonic()
        outcome = self._download(identifier, version, uri, filename, size, sha512, fetch, fetch_options)
        result = self._promote(identifier, version, uri, filename, size, outcome)
        result.seconds = time.monotonic() - started
        if getattr(outcome, "torrent", ""):
            from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import start_seeding

            warning = start_seeding(outcome, result.record.path, fetch_options or {})
            if warning:
                result.warnings.append(warning)
        return result

    def _download(
        self,
        identifier: str,
        version: str,
        uri: str,
        filename: str,
        size: int,
        sha512: str,
        fetch: Optional[Callable[..., Any]],
        fetch_options: Optional[Dict[str, Any]],
    ) -> Any:
        """Run ``fetch`` into the partial file; a failure is recorded (partial or failed) and raised."""
        partial = self.partial_path(filename)
        if fetch is None:
            from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import fetch as default_fetch

            fetch = default_fetch
        try:
            return fetch(uri, partial, size, sha512, **(fetch_options or {}))
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

    def _promote(self, identifier: str, version: str, uri: str, filename: str, size: int, outcome: Any) -> StageResult:
        """Check the downloaded size once more, rename the file into the pool directory, mark it ready."""
        partial = self.partial_path(filename)
        final = os.path.join(self.root, filename)
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
        fsync_dir(self.root)
        self._transition(identifier, version, READY, "verified size %d and sha512 from %s" % (size, uri))
        record = self._must_get(identifier, version)
        result = StageResult(
            record=record,
            changed=True,
            transferred=int(getattr(outcome, "transferred", 0) or 0),
            resumed_from=int(getattr(outcome, "resumed_from", 0) or 0),
        )
        warning = self.run_hook("ready", record, "staged from %s" % uri)
        if warning:
            result.warnings.append(warning)
        return result

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
            "FARM_EVENT_TIME": format_time(self.clock()),
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
