# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the BitTorrent engine process (libtorrent): one torrent, download then seed.

One detached engine process per torrent on a host downloads AND keeps seeding:
:func:`~._torrent_fetch.fetch` starts it and returns as soon as the file is complete (every
piece SHA-1 checked, written out); the same process goes on serving the pieces while the image
cache checks the sha512 and moves the file into place; :func:`~._torrent_jobs.start_seeding`
then tells it the file's new path and end time through its job file.  There is no gap in which
a finished hypervisor uploads nothing.

The process talks to its caller through files in the state directory (``<info hash>.job``,
written by the caller and reread when it changes; ``<info hash>.status``, written here).  It
runs from the engine's root-owned directory (``_torrent_launch``), so this file imports only
the standard library, libtorrent and the other engine files (``_torrent_jobs.ENGINE_FILES``).
This file also holds what the origin seeder (``_torrent_seeder``) shares with it: the
libtorrent settings of a farm swarm, the session, the JSON state files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta import TorrentError, load_torrent_params

DEFAULT_LISTEN_PORT = "6881-6999"


def libtorrent_module() -> Any:
    try:
        import libtorrent  # noqa: PLC0415 (optional dependency, checked at use)
    except ImportError as exc:
        raise TorrentError(
            message="the Python binding of libtorrent is required for BitTorrent images: install "
            "python3-libtorrent (Debian/Ubuntu), rb_libtorrent-python3 (EPEL) or 'pip install libtorrent' "
            "for the Python that runs the modules"
        ) from exc
    return libtorrent


def free_port(spec: str) -> int:
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


def make_session(lt: Any, settings: Dict[str, Any]) -> Any:
    """A libtorrent session with ``settings`` whose rate limits apply to every peer: libtorrent
    exempts "local" ones (private ranges, where a farm's hypervisors live) by default."""
    ses = lt.session(settings)
    every = lt.ip_filter()
    every.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(every)
    return ses


def write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Engine:
    """The engine process: one libtorrent session with one torrent (see the module docstring)."""

    def __init__(self, job_path: str) -> None:
        lt = libtorrent_module()
        self.lt = lt
        self.job_path = job_path
        self.base = job_path[: -len(".job")]
        job = read_json(job_path)
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
        self.ses = make_session(lt, settings)
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
        if job.get("torrent"):
            atp = load_torrent_params(lt, job["torrent"])
            self.web_seeds = list(atp.url_seeds) + list(job.get("web_seeds") or [])
            atp.url_seeds = []  # added later, only when no peer delivers (see _tick)
        else:
            atp = lt.parse_magnet_uri(job["magnet"])
            self.web_seeds = list(job.get("web_seeds") or [])
        atp.renamed_files = {0: job["name"]}
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
        write_json(
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
        job = read_json(self.job_path)
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


def engine_main(argv: List[str]) -> int:
    """The engine process of one torrent: ``argv`` is its job file (see :class:`_Engine`)."""
    if len(argv) != 1 or not argv[0].endswith(".job"):
        sys.stderr.write("usage: launch.py JOBFILE.job | --seeds SEEDS.json\n")
        return 2
    return serve(_Engine(argv[0]))


def serve(process: Any) -> int:
    """Run an engine or the origin seeder until it ends or SIGTERM/SIGINT asks it to stop."""

    def _stop(*_args: Any) -> None:
        process.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return int(process.run())
