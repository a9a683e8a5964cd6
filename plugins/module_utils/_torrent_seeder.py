# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the multi-torrent origin seeder process (the ``image_seeder`` role's service).

ONE libtorrent session, set up as the origin (``engine_settings`` with ``seeder``: peer id
ORIGIN_FINGERPRINT, every peer unchoked, SEEDER_REQUEST_QUEUE), seeding every torrent of a
JSON seeds file:

    {"torrents": [{"torrent": PATH, "data": PATH}, ...], "until": EPOCH or null,
     "seed_time": SECONDS (0/null: no limit; counted from the start), "verify": BOOL,
     "listen_port": "6881-6999", "max_upload_limit": BYTES_PER_S (0: unlimited),
     "tracker_interval": SECONDS (0: the tracker's), "log": PATH, "status": PATH,
     "engine_settings": {extra libtorrent settings}}

Run as ``python -I -B ENGINE_DIR/launch.py --seeds FILE.json`` (see ``_torrent_launch``).  Each
torrent is added in seed mode (no re-hash) unless ``verify`` (then libtorrent re-checks every
piece first), and in upload mode: the origin never downloads or writes.  A torrent whose data
is missing, changes, or fails its check is dropped with one log line; the others go on.  Ends
at ``until`` / after ``seed_time`` (exit 0), on SIGTERM (exit 0), or when nothing is left to
seed (exit 1, so that the service manager reports it).  Part of the installed engine: imports
only the standard library, libtorrent and the other engine files.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, utcnow
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_engine import (
    DEFAULT_LISTEN_PORT,
    engine_settings,
    free_port,
    libtorrent_module,
    make_session,
    read_json,
    serve,
    write_json,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta import TorrentError, load_torrent_params

SEEDER_CHECK_EVERY = 2.0  # seconds between checks that every data file is still the same


class _Seeder:
    """One libtorrent session seeding many torrents as the origin (see the section comment)."""

    def __init__(self, spec_path: str) -> None:
        spec = read_json(spec_path)
        if spec is None:
            raise SystemExit(f"cannot read the seeds file {spec_path}: not a JSON object")
        self.spec = spec
        self.status_path = str(spec.get("status") or "")
        self.stopping = False
        self.started = time.time()
        until = spec.get("until")
        seed_time = float(spec.get("seed_time") or 0)
        ends = [float(until)] if until else []
        if seed_time > 0:
            ends.append(self.started + seed_time)
        self.until: Optional[float] = min(ends) if ends else None
        self.tracker_interval = float(spec.get("tracker_interval") or 0)
        self.lt = libtorrent_module()
        self.port = free_port(str(spec.get("listen_port") or DEFAULT_LISTEN_PORT))
        job = {
            "seeder": True,
            "port": self.port,
            "max_upload_limit": int(spec.get("max_upload_limit") or 0),
            "settings": dict(spec.get("engine_settings") or {}),
        }
        settings = engine_settings(self.lt, job)
        self.peer_id = str(settings.get("peer_fingerprint") or "")
        self.ses = make_session(self.lt, settings)
        self.entries: List[Dict[str, Any]] = []
        self.last_check = time.monotonic()
        self.last_announce = time.monotonic()
        verify = bool(spec.get("verify"))
        torrents = spec.get("torrents")
        if not isinstance(torrents, list):
            raise SystemExit(f"{spec_path}: 'torrents' must be a list of {{torrent, data}} objects")
        self.log(
            f"origin seeder starting: {len(torrents)} torrent(s), port {self.port}, peer id {self.peer_id}, "
            f"{'until ' + format_time(datetime.datetime.fromtimestamp(self.until, datetime.timezone.utc)) if self.until else 'no end'}"
        )
        for item in torrents:
            self.entries.append(self._add(item if isinstance(item, dict) else {}, verify))

    @staticmethod
    def log(message: str) -> None:
        sys.stderr.write(f"{format_time(utcnow())} {message}\n")
        sys.stderr.flush()

    def _add(self, item: Dict[str, Any], verify: bool) -> Dict[str, Any]:
        lt = self.lt
        torrent, data = str(item.get("torrent") or ""), os.path.abspath(str(item.get("data") or ""))
        entry: Dict[str, Any] = {"torrent": torrent, "data": data, "info_hash": "", "handle": None, "error": ""}
        try:
            atp = load_torrent_params(lt, torrent)
        except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
            return self._drop(entry, f"{torrent} is not a readable .torrent file: {exc}")
        ti = atp.ti
        entry["info_hash"] = str(ti.info_hashes().v1)
        entry["name"] = ti.name()
        if ti.num_files() != 1:
            return self._drop(entry, f"{torrent} holds several files; an image torrent must hold one")
        try:
            stat = os.stat(data)
        except OSError as exc:
            return self._drop(entry, f"the image {data} is missing ({exc.strerror})")
        if stat.st_size != ti.total_size():
            return self._drop(entry, f"the image {data} holds {stat.st_size} bytes, the torrent {ti.total_size()}")
        if any(other["info_hash"] == entry["info_hash"] and other["handle"] for other in self.entries):
            return self._drop(entry, f"{torrent} is listed twice (info hash {entry['info_hash']})")
        entry["stat"] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        atp.renamed_files = {0: os.path.basename(data)}
        atp.save_path = os.path.dirname(data)
        atp.flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        atp.flags |= lt.torrent_flags.upload_mode  # the origin never downloads nor writes
        if not verify:
            atp.flags |= lt.torrent_flags.seed_mode
        try:
            entry["handle"] = self.ses.add_torrent(atp)
        except Exception as exc:  # noqa: BLE001
            return self._drop(entry, f"libtorrent refused it: {exc}")
        self.log(
            f"seeding {data} ({torrent}, info hash {entry['info_hash']}){'; every piece is checked first' if verify else ''}"
        )
        return entry

    def _drop(self, entry: Dict[str, Any], why: str) -> Dict[str, Any]:
        if entry.get("handle") is not None:
            self.ses.remove_torrent(entry["handle"])
            entry["handle"] = None
        entry["error"] = why
        self.log(f"dropped {entry['torrent'] or '(no torrent given)'}: {why}; the other torrents go on")
        return entry

    def _alerts(self) -> None:
        lt = self.lt
        for alert in self.ses.pop_alerts():
            if isinstance(alert, lt.listen_failed_alert):
                self.log(f"listening failed: {alert.message()}")
            elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert, lt.hash_failed_alert)):
                try:
                    ih = str(alert.handle.info_hashes().v1)
                except Exception:  # noqa: BLE001 (a handle already removed)
                    continue
                for entry in self.entries:
                    if entry["handle"] is not None and entry["info_hash"] == ih:
                        self._drop(entry, f"{alert.message()} (the image {entry['data']} changed or is unreadable)")

    def _check(self) -> None:
        lt = self.lt
        for entry in self.entries:
            handle = entry["handle"]
            if handle is None:
                continue
            try:
                stat = os.stat(entry["data"])
            except OSError as exc:
                self._drop(entry, f"the image {entry['data']} vanished ({exc.strerror})")
                continue
            if (stat.st_size, stat.st_mtime_ns, stat.st_ino) != entry["stat"]:
                self._drop(entry, f"the image {entry['data']} changed since the seeder started; restart the service")
                continue
            st = handle.status()
            if st.errc.value():
                self._drop(entry, f"{st.errc.message()} ({st.error_file})")
            elif st.state == lt.torrent_status.states.finished or (
                st.state == lt.torrent_status.states.downloading and not st.is_seeding
            ):
                self._drop(
                    entry,
                    f"the image {entry['data']} does not match the torrent "
                    f"({100 * float(st.progress):.0f}% of the pieces verified)",
                )

    def _status(self) -> None:
        if not self.status_path:
            return
        torrents = []
        for entry in self.entries:
            record = {k: entry.get(k) for k in ("torrent", "data", "info_hash", "error")}
            handle = entry["handle"]
            if handle is None:
                record["state"] = "dropped"
            else:
                st = handle.status()
                checking = st.state in (st.checking_files, st.checking_resume_data)
                record.update(
                    state="checking" if checking else "seeding",
                    peers=int(st.num_peers),
                    uploaded=int(st.total_payload_upload),
                )
            torrents.append(record)
        write_json(
            self.status_path,
            {
                "pid": os.getpid(),
                "port": int(self.ses.listen_port()),
                "peer_id_prefix": self.peer_id,
                "time": round(time.time(), 3),
                "until": self.until,
                "torrents": torrents,
            },
        )

    def run(self) -> int:
        last_status = 0.0
        while not self.stopping:
            self.ses.wait_for_alert(200)
            self._alerts()
            now = time.monotonic()
            if now - self.last_check >= SEEDER_CHECK_EVERY:
                self.last_check = now
                self._check()
            if self.tracker_interval > 0 and now - self.last_announce >= self.tracker_interval:
                self.last_announce = now
                for entry in self.entries:
                    if entry["handle"] is not None:
                        entry["handle"].force_reannounce()
            if now - last_status >= 1.0:
                last_status = now
                self._status()
            if not any(entry["handle"] is not None for entry in self.entries):
                self._status()
                self.log("nothing left to seed: every torrent was dropped (see above); exiting")
                return 1
            if self.until is not None and time.time() >= self.until:
                self.log("the seed time is over; exiting")
                break
        if self.stopping:
            self.log("stopped by a signal; exiting")
        self.ses.pause()
        self._status()
        return 0


def seeder_main(spec_path: str) -> int:
    log = (read_json(spec_path) or {}).get("log")
    if log:  # everything, tracebacks included, goes to the log (a service's output may be discarded)
        fd = os.open(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        seeder = _Seeder(spec_path)
    except TorrentError as exc:
        _Seeder.log(f"origin seeder cannot start: {exc.message}")
        return 1
    return serve(seeder)
