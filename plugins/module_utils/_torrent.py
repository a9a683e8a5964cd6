"""Private to batchvirt.farm: BitTorrent transport for images (publish, fetch, seed).

Engine: libtorrent's Python binding (Debian ``python3-libtorrent``, EPEL
``rb_libtorrent-python3``, PyPI ``libtorrent``), run as ONE detached process per torrent and host
that downloads, checks every piece against the torrent's SHA-1 piece hashes, uses the image
server as a BEP-19 web seed when no peer delivers, and keeps seeding for a given time.  That
process is this very file run as a script (see :class:`_Engine`).  Torrent metadata is created
and read with the pure-Python ``torf`` library (PyPI), so no bencoding is written here.  The
tracker is any existing one (``opentracker`` from Debian).

Public functions:

- :func:`make_torrent` (publisher): create a ``.torrent`` for an image file, with trackers and
  the image's HTTP URL as web seed.
- :func:`fetch` (hypervisor): download the image a ``magnet:`` URI or a ``.torrent`` (path,
  ``file://`` or ``http(s)://`` URL) describes into a partial path; the caller (the image cache)
  verifies size and sha512 and moves it into place while the engine already serves the pieces.
- :func:`start_seeding` / :func:`stop_seeding` / :func:`seeding_status`: the engine process of a
  torrent, with a pidfile and a job file in a state directory, ended at its seeding end time; a
  later run finds it by its pidfile and updates its job (new path, new end) without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_STATE_DIR = "/var/lib/batchvirt/torrent"
DEFAULT_LISTEN_PORT = "6881-6999"


class TorrentError(Exception):
    """A BitTorrent operation failed; ``message`` names the source and what failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- dependencies -----------------------------------------------------------------------------


def _torf() -> Any:
    try:
        import torf  # noqa: PLC0415 (optional dependency, checked at use)
    except ImportError as exc:
        raise TorrentError(
            message="the Python library 'torf' is required for BitTorrent images: install it with "
            "'pip install torf' (it is listed in the collection's requirements.txt)"
        ) from exc
    return torf


# -- metadata ---------------------------------------------------------------------------------


def torrent_info(torrent: Any) -> Dict[str, Any]:
    """The facts about a torf ``Torrent`` that callers need."""
    meta = torrent.metainfo["info"]
    return {
        "info_hash": torrent.infohash,
        "name": torrent.name,
        "size": int(meta["length"]) if "length" in meta else int(torrent.size),
        "single_file": "length" in meta,
        "piece_length": int(torrent.piece_size),
        "pieces": int(torrent.pieces),
        "trackers": [url for tier in (torrent.trackers or []) for url in tier],
        "web_seeds": list(torrent.webseeds or []),
        "magnet": str(torrent.magnet()),
    }


def read_torrent(path: str) -> Dict[str, Any]:
    """Read a ``.torrent`` file; raise :class:`TorrentError` naming it when it is not one."""
    torf = _torf()
    try:
        torrent = torf.Torrent.read(path)
    except (torf.TorfError, OSError) as exc:
        raise TorrentError(message=f"{path} is not a readable .torrent file: {exc}") from exc
    return torrent_info(torrent)


