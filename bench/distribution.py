"""Distribute one image to N emulated hypervisors: plain HTTP from one server vs BitTorrent.

Every hypervisor and the image server is its own network namespace on a bridge (addresses in
198.18.0.0/15, inside these namespaces only); every link, the server's included, is shaped
with tbf to the SAME rate in both directions.  For N = 1, 4, 8, 16:

- http: all N fetch the image at once with curl from the server (the server's uplink is the
  bottleneck, so the time grows about N x);
- bittorrent (with swarm shares, as the ``image_cache`` role gives them: hypervisor i of N is
  told i and N; ``--no-share``: without): the server runs opentracker, a Range-capable HTTP server (the BEP-19 web seed)
  and an origin seeder (``_torrent_jobs.start_seeding``); each hypervisor runs what the ``image``
  module runs with ``seed_for_seconds``: ``_torrent_fetch.fetch`` (the libtorrent engine, which keeps
  seeding once complete), a sha512 check (the image cache's), the move into place, then
  ``_torrent_jobs.start_seeding`` (points the same engine at the final path).  Time = until the last
  hypervisor holds a verified image.

BVT_TRACE=1 prints the server's upload once a second and, per hypervisor, the bytes it got from
each peer (198.18.0.1 is the server: origin seeder and web seed).

The floor is size / link rate (one link's worth of transfer).  The last line is JSON.

    .venv/bin/python bench/distribution.py [--rate-mbit 40] [--size-mib 128] [--counts 1,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "batchvirt", "farm")
if not os.path.lexists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)
sys.path[:0] = [ROOT, COLLECTIONS]

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs, _torrent_meta  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file  # noqa: E402
from tests.integration.torrent.netlab import NetLab  # noqa: E402

RANGESERVER = os.path.join(ROOT, "tests", "integration", "images", "_server.py")
SERVER = 1  # namespace index of the image server; hypervisors are 10, 11, ...

# What one hypervisor runs (the image module's BitTorrent path): fetch, check sha512, seed.
HYPERVISOR = os.path.join(ROOT, "tests", "integration", "torrent", "hypervisor.py")


def _wait_all(procs: List[subprocess.Popen], timeout: float, what: str) -> float:  # type: ignore[type-arg]
    start = time.monotonic()
    for proc in procs:
        left = timeout - (time.monotonic() - start)
        try:
            proc.wait(timeout=max(0.1, left))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{what}: not done after {timeout} s") from None
        if proc.returncode != 0:
            err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
            err += proc.stdout.read().decode()[-500:] if proc.stdout else ""
            raise RuntimeError(f"{what}: a hypervisor failed (rc {proc.returncode}): {err}")
    return time.monotonic() - start


def _trace(ns: str, procs: List[subprocess.Popen], status: str, base: int, size: int) -> None:  # type: ignore[type-arg]
    """BVT_TRACE: once a second, the server's upload (wire and the origin seeder's payload)."""
    started = time.monotonic()
    while any(p.poll() is None for p in procs):
        with open(status) as handle:
            seeder = json.load(handle)
        print(
            f"trace {time.monotonic() - started:5.1f}s server {(_tx_bytes(ns) - base) / size:5.2f} copies, "
            f"origin payload {seeder['uploaded'] / size:5.2f}, origin peers {seeder['peers']}",
            file=sys.stderr,
        )
        time.sleep(1)


def _tx_bytes(ns: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    counts = [int(n) for n in args.counts.split(",")]
    settings = {k: int(v) for k, v in (item.split("=", 1) for item in args.setting)}
    origin_settings = {k: int(v) for k, v in (item.split("=", 1) for item in args.origin_setting)}
    size = args.size_mib * 1024 * 1024
    floor = size * 8 / (args.rate_mbit * 1e6)
    args.run_timeout = args.run_timeout or 2 * max(counts) * floor + 60
    cleanups: List[Callable[[], None]] = []
    tmp = tempfile.mkdtemp(prefix="bvt-bench-dist-")
    os.chmod(tmp, 0o755)
    cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    result: Dict[str, Any] = {
        "bench": "distribution",
        "rate_mbit": args.rate_mbit,
        "size_bytes": size,
        "floor_seconds": round(floor, 2),
        "http_seconds": {},
        "bittorrent_seconds": {},
        "loadavg_start": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    try:
        lab = NetLab(cleanups.append, rate_mbit=args.rate_mbit)
        srv = lab.add(SERVER)
        hvs = [lab.add(10 + i) for i in range(max(counts))]
        srv_ip = lab.address(SERVER)
        srv_dir = os.path.join(tmp, "srv")
        os.makedirs(srv_dir)
        image = os.path.join(srv_dir, "image.raw")
        with open(image, "wb") as handle:
            for _mib in range(args.size_mib):
                handle.write(os.urandom(1024 * 1024))
        sha512 = hash_file(image)[1]
        http = subprocess.Popen(
            [*lab.prefix(srv), sys.executable, RANGESERVER, "--bind", srv_ip, "--port", "8080", "--dir", srv_dir],
            stdout=subprocess.PIPE,
        )
        assert http.stdout is not None
        http.stdout.readline()
        tracker_root = os.path.join(tmp, "tracker")
        os.makedirs(tracker_root, mode=0o755)
        web_seeds = [] if args.no_web_seed else [f"http://{srv_ip}:8080/image.raw"]
        meta = _torrent_meta.make_torrent(
            image, [f"http://{srv_ip}:6969/announce"], web_seeds, piece_length=args.piece_kib * 1024 or None
        )
        with open(os.path.join(tracker_root, "whitelist"), "w") as handle:
            handle.write(meta["info_hash"] + "\n")
        subprocess.Popen(
            [*lab.prefix(srv), "opentracker", "-i", srv_ip, "-p", "6969", "-P", "6969", "-w", "whitelist",
             "-d", tracker_root, "-u", "nobody"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        # The origin seeder on the server: start_seeding, run inside the server's namespace.
        seed_code = (
            f"import sys; sys.path[:0] = [{COLLECTIONS!r}]\n"
            "from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs\n"
            f"_torrent_jobs.start_seeding({meta['path']!r}, {image!r}, 3600, "
            f"state_dir={os.path.join(tmp, 'srv-state')!r}, super_seeding={args.origin_super_seeding!r}, "
            f"engine_settings={origin_settings!r})\n"
        )
        tracing = bool(os.environ.get("BVT_TRACE"))
        trace_dir = os.environ.get("BVT_TRACE_DIR") or os.path.join(ROOT, "build", "distribution-trace")
        # BVT_TRACE: the origin's and the first three hypervisors' engines write a diagnostics line
        # every 0.5 s (connections, torrent status, session counters), kept in trace_dir.
        # Every hypervisor's engine logs where each piece came from (BVT_TORRENT_PIECES).
        pieces_env = dict(os.environ, BVT_TORRENT_PIECES="1")
        traced_env = dict(pieces_env, BVT_TORRENT_TRACE="0.5")
        if tracing:
            shutil.rmtree(trace_dir, ignore_errors=True)
            os.makedirs(trace_dir)
        subprocess.run(
            [*lab.prefix(srv), sys.executable, "-c", seed_code], check=True, env=traced_env if tracing else None
        )
        for n in counts:
            # Plain HTTP: all N at once from the one server.
            procs = []
            n_http = 0 if args.skip_http else n
            for i, ns in enumerate(hvs[:n_http]):
                out = os.path.join(tmp, f"http-{i}.raw")
                procs.append(
                    subprocess.Popen(
                        [*lab.prefix(ns), "curl", "-sf", "-o", out, f"http://{srv_ip}:8080/image.raw"],
                        stderr=subprocess.PIPE,
                    )
                )
            seconds = _wait_all(procs, args.run_timeout, f"http n={n}") if procs else 0.0
            for i in range(n_http):
                if os.path.getsize(os.path.join(tmp, f"http-{i}.raw")) != size:
                    raise RuntimeError(f"http n={n}: hypervisor {i} got a short file")
                os.unlink(os.path.join(tmp, f"http-{i}.raw"))
            if n_http:
                result["http_seconds"][str(n)] = round(seconds, 2)
                print(f"http        n={n:2d}: {seconds:6.2f} s  ({seconds / floor:.2f} x floor)", file=sys.stderr)
            # BitTorrent: fresh hypervisors (no data, no seeders) each time.
            procs = []
            tx_before = _tx_bytes(srv)
            t_spawn = time.time()
            for i, ns in enumerate(hvs[:n]):
                hv = os.path.join(tmp, f"bt{n}-{i}")
                os.makedirs(hv)
                procs.append(
                    subprocess.Popen(
                        [*lab.prefix(ns), sys.executable, HYPERVISOR, meta["path"], os.path.join(hv, "image.raw"),
                         str(size), sha512, os.path.join(hv, "state"), str(args.run_timeout), "300",
                         json.dumps(settings)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        env=dict((traced_env if i < 3 else pieces_env) if tracing else os.environ,
                                 **({"BVT_SWARM_INDEX": str(i), "BVT_SWARM_SIZE": str(n)} if args.share else {})),
                    )
                )  # fmt: skip
            if tracing:
                status = os.path.join(tmp, "srv-state", meta["info_hash"] + ".status")
                threading.Thread(target=_trace, args=(srv, procs, status, tx_before, size), daemon=True).start()
            seconds = _wait_all(procs, args.run_timeout + 10, f"bittorrent n={n}")
            outs = [json.loads(p.stdout.read().decode().strip().splitlines()[-1]) for p in procs if p.stdout]
            each = sorted(out["seconds"] for out in outs)
            if os.environ.get("BVT_TRACE"):
                for key in ("t_main", "t_fetched", "t_verified"):
                    print(f"{key:10s} {sorted(round(out[key] - t_spawn, 2) for out in outs)}", file=sys.stderr)
            if os.environ.get("BVT_TRACE"):
                for out in outs:
                    print(f"sources {sorted(out['sources'].items())}", file=sys.stderr)
            result.setdefault("bittorrent_slowest_fetch_seconds", {})[str(n)] = round(each[-1], 2)
            print(f"bittorrent  n={n:2d}: each hypervisor {[round(x, 1) for x in each]}", file=sys.stderr)
            result["bittorrent_seconds"][str(n)] = round(seconds, 2)
            copies = (_tx_bytes(srv) - tx_before) / size
            result.setdefault("bittorrent_server_copies", {})[str(n)] = round(copies, 2)
            print(f"bittorrent  n={n:2d}: the server sent {copies:.2f} copies of the image", file=sys.stderr)
            print(f"bittorrent  n={n:2d}: {seconds:6.2f} s  ({seconds / floor:.2f} x floor)", file=sys.stderr)
            for i in range(n):  # stop this round's hypervisor seeders before the next round
                state = os.path.join(tmp, f"bt{n}-{i}", "state")
                for kind in ("trace", "pieces", "log") if tracing else ():
                    if os.path.exists(os.path.join(state, f"{meta['info_hash']}.{kind}")):
                        shutil.copy(
                            os.path.join(state, f"{meta['info_hash']}.{kind}"), f"{trace_dir}/n{n}-hv{i}.{kind}"
                        )
                for record in _torrent_jobs.seeding_status(state):
                    _torrent_jobs.stop_seeding(record["info_hash"], state)
                shutil.rmtree(os.path.join(tmp, f"bt{n}-{i}"), ignore_errors=True)
        if tracing:
            shutil.copy(os.path.join(tmp, "srv-state", meta["info_hash"] + ".trace"), f"{trace_dir}/origin.trace")
            print(f"engine traces in {trace_dir}", file=sys.stderr)
    finally:
        while cleanups:
            try:
                cleanups.pop()()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc!r}", file=sys.stderr)
    result["loadavg_end"] = round(os.getloadavg()[0], 1)
    for kind in ("http", "bittorrent"):
        for n, seconds in result[f"{kind}_seconds"].items():
            result[f"{kind}_ratio_vs_floor_n{n}"] = round(seconds / floor, 2)
    # Without the cost of starting N Python processes at once on this host: from each
    # hypervisor's fetch() call to its verified image (what one real hypervisor would see).
    for n, seconds in result.get("bittorrent_slowest_fetch_seconds", {}).items():
        result[f"bittorrent_fetch_ratio_vs_floor_n{n}"] = round(seconds / floor, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbit", type=float, default=40.0, help="every link's rate (both directions)")
    parser.add_argument(
        "--size-mib",
        type=int,
        default=128,
        help="image size; default: ~26.8 s on one 40 Mbit/s link (this host's fixed costs, 16 Python processes "
        "and 16 sha512 on 2 cores, are ~2.5 s: 0.09x of that floor, 0.37x of a 32 MiB image's)",
    )
    parser.add_argument("--counts", default="1,4,8,16", help="numbers of hypervisors")
    parser.add_argument("--piece-kib", type=int, default=0, help="piece length; default: make_torrent's choice")
    parser.add_argument("--no-web-seed", action="store_true", help="torrent without the server's URL")
    parser.add_argument(
        "--setting", action="append", default=[], help="extra libtorrent setting NAME=INT for the hypervisors"
    )
    parser.add_argument(
        "--origin-setting", action="append", default=[], help="extra libtorrent setting NAME=INT for the origin seeder"
    )
    parser.add_argument("--origin-super-seeding", action="store_true", help="BEP-16 super-seeding on the origin")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--no-share", dest="share", action="store_false", help="no swarm shares (the image_cache role gives them)"
    )
    parser.add_argument(
        "--run-timeout", type=float, default=0.0, help="seconds allowed per run; default: 2 x N x floor + 60"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/distribution.py needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too
    result = run(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