def _read_torrent_lt(lt: Any, path: str) -> Dict[str, Any]:
    """:func:`read_torrent` with libtorrent, where it is loaded anyway (a hypervisor's fetch): the
    same facts without importing torf, which costs a hypervisor more CPU than the rest of its start."""
    import warnings  # noqa: PLC0415

    try:
        ti = lt.torrent_info(path)
    except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
        raise TorrentError(message=f"{path} is not a readable .torrent file: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # web_seeds(): deprecated in 2.x, works in 2.0 and 2.1
        seeds = [seed["url"] for seed in ti.web_seeds()]
    return {
        "info_hash": str(ti.info_hashes().v1),
        "name": ti.name(),
        "size": int(ti.total_size()),
        "single_file": ti.num_files() == 1,
        "piece_length": int(ti.piece_length()),
        "pieces": int(ti.num_pieces()),
        "trackers": [entry.url for entry in ti.trackers()],
        "web_seeds": seeds,
        "magnet": lt.make_magnet_uri(ti),
    }


def default_piece_length(size: int) -> int:
    """About 1,000–2,000 pieces: 64 KiB for images up to 128 MiB, up to 16 MiB for 20+ GiB ones.

    Enough pieces matter more than their size: a piece is traded only once a peer holds all of
    it, so the fewer the pieces, the longer the swarm waits at the start and in the endgame
    (see docs/performance/torrent.md: 128 pieces of 256 KiB for a 32 MiB image were slower)."""
    length = 64 * 1024
    while size // length > 2048 and length < 16 * 1024 * 1024:
        length *= 2
    return length


def make_torrent(
    path: str,
    tracker_urls: Sequence[str],
    web_seeds: Sequence[str],
    piece_length: Optional[int] = None,
    output: Optional[str] = None,
    comment: Optional[str] = None,
) -> Dict[str, Any]:
    """Create (or keep) the ``.torrent`` for the single image file ``path``.

    ``output`` defaults to ``path + ".torrent"``. The file is left alone (``changed`` false)
    when it already describes ``path`` with the same trackers, web seeds and piece length and
    is newer than the image, so a rerun does not hash 10 GB again.
    Returns :func:`torrent_info` plus ``path`` (of the .torrent) and ``changed``.
    """
    torf = _torf()
    if not os.path.isfile(path):
        raise TorrentError(message=f"cannot create a torrent for {path}: not a regular file")
    output = output or path + ".torrent"
    size = os.path.getsize(path)
    if size == 0:
        raise TorrentError(message=f"cannot create a torrent for {path}: the file is empty")
    piece_length = piece_length or default_piece_length(size)
    if piece_length < 16384 or piece_length & (piece_length - 1):
        raise TorrentError(message=f"piece_length {piece_length} must be a power of two of at least 16384")
    trackers = list(tracker_urls)
    seeds = list(web_seeds)
    if os.path.exists(output) and os.path.getmtime(output) >= os.path.getmtime(path):
        try:
            current = read_torrent(output)
        except TorrentError:
            current = None
        if (
            current is not None
            and current["name"] == os.path.basename(path)
            and current["size"] == size
            and current["piece_length"] == piece_length
            and current["trackers"] == trackers
            and current["web_seeds"] == seeds
        ):
            return dict(current, path=output, changed=False)
    torrent = torf.Torrent(
        path=path,
        trackers=trackers or None,
        webseeds=seeds or None,
        piece_size=piece_length,
        comment=comment,
        created_by="batchvirt.farm",
    )
    try:
        torrent.generate()
    except torf.TorfError as exc:
        raise TorrentError(message=f"hashing {path} for its torrent failed: {exc}") from exc
    tmp = output + ".tmp"
    torrent.write(tmp, overwrite=True)
    os.replace(tmp, output)
    return dict(torrent_info(torrent), path=output, changed=True)


# -- fetching ---------------------------------------------------------------------------------


def _is_magnet(source: str) -> bool:
    return source.startswith("magnet:")


def _obtain_torrent(source: str, work_dir: str, timeout: float) -> str:
    """A local path to the .torrent that ``source`` names (downloaded when it is a URL)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        from ansible.module_utils.urls import open_url  # noqa: PLC0415 (the engine runs without Ansible)

        target = os.path.join(work_dir, "source.torrent")
        try:
            with open_url(source, timeout=timeout) as resp, open(target, "wb") as out:
                data = resp.read(64 * 1024 * 1024 + 1)
                if len(data) > 64 * 1024 * 1024:
                    raise TorrentError(message=f"{source}: the .torrent is larger than 64 MiB; refusing it")
                out.write(data)
        except TorrentError:
            raise
        except Exception as exc:  # urllib raises many types; the message names the source
            raise TorrentError(message=f"downloading the torrent file {source} failed: {exc}") from exc
        return target
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme == "":
        return source
    raise TorrentError(
        message=f"{source}: unsupported BitTorrent source; use a magnet: URI, a .torrent path, "
        "or a file://, http:// or https:// URL of a .torrent"
    )


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("[#")]
    return " | ".join(kept[-lines:])


# -- the engine (libtorrent) ------------------------------------------------------------------
#
# One detached engine process per torrent on a host downloads AND keeps seeding: fetch() starts
# it and returns as soon as the file is complete (every piece SHA-1 checked, written out); the
# same process goes on serving the pieces while the image cache checks the sha512 and moves
# the file into place; start_seeding() then tells it the file's new path and end time through
# its job file.  There is no gap in which a finished hypervisor uploads nothing.
#
# The engine is THIS file run as a script (``python _torrent.py JOBFILE``): it needs only the
# standard library and libtorrent, so it is copied into the state directory, where it outlives
# the module's temporary AnsiballZ directory.

ENGINE_VERSION = "1"
ENGINE_MODULE = f"bvt_torrent_engine_{ENGINE_VERSION}"  # imported, not run as a script: its bytecode is cached


def _lt() -> Any:
    try:
        import libtorrent  # noqa: PLC0415 (optional dependency, checked at use)
    except ImportError as exc:
        raise TorrentError(
            message="the Python binding of libtorrent is required for BitTorrent images: install "
            "python3-libtorrent (Debian/Ubuntu), rb_libtorrent-python3 (EPEL) or 'pip install libtorrent' "
            "for the Python that runs the modules"
        ) from exc
    return libtorrent


def _free_port(spec: str) -> int:
    """The first port of ``spec`` (``"6881-6999"`` or ``"6881"``) nothing listens on."""
    low, _sep, high = str(spec).partition("-")
    first, last = int(low), int(high or low)
    for port in range(first, last + 1):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise TorrentError(message=f"listen_port {spec}: every port of the range is in use")


# The origin (a seeder started as such) announces itself in its peer id, so that hypervisors
# with a swarm share can tell it from the other peers (see _Engine._leave_origin).
ORIGIN_FINGERPRINT = "-BO0001-"
ORIGIN_PEER_ID = ORIGIN_FINGERPRINT[:3].encode()
ORIGIN_STALL = 1.0  # seconds without data before a hypervisor with its share takes the origin back
SEEDER_REQUEST_QUEUE = 16  # blocks of 16 KiB each peer may have outstanding at a seeder


def engine_settings(lt: Any, job: Dict[str, Any]) -> Dict[str, Any]:
    """libtorrent settings for a farm swarm: every peer is ours (no free-riders), so every
    interested peer is unchoked (by a seeder started as such, the origin: a few at a time, see
    below), requests are pipelined without tying blocks to slow sources, and peers connect fast.  TCP
    only (uTP's delay-based congestion control backs off on shaped links); no DHT, no local peer
    discovery, no UPnP/NAT-PMP: nothing leaves the farm."""
    alerts = lt.alert.category_t
    settings: Dict[str, Any] = {
        "listen_interfaces": f"0.0.0.0:{int(job['port'])}",
        "enable_dht": bool(job.get("dht")),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "choking_algorithm": 0,  # fixed_slots_choker ...
        "unchoke_slots_limit": -1,  # ... with unlimited slots: unchoke every interested peer
        "max_out_request_queue": int(job.get("request_queue", 1500)),
        "max_allowed_in_request_queue": 4000,
        # Requests are assigned to a peer for request_queue_time seconds of its CURRENT rate; a
        # source whose rate then drops (the origin, once every hypervisor has connected) holds
        # them for many seconds, and no other peer is asked for those blocks meanwhile: 1 s.
        "request_queue_time": int(job.get("request_queue_time", 1)),
        # A connection that would otherwise idle may ask for blocks already requested from a
        # slower peer (the first to arrive wins, the other request is cancelled): hypervisors'
        # links are not left unused while the origin still owes those blocks.
        "strict_end_game_mode": False,
        "tick_interval": 100,
        "connection_speed": 500,
        "torrent_connect_boost": 100,
        "peer_connect_timeout": 3,
        "min_reconnect_time": 1,
        "allow_multiple_connections_per_ip": True,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "urlseed_wait_retry": 5,
        "rate_limit_ip_overhead": False,
        "upload_rate_limit": int(job.get("max_upload_limit") or 0),
        "download_rate_limit": int(job.get("max_download_limit") or 0),
        "user_agent": "batchvirt.farm/libtorrent-" + str(getattr(lt, "__version__", "")),
        "alert_mask": alerts.error_notification | alerts.storage_notification | alerts.status_notification,
    }
    if job.get("seeder"):
        # A seeder started as such (the origin): every peer unchoked (hypervisors with swarm
        # shares each ask it for their own share, see _Engine._share), each with a short request
        # queue, so that a piece it sends is complete (and announced to the swarm) quickly; and
        # a peer id that tells the hypervisors it is the origin (see _Engine._leave_origin).
        settings["max_allowed_in_request_queue"] = SEEDER_REQUEST_QUEUE
        settings["peer_fingerprint"] = ORIGIN_FINGERPRINT
    settings.update(job.get("settings") or {})
    return settings


def _session(lt: Any, settings: Dict[str, Any]) -> Any:
    """A libtorrent session with ``settings`` whose rate limits apply to every peer: libtorrent
    exempts "local" ones (private ranges, where a farm's hypervisors live) by default."""
    ses = lt.session(settings)
    every = lt.ip_filter()
    every.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(every)
    return ses


def _write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Engine:
    """The engine process: one libtorrent session with one torrent (see the section comment)."""

    def __init__(self, job_path: str) -> None:
        lt = _lt()
        self.lt = lt
        self.job_path = job_path
        self.base = job_path[: -len(".job")]
        job = _read_json(job_path)
        if job is None:
            raise SystemExit(f"cannot read the job file {job_path}")
        self.job = job
        self.job_mtime = os.path.getmtime(job_path)
        self.stopping = False
        self.done = False
        self.flushing = False
        self.error = ""
        self.error_since = 0.0
        self.web_seeds: List[str] = []
        self.web_added = False
        self.sources: Dict[str, int] = {}
        self.started = time.time()
        self.last_progress = time.monotonic()
        self.last_bytes = 0
        self.last_announce = time.monotonic()
        self.reannounce_at = 0.0
        # A hypervisor with a swarm share stops asking the origin once its share is complete
        # (see _leave_origin); these are the origin's addresses it then refuses, until a stall.
        self.share: Optional[range] = None
        self.origin_left: Dict[str, int] = {}
        self.origin_back = False
        self.share_of = 0
        self.share_done_at = 0.0
        settings = engine_settings(lt, job)
        self.ses = _session(lt, settings)
        self.handle = self._add(job, bool(job.get("seed_mode")))
        # Diagnostics (bench/distribution.py with BVT_TRACE): every BVT_TORRENT_TRACE seconds, one
        # JSON line per tick in <info hash>.trace: torrent status, every connection, session
        # counters.  Off (nothing done) without the variable.
        self.trace_every = float(os.environ.get("BVT_TORRENT_TRACE") or 0)
        self.last_trace = 0.0
        self.counters: Dict[str, int] = {}
        # BVT_TORRENT_PIECES: per piece, when it was requested from which peer, how many blocks
        # each peer delivered, when it completed (<info hash>.pieces, written once complete).
        self.pieces: Optional[Dict[int, Dict[str, Any]]] = None
        if os.environ.get("BVT_TORRENT_PIECES"):
            self.pieces = {}
            cat = lt.alert.category_t
            mask = int(settings["alert_mask"]) | cat.block_progress_notification | cat.piece_progress_notification
            self.ses.apply_settings({"alert_mask": mask})

    def _add(self, job: Dict[str, Any], seed_mode: bool) -> Any:
        lt = self.lt
        atp = lt.add_torrent_params()
        if job.get("torrent"):
            ti = lt.torrent_info(job["torrent"])
            self.web_seeds = [s["url"] for s in ti.web_seeds()] + list(job.get("web_seeds") or [])
            ti.set_web_seeds([])  # added later, only when no peer delivers (see _tick)
            ti.rename_file(0, job["name"])
            atp.ti = ti
        else:
            atp = lt.parse_magnet_uri(job["magnet"])
            atp.renamed_files = {0: job["name"]}
            self.web_seeds = list(job.get("web_seeds") or [])
        atp.save_path = job["save_path"]
        atp.flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        if seed_mode:
            atp.flags |= lt.torrent_flags.seed_mode
        if job.get("super_seeding"):
            atp.flags |= lt.torrent_flags.super_seeding
        handle = self.ses.add_torrent(atp)
        if not seed_mode and job.get("torrent"):
            share = job.get("swarm_share")
            if share:
                self.share_of = int(share[1])
                self.share = self._share(handle, atp.ti.num_pieces(), int(share[0]), self.share_of)
            else:
                self._spread(handle, atp.ti.num_pieces(), 7)
        for url in job.get("trackers") or []:
            handle.add_tracker({"url": url, "tier": 0})
        self.web_added = False
        self.last_progress = time.monotonic()
        return handle

    @staticmethod
    def _share(handle: Any, pieces: int, index: int, size: int) -> range:
        """Hypervisor ``index`` of ``size`` that fetch together: the ``index``-th of ``size``
        equal runs of pieces (its share) first, at top priority, the rest by rarity.  It asks
        the origin for its share, which then leaves the origin about once, and the other
        hypervisors get those pieces from it (see also :meth:`_leave_origin`)."""
        first, last = index * pieces // size, (index + 1) * pieces // size
        handle.prioritize_pieces([7 if first <= p < last else 4 for p in range(pieces)])
        return range(first, last)

    @staticmethod
    def _spread(handle: Any, pieces: int, levels: int) -> None:
        """Start at a random piece and prefer the pieces after it (priorities ``levels``..1
        around the file).  Hypervisors starting together then ask the origin for DIFFERENT
        pieces, which they trade among themselves, instead of all fetching the same rarest
        pieces from it (each duplicate the origin sends delays the whole swarm)."""
        import random  # noqa: PLC0415

        start = random.randrange(pieces)
        handle.prioritize_pieces([levels - ((p - start) % pieces) * levels // pieces for p in range(pieces)])

    def _status(self, state: str) -> None:
        st = self.handle.status()
        if not self.done:  # where the payload came from (peer address -> bytes), for the logs
            for peer in self.handle.get_peer_info():
                self.sources[peer.ip[0]] = max(self.sources.get(peer.ip[0], 0), int(peer.total_download))
        _write_json(
            self.base + ".status",
            {
                "pid": os.getpid(),
                "state": state,
                "done": self.done,
                "error": self.error,
                "progress": round(float(st.progress), 4),
                "downloaded": int(st.total_payload_download),
                "uploaded": int(st.total_payload_upload),
                "failed_bytes": int(st.total_failed_bytes),
                "peers": int(st.num_peers),
                "web_seeds": self.web_added,
                "save_path": self.job["save_path"],
                "name": self.job["name"],
                "until": self.job.get("until"),
                "time": round(time.time(), 3),
                "sources": self.sources,
            },
        )

    def _reload_job(self) -> None:
        try:
            mtime = os.path.getmtime(self.job_path)
        except OSError:
            self.stopping = True  # the job was withdrawn
            return
        if mtime == self.job_mtime:
            return
        job = _read_json(self.job_path)
        if job is None:
            return
        self.job_mtime = mtime
        moved = (job["save_path"], job["name"]) != (self.job["save_path"], self.job["name"])
        self.job = job
        if moved:
            # The image cache moved the verified file into place: serve it from there.
            self.ses.remove_torrent(self.handle)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                alert = self.ses.wait_for_alert(200)
                if alert is not None and any(
                    isinstance(a, self.lt.torrent_removed_alert) for a in self.ses.pop_alerts()
                ):
                    break
            self.error = ""
            self.handle = self._add(job, seed_mode=True)
            self.handle.force_reannounce()
            # The removed torrent's "stopped" announce may reach the tracker after this one and
            # drop this seeder from its list: announce once more when that one has surely landed.
            self.reannounce_at = time.monotonic() + 2

    def _alerts(self) -> None:
        lt = self.lt
        for alert in self.ses.pop_alerts():
            if isinstance(alert, lt.file_error_alert):
                self.error = f"{alert.filename}: {alert.message()}"
                self.error_since = time.monotonic()
            elif isinstance(alert, lt.torrent_error_alert):
                self.error = alert.message()
                self.error_since = time.monotonic()
            elif isinstance(alert, lt.cache_flushed_alert) and self.flushing:
                self.flushing = False
                self.done = True
            elif self.pieces is not None and isinstance(
                alert, (lt.block_downloading_alert, lt.block_finished_alert, lt.piece_finished_alert)
            ):
                self._piece_event(alert)
            elif self.trace_every and isinstance(alert, lt.session_stats_alert):
                self.counters = {k: int(v) for k, v in alert.values.items() if k.startswith(_TRACE_COUNTERS) and v}
            elif isinstance(alert, lt.metadata_received_alert) and not self.job.get("torrent"):
                ti = self.handle.torrent_file()
                data = lt.bencode(lt.create_torrent(ti).generate())
                with open(self.base + ".torrent.tmp", "wb") as handle:
                    handle.write(data)
                os.replace(self.base + ".torrent.tmp", self.base + ".torrent")

    def _piece_event(self, alert: Any) -> None:
        if self.pieces is None:
            return
        entry = self.pieces.setdefault(int(alert.piece_index), {"req": {}, "got": {}, "done": 0.0})
        now = round(time.time(), 3)
        if isinstance(alert, self.lt.piece_finished_alert):
            entry["done"] = entry["done"] or now
            return
        ip = str(alert.ip[0])
        if isinstance(alert, self.lt.block_downloading_alert):
            entry["req"].setdefault(ip, now)
        else:
            entry["got"][ip] = entry["got"].get(ip, 0) + 1

    def _trace(self) -> None:
        """One diagnostics line (see ``trace_every``)."""
        lt = self.lt
        st = self.handle.status()
        peers = []
        for p in self.handle.get_peer_info():
            flags = int(p.flags)
            peers.append(
                {
                    "ip": p.ip[0],
                    "out": bool(flags & lt.peer_info.outgoing_connection),
                    "flags": "".join(
                        c
                        for c, bit in (
                            ("C", lt.peer_info.choked),  # we choke it
                            ("R", lt.peer_info.remote_choked),  # it chokes us
                            ("I", lt.peer_info.interesting),  # we want its pieces
                            ("W", lt.peer_info.remote_interested),  # it wants ours
                            ("S", lt.peer_info.snubbed),
                            ("E", lt.peer_info.endgame_mode),
                            ("U", lt.peer_info.upload_only),
                            ("O", lt.peer_info.seed),
                        )
                        if flags & bit
                    ),
                    "src": int(p.source),
                    "up": int(p.payload_up_speed),
                    "down": int(p.payload_down_speed),
                    "tot_up": int(p.total_upload),
                    "tot_down": int(p.total_download),
                    "dq": int(p.download_queue_length),
                    "tdq": int(getattr(p, "target_dl_queue_length", 0)),
                    "uq": int(p.upload_queue_length),
                    "timeouts": int(p.request_timeout),
                    "pieces": int(p.num_pieces),
                    "sendbuf": int(p.used_send_buffer),
                    "queue_bytes": int(p.queue_bytes),
                    "disk": int(p.pending_disk_bytes),
                    "rs": int(p.read_state),
                    "ws": int(p.write_state),
                    "rtt": int(p.rtt),
                }
            )
        line = {
            "t": round(time.time(), 3),
            "pieces": int(st.num_pieces),
            "progress": round(float(st.progress), 4),
            "redundant": int(st.total_redundant_bytes),
            "failed": int(st.total_failed_bytes),
            "down": int(st.total_payload_download),
            "up": int(st.total_payload_upload),
            "peers": int(st.num_peers),
            "copies": round(float(st.distributed_copies), 3),
            "conn": peers,
            "counters": self.counters,
        }
        with open(self.base + ".trace", "a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        self.ses.post_session_stats()

    def _leave_origin(self, st: Any, now: float) -> None:
        """With a swarm share: once this hypervisor holds its share, it refuses the origin
        (whose upload the hypervisors still fetching their shares need) and gets the rest from
        the other hypervisors; after ORIGIN_STALL seconds without data from anyone (a share
        whose hypervisor is missing or slow), it takes the origin back."""
        if self.share is None or self.origin_back or st.is_seeding:
            return
        if self.origin_left:
            if now - self.last_progress >= ORIGIN_STALL:
                self._origin_back()
            return
        have = st.pieces
        if have and all(have[p] for p in self.share):
            self.share_done_at = self.share_done_at or now
            peers = self.handle.get_peer_info()
            origin = {p.ip[0]: p.ip[1] for p in peers if p.pid.to_bytes().startswith(ORIGIN_PEER_ID)}
            # While other hypervisors of the swarm have not joined yet, the origin has upload to
            # spare: go on taking pieces of their shares (they get them from here when they join).
            if origin and (len(peers) - len(origin) >= self.share_of - 1 or now - self.share_done_at >= 3):
                self._refuse(origin)
                self.origin_left = origin

    def _origin_back(self) -> None:
        self.origin_back = True
        self._refuse({})
        for ip, port in self.origin_left.items():
            self.handle.connect_peer((ip, port))

    def _refuse(self, addresses: Dict[str, int]) -> None:
        refused = self.lt.ip_filter()
        for ip in addresses:
            refused.add_rule(ip, ip, 1)  # blocked: the connection is closed, its requests go elsewhere
        self.ses.set_ip_filter(refused)

    def _tick(self) -> str:
        st = self.handle.status()
        now = time.monotonic()
        if int(st.total_payload_download) > self.last_bytes:
            self.last_bytes = int(st.total_payload_download)
            self.last_progress = now
        self._leave_origin(st, now)
        if st.is_seeding and not self.done and not self.flushing:
            if self.pieces is not None:
                with open(self.base + ".pieces", "w") as handle:
                    json.dump({"t_start": self.started, "pieces": self.pieces}, handle)
            self.flushing = True  # done once the pieces are written out (cache_flushed_alert)
            self.handle.flush_cache()
        if not st.is_seeding and not self.web_added and self.web_seeds:
            delay = float(self.job.get("web_seed_delay", 3))
            idle = now - self.last_progress
            checking = st.state in (st.checking_files, st.checking_resume_data)
            # No peer at all for `delay` s (a lone hypervisor, a swarm that has gone), or peers
            # that deliver nothing for 5 x `delay` s: ask the image server.  Not sooner: every
            # byte the web seed sends is a byte the origin's uplink does not send to the swarm.
            if not checking and ((int(st.num_peers) == 0 and idle >= delay) or idle >= 5 * delay):
                for url in self.web_seeds:
                    self.handle.add_url_seed(url)
                self.web_added = True
        if self.reannounce_at and now >= self.reannounce_at:
            self.reannounce_at = 0.0
            self.handle.force_reannounce()
            self.last_announce = now
        elif not st.is_seeding and int(st.num_peers) == 0 and now - self.last_announce >= 5:
            # A downloader without peers asks the tracker again every 5 s (a farm swarm: peers
            # that joined or re-announced since are found without waiting a tracker interval).
            self.handle.force_reannounce()
            self.last_announce = now
        if self.done and not self.error and not os.path.exists(os.path.join(self.job["save_path"], self.job["name"])):
            self.error = f"{self.job['save_path']}/{self.job['name']} vanished"  # expired or refused
            self.error_since = now
        if st.state in (st.checking_files, st.checking_resume_data):
            return "checking"
        return "seeding" if self.done else "downloading"

    def run(self) -> int:
        last_status = 0.0
        while not self.stopping:
            self.ses.wait_for_alert(100)
            self._alerts()
            self._reload_job()
            if self.stopping:
                break
            state = self._tick()
            if self.error:
                state = "error"
                # A seeder whose file vanished (expired, refused by the cache) ends unless the
                # job names a new path soon.
                if self.done and time.monotonic() - self.error_since > 30:
                    break
                if not self.done:
                    self._status(state)
                    return 1
            until = self.job.get("until")
            if self.done and until is not None and time.time() >= float(until):
                break
            if self.trace_every and time.monotonic() - self.last_trace >= self.trace_every:
                self.last_trace = time.monotonic()
                self._trace()
            if time.monotonic() - last_status >= 0.2 or self.done:
                self._status(state)
                last_status = time.monotonic()
        self._status("stopped")
        return 0


_TRACE_COUNTERS = (
    "disk.queued",
    "disk.disk_blocks_in_use",
    "peer.num_peers_up",
    "peer.num_peers_down",
    "ses.waste_",
    "net.has_incoming",
    "peer.connect",
    "peer.incoming",
    "net.sent",
    "net.recv",
    "peer.num_peers_connected",
    "peer.num_peers_half_open",
    "peer.perm_peers",
    "picker.",
)


def _engine_main(argv: List[str]) -> int:
    import warnings  # noqa: PLC0415

    # libtorrent 2.x flags torrent_info's in-place edits as deprecated; they work in 2.0 and 2.1.
    warnings.simplefilter("ignore", DeprecationWarning)
    if len(argv) == 2 and argv[0] == "--seeds":
        return _seeder_main(argv[1])  # the multi-torrent origin seeder (see the section at the end)
    if len(argv) != 1 or not argv[0].endswith(".job"):
        sys.stderr.write("usage: _torrent.py JOBFILE.job\n")
        return 2
    return _serve(_Engine(argv[0]))


def _serve(process: Any) -> int:
    """Run an engine or the origin seeder until it ends or SIGTERM/SIGINT asks it to stop."""

    def _stop(*_args: Any) -> None:
        process.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return int(process.run())


# -- fetching and seeding (the caller's side) -------------------------------------------------


def _state_paths(state_dir: str, info_hash: str) -> Dict[str, str]:
    base = os.path.join(state_dir, info_hash)
    return {
        "pid": base + ".pid",
        "state": base + ".json",
        "log": base + ".log",
        "torrent": base + ".torrent",
        "job": base + ".job",
        "status": base + ".status",
    }


def _own_source() -> str:
    loader = globals().get("__loader__")
    if loader is not None and hasattr(loader, "get_source"):
        try:
            source = loader.get_source(__name__)
        except Exception:  # noqa: BLE001 (any loader failure: fall back to the file)
            source = None
        if source:
            return str(source)
    with open(__file__) as handle:
        return handle.read()


def _engine_script(state_dir: str) -> str:
    """This file, copied into ``state_dir`` so that the engine outlives the module's temp dir."""
    path = os.path.join(state_dir, f"{ENGINE_MODULE}.py")
    source = _own_source()
    try:
        with open(path) as handle:
            if handle.read() == source:
                return path
    except OSError:
        pass
    with open(path + ".tmp", "w") as handle:
        handle.write(source)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
    return path


def _pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``marker`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    # An empty command line: the process is between fork and exec (just launched), not gone.
    return state != b"Z" and (marker in cmdline or not cmdline)


def _running_pid(paths: Dict[str, str], info_hash: str) -> int:
    try:
        with open(paths["pid"]) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and _pid_alive(pid, info_hash) else 0


def _job(info_hash: str, data_path: str, until: Optional[float], opts: Dict[str, Any]) -> Dict[str, Any]:
    save_path, name = os.path.split(os.path.abspath(data_path))
    return {
        "info_hash": info_hash,
        "save_path": save_path,
        "name": name,
        "until": until,
        "port": _free_port(str(opts.get("listen_port") or DEFAULT_LISTEN_PORT)),
        "trackers": list(opts.get("trackers") or []),
        "web_seeds": list(opts.get("web_seeds") or []),
        "web_seed_delay": float(opts.get("web_seed_delay", 3)),
        "dht": bool(opts.get("dht")),
        "super_seeding": bool(opts.get("super_seeding")),
        "max_upload_limit": int(opts.get("max_upload_limit") or 0),
        "max_download_limit": int(opts.get("max_download_limit") or 0),
        "settings": dict(opts.get("engine_settings") or {}),
        "swarm_share": _swarm_share(opts.get("swarm_index"), opts.get("swarm_size")),
    }


def _swarm_share(index: Any, size: Any) -> Optional[List[int]]:
    """``[index, size]`` when this host is one of ``size`` (at least 2) fetching together."""
    if index is None or size is None:
        return None
    try:
        index, size = int(index), int(size)
    except (TypeError, ValueError):
        raise TorrentError(message=f"swarm_index {index!r} and swarm_size {size!r} must be integers") from None
    if not 0 <= index < size:
        raise TorrentError(message=f"swarm_index {index} must be at least 0 and less than swarm_size {size}")
    return [index, size] if size >= 2 else None


def _launch(state_dir: str, info_hash: str, job: Dict[str, Any]) -> int:
    """Start the engine for ``job`` detached (its own session, re-parented to init); its pid."""
    paths = _state_paths(state_dir, info_hash)
    script = _engine_script(state_dir)
    for key in ("status", "pid"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])
    _write_json(paths["job"], job)
    # A shell starts the engine in the background and exits: the engine is re-parented to init
    # (no zombie in the caller), in its own session (no signal from the caller's terminal/job).
    launcher = 'exec 0</dev/null 1>>"$LOG" 2>&1; "$@" & echo $! >"$PIDFILE"'
    env = dict(os.environ, PIDFILE=paths["pid"], LOG=paths["log"])
    boot = (
        f"import sys; sys.path.insert(0, {os.path.dirname(script)!r}); from {ENGINE_MODULE} import _engine_main; "
        "raise SystemExit(_engine_main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", boot, paths["job"]]
    subprocess.run(["/bin/sh", "-c", launcher, "sh"] + cmd, env=env, start_new_session=True, check=True)
    with open(paths["pid"]) as handle:
        return int(handle.read().strip())


def _record(
    info: Dict[str, Any], paths: Dict[str, str], pid: int, data_path: str, until: Optional[float]
) -> Dict[str, Any]:
    record = {
        "info_hash": info["info_hash"],
        "name": info["name"],
        "pid": pid,
        "data_path": os.path.abspath(data_path),
        "torrent": paths["torrent"],
        "started": round(time.time(), 3),
        "until": round(until, 3) if until else None,
        "log": paths["log"],
    }
    _write_json(paths["state"], record)
    return record


def _engine_said(paths: Dict[str, str]) -> str:
    status = _read_json(paths["status"]) or {}
    parts = []
    if status.get("error"):
        parts.append(str(status["error"]))
    if status:
        parts.append(
            f"{status.get('state')}, {100 * float(status.get('progress') or 0):.0f}% verified, "
            f"{status.get('peers', 0)} peers, web seeds {'in use' if status.get('web_seeds') else 'not used'}"
        )
        if status.get("failed_bytes"):
            parts.append(f"{status['failed_bytes']} bytes failed the piece hash check and were discarded")
    tail = _tail(paths["log"])
    if tail:
        parts.append(tail)
    return "; ".join(parts) or "nothing"


def fetch(
    source: str,
    dest_partial_path: str,
    size: Optional[int],
    sha512: Optional[str],
    timeout: float,
    **opts: Any,
) -> Dict[str, Any]:
    """Download the single-file torrent ``source`` into ``dest_partial_path``.

    A detached engine process (libtorrent) downloads, checks every piece against the torrent's
    SHA-1 piece hashes as it arrives (pieces from a peer with bad data are discarded and fetched
    again), and returns here as soon as the file is complete and written out.  With
    ``seed_for_seconds`` the same process goes on seeding (no gap while the caller verifies and
    moves the file; :func:`start_seeding` then points it at the final path), otherwise it ends.
    A partial file from an interrupted run is re-checked and resumed.  ``size`` is compared with
    the torrent before anything is downloaded.  ``sha512`` is NOT computed here: the image cache
    verifies it before the image becomes ready.

    Options (``opts``): ``state_dir`` (engine state and kept .torrent files; default
    ``/var/lib/batchvirt/torrent``), ``listen_port`` (``"6881-6999"``: the first free port),
    ``trackers`` and ``web_seeds`` (extra, added to the torrent's), ``web_seed_delay`` (seconds
    without data from any peer before the web seeds are used; 3), ``seed_for_seconds``,
    ``max_upload_limit`` / ``max_download_limit`` (bytes/s), ``dht`` (false),
    ``engine_settings`` (extra libtorrent settings), ``swarm_index`` and ``swarm_size`` (this
    host's share among the hosts fetching together: see :meth:`_Engine._share`).

    Raises :class:`TorrentError` naming ``source`` on a timeout or any failure.
    """
    del sha512  # verified by the caller (see above)
    lt = _lt()
    state_dir = opts.get("state_dir") or DEFAULT_STATE_DIR
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    dest_partial_path = os.path.abspath(dest_partial_path)
    os.makedirs(os.path.dirname(dest_partial_path), exist_ok=True)
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="bvt-torrent-", dir=state_dir)
    try:
        info: Optional[Dict[str, Any]] = None
        if _is_magnet(source):
            try:
                info_hash = str(lt.parse_magnet_uri(source).info_hashes.v1)
            except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
                raise TorrentError(message=f"{source}: not a valid magnet URI: {exc}") from None
        else:
            target = _obtain_torrent(source, work, timeout)
            info = _read_torrent_lt(lt, target)
            info_hash = info["info_hash"]
            if not info["single_file"]:
                raise TorrentError(message=f"{source}: the torrent holds several files; an image torrent must hold one")
            if size is not None and info["size"] != int(size):
                raise TorrentError(
                    message=f"{source}: the torrent describes {info['size']} bytes but the image list says "
                    f"{size}; the torrent is not for this image version"
                )
        paths = _state_paths(state_dir, info_hash)
        stop_seeding(info_hash, state_dir)  # an engine of an earlier run for this torrent
        if info is not None:
            shutil.copyfile(target, paths["torrent"] + ".tmp")
            os.replace(paths["torrent"] + ".tmp", paths["torrent"])
        seed_for = float(opts.get("seed_for_seconds") or 0)
        # Seeding continues until start_seeding() sets the real end; without it, until the
        # download's deadline plus the seeding time (a bound, should the caller die).
        until = time.time() + timeout + seed_for if seed_for > 0 else 0.0
        job = _job(info_hash, dest_partial_path, until, opts)
        job.update(torrent=paths["torrent"] if info is not None else "", magnet="" if info else source)
        pid = _launch(state_dir, info_hash, job)
        deadline = started + timeout
        while True:
            status = _read_json(paths["status"]) or {}
            if status.get("done"):
                break
            if status.get("state") == "error":
                stop_seeding(info_hash, state_dir)
                raise TorrentError(message=f"fetching {source} into {dest_partial_path} failed: {_engine_said(paths)}")
            if not _pid_alive(pid, info_hash):
                time.sleep(0.2)  # a status written just before it ended normally
                status = _read_json(paths["status"]) or {}
                if status.get("done"):
                    break
                raise TorrentError(
                    message=f"fetching {source} into {dest_partial_path} failed: the BitTorrent engine "
                    f"exited: {_engine_said(paths)}"
                )
            if time.monotonic() > deadline:
                said = _engine_said(paths)
                stop_seeding(info_hash, state_dir)
                kept = os.path.exists(dest_partial_path)
                raise TorrentError(
                    message=f"timed out after {timeout:g} s fetching {source} into {dest_partial_path} "
                    f"({'partial data kept for a resume' if kept else 'nothing downloaded'}); no peer or web "
                    f"seed delivered verified pieces in time. Engine said: {said}"
                )
            time.sleep(0.05)
        if info is None:  # a magnet: the engine saved the metadata as <info hash>.torrent
            info = _read_torrent_lt(lt, paths["torrent"])
        actual = os.path.getsize(dest_partial_path) if os.path.exists(dest_partial_path) else -1
        if actual != info["size"]:
            stop_seeding(info_hash, state_dir)
            raise TorrentError(
                message=f"fetching {source}: the engine finished but {dest_partial_path} holds {actual} of "
                f"{info['size']} bytes; the download is incomplete"
            )
        if seed_for > 0:
            _record(info, paths, pid, dest_partial_path, until)
        else:
            _forget(paths)
        return dict(
            info,
            source=source,
            path=dest_partial_path,
            torrent=paths["torrent"],
            engine="libtorrent",
            verified="piece-sha1",
            downloaded=int(status.get("downloaded") or 0),
            sources=dict(status.get("sources") or {}),
            seeding=seed_for > 0,
            elapsed=round(time.monotonic() - started, 3),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _forget(paths: Dict[str, str]) -> None:
    for key in ("pid", "state", "job", "status"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])


def seeding_status(state_dir: str = DEFAULT_STATE_DIR) -> List[Dict[str, Any]]:
    """Every seeder recorded in ``state_dir``, with ``running`` from its pidfile."""
    result: List[Dict[str, Any]] = []
    if not os.path.isdir(state_dir):
        return result
    for name in sorted(os.listdir(state_dir)):
        if not name.endswith(".json"):
            continue
        record = _read_json(os.path.join(state_dir, name))
        if record is None or "info_hash" not in record:
            continue
        record["running"] = _pid_alive(int(record.get("pid", 0)), record["info_hash"])
        result.append(record)
    return result


def stop_seeding(info_hash: str, state_dir: str = DEFAULT_STATE_DIR, wait: float = 10.0) -> bool:
    """Stop the engine of ``info_hash`` (seeding or downloading); True when one was running."""
    paths = _state_paths(state_dir, info_hash)
    pid = _running_pid(paths, info_hash)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while _pid_alive(pid, info_hash) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid, info_hash):
            os.kill(pid, signal.SIGKILL)
    _forget(paths)
    return bool(pid)


def start_seeding(
    torrent: str,
    data_path: str,
    seed_for_seconds: float,
    state_dir: str = DEFAULT_STATE_DIR,
    listen_port: str = DEFAULT_LISTEN_PORT,
    verify: bool = False,
    **opts: Any,
) -> Dict[str, Any]:
    """Seed ``data_path`` (described by the .torrent ``torrent``) for ``seed_for_seconds`` from now,
    in a detached engine process that outlives the caller (its own session, parent init).

    When the engine of a :func:`fetch` with ``seed_for_seconds`` still runs, it is told the
    file's new path and end time (no restart, no gap in seeding).  Idempotent: when an engine
    already seeds the same file until at least the requested end (within a minute), it is kept
    (``changed`` false).  ``verify`` re-checks every piece before seeding (reads the whole image
    once); off by default because the image cache has just verified the file's sha512.
    """
    _lt()
    info = read_torrent(torrent)
    if not os.path.isfile(data_path) or os.path.getsize(data_path) != info["size"]:
        raise TorrentError(message=f"cannot seed {torrent}: {data_path} is missing or is not {info['size']} bytes")
    if seed_for_seconds <= 0:
        raise TorrentError(message=f"seed_for_seconds must be positive, got {seed_for_seconds}")
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    ih = info["info_hash"]
    paths = _state_paths(state_dir, ih)
    until = time.time() + seed_for_seconds
    data_path = os.path.abspath(data_path)
    pid = _running_pid(paths, ih)
    job = _read_json(paths["job"]) if pid else None
    if pid and job is not None:
        record = _read_json(paths["state"]) or {}
        same = os.path.join(job["save_path"], job["name"]) == data_path
        if same and record.get("until") and float(record["until"]) >= until - 60:
            return dict(record, running=True, changed=False)
        save_path, name = os.path.split(data_path)
        job.update(save_path=save_path, name=name, until=until, seed_mode=True)
        _write_json(paths["job"], job)  # the engine rereads it: relocates and/or extends
        return dict(_record(info, paths, pid, data_path, until), running=True, changed=True)
    stop_seeding(ih, state_dir)
    if os.path.abspath(torrent) != paths["torrent"]:
        shutil.copyfile(torrent, paths["torrent"] + ".tmp")
        os.replace(paths["torrent"] + ".tmp", paths["torrent"])
    job = _job(ih, data_path, until, dict(opts, listen_port=listen_port))
    job.update(torrent=paths["torrent"], magnet="", seed_mode=not verify, seeder=True)
    pid = _launch(state_dir, ih, job)
    record = _record(info, paths, pid, data_path, until)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(paths["status"]) and _pid_alive(pid, ih):
        time.sleep(0.05)
    if not _pid_alive(pid, ih):
        raise TorrentError(message=f"the seeder for {torrent} exited at once: {_engine_said(paths)}")
    return dict(record, running=True, changed=True)


# == the multi-torrent origin seeder ==========================================================
#
# The image server's seeder (the ``image_seeder`` role's service): ONE libtorrent session, set
# up as the origin (``engine_settings`` with ``seeder``: peer id ORIGIN_FINGERPRINT, every peer
# unchoked, SEEDER_REQUEST_QUEUE), seeding every torrent of a JSON seeds file:
#
#     {"torrents": [{"torrent": PATH, "data": PATH}, ...], "until": EPOCH or null,
#      "seed_time": SECONDS (0/null: no limit; counted from the start), "verify": BOOL,
#      "listen_port": "6881-6999", "max_upload_limit": BYTES_PER_S (0: unlimited),
#      "tracker_interval": SECONDS (0: the tracker's), "log": PATH, "status": PATH,
#      "engine_settings": {extra libtorrent settings}}
#
# Run as ``python -c "...from bvt_torrent_engine_1 import _engine_main..." --seeds FILE.json``
# (see _engine_main).  Each torrent is added in seed mode (no re-hash) unless ``verify`` (then
# libtorrent re-checks every piece first), and in upload mode: the origin never downloads or
# writes.  A torrent whose data is missing, changes, or fails its check is dropped with one log
# line; the others go on.  Ends at ``until`` / after ``seed_time`` (exit 0), on SIGTERM (exit
# 0), or when nothing is left to seed (exit 1, so that the service manager reports it).

SEEDER_CHECK_EVERY = 2.0  # seconds between checks that every data file is still the same


class _Seeder:
    """One libtorrent session seeding many torrents as the origin (see the section comment)."""

    def __init__(self, spec_path: str) -> None:
        spec = _read_json(spec_path)
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
        self.lt = _lt()
        self.port = _free_port(str(spec.get("listen_port") or DEFAULT_LISTEN_PORT))
        job = {
            "seeder": True,
            "port": self.port,
            "max_upload_limit": int(spec.get("max_upload_limit") or 0),
            "settings": dict(spec.get("engine_settings") or {}),
        }
        settings = engine_settings(self.lt, job)
        self.peer_id = str(settings.get("peer_fingerprint") or "")
        self.ses = _session(self.lt, settings)
        self.entries: List[Dict[str, Any]] = []
        self.last_check = time.monotonic()
        self.last_announce = time.monotonic()
        verify = bool(spec.get("verify"))
        torrents = spec.get("torrents")
        if not isinstance(torrents, list):
            raise SystemExit(f"{spec_path}: 'torrents' must be a list of {{torrent, data}} objects")
        self.log(
            f"origin seeder starting: {len(torrents)} torrent(s), port {self.port}, peer id {self.peer_id}, "
            f"{'until ' + time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.until)) if self.until else 'no end'}"
        )
        for item in torrents:
            self.entries.append(self._add(item if isinstance(item, dict) else {}, verify))

    @staticmethod
    def log(message: str) -> None:
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")
        sys.stderr.flush()

    def _add(self, item: Dict[str, Any], verify: bool) -> Dict[str, Any]:
        lt = self.lt
        torrent, data = str(item.get("torrent") or ""), os.path.abspath(str(item.get("data") or ""))
        entry: Dict[str, Any] = {"torrent": torrent, "data": data, "info_hash": "", "handle": None, "error": ""}
        try:
            ti = lt.torrent_info(torrent)
        except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
            return self._drop(entry, f"{torrent} is not a readable .torrent file: {exc}")
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
        ti.rename_file(0, os.path.basename(data))
        atp = lt.add_torrent_params()
        atp.ti = ti
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
        _write_json(
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


def _seeder_main(spec_path: str) -> int:
    log = (_read_json(spec_path) or {}).get("log")
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
    return _serve(seeder)


# == end of the multi-torrent origin seeder ===================================================


if __name__ == "__main__":
    raise SystemExit(_engine_main(sys.argv[1:]))
