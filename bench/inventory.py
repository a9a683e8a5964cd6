"""Benchmark of the batchvirt.farm.slots inventory plugin on a 10,000-VM farm.

Farm: N hypervisors x M slots, each hypervisor a libvirt test-driver file whose domains carry
real slot metadata (``_slot_metadata.to_xml``). Measured in one run, interleaved:

- plugin: ``ansible-inventory -i bench.farm.slots.yml --list`` (full refresh, no cache);
- cached: the same with ``cache: true`` (jsonfile) after a warm-up refresh;
- static: ``ansible-inventory -i static.yml --list`` on a YAML inventory with the identical
  hosts, variables and groups (checked equal before timing);
- floor: a plain Python script making only the libvirt calls (open, getAllDomainStats,
  metadata per domain, close) with the same concurrency;
- community.libvirt's ``libvirt`` inventory plugin, one source per URI, from a separate venv
  (``--community-venv``; skipped when missing);
- latency: a few real libvirtd daemons in network namespaces reached over TCP with added
  latency (tc netem), serving test-driver farms: the refresh must track the slowest
  hypervisor, not the sum (``--latency``; needs root and ip).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
sys.path[:0] = [COLLECTIONS, ROOT]

from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
NOW = "2026-11-21T12:00:00Z"

FLOOR = textwrap.dedent(
    """
    import sys, libvirt
    from concurrent.futures import ThreadPoolExecutor
    libvirt.registerErrorHandler(lambda *a: None, None)
    NS = "http://batchvirt.farm/xmlns/slot/1"
    uris = sys.argv[2:]
    mode = sys.argv[1]
    def read(uri):
        conn = libvirt.openReadOnly(uri)
        out = []
        for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0):
            if mode == "xmldesc":
                out.append((stats["state.state"], dom.XMLDesc(0)))
            else:
                out.append((stats["state.state"], dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)))
        conn.close()
        return out
    with ThreadPoolExecutor(20) as pool:
        n = sum(len(r) for r in pool.map(read, uris))
    print(n)
    """
)


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_farm(folder: str, hypervisors: int, slots: int) -> List[str]:
    uris = []
    for h in range(hypervisors):
        hv = f"hv{h:03d}"
        domains = []
        for s in range(slots):
            name = f"{hv}-s{s:02d}"
            meta = slot(
                name,
                hv,
                version="2026.11.%d" % (2 if s % 3 == 0 else 1),
                created_at=EPOCH - (s % 7) * 4 * HOUR,
                ssh_port=10000 + s,
                worker_type="cpu" if s % 2 else "gpu",
            )
            domains.append((name, meta, s % 10 != 9))
        uris.append(write_test_node(os.path.join(folder, f"{hv}.xml"), domains, seed=h))
    return uris


def write_yaml(path: str, data: Dict[str, Any]) -> str:
    import yaml

    with open(path, "w", encoding="utf-8") as fh:
        yaml.dump(data, fh, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False)
    return path


def inventory_env() -> Dict[str, str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, BATCHVIRT_FARM_NOW=NOW)
    env.pop("ANSIBLE_CONFIG", None)
    return env


def ansible_inventory(source: str, *extra: str, binary: str = "", env: Dict[str, str] = None) -> str:
    cmd = [binary or os.path.join(VENV_BIN, "ansible-inventory"), "-i", source, "--list", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or inventory_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def timed(func: Any, *args: Any, **kwargs: Any) -> float:
    started = time.monotonic()
    func(*args, **kwargs)
    return time.monotonic() - started


def plain(obj: Any) -> Any:
    """Unwrap 2.19's ``{"__ansible_unsafe": ...}`` and sort lists of names for comparison."""
    if isinstance(obj, dict):
        if len(obj) == 1 and "__ansible_unsafe" in obj:
            return obj["__ansible_unsafe"]
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [plain(v) for v in obj]
        return sorted(items) if all(isinstance(i, str) for i in items) else items
    return obj


def static_from_export(export: Dict[str, Any]) -> Dict[str, Any]:
    """A YAML inventory with the hosts, variables and groups of an ``--export`` listing."""
    export = plain(export)
    hostvars = export["_meta"]["hostvars"]
    placed = set()
    groups: Dict[str, Any] = {}
    for name, group in export.items():
        if name in ("_meta", "all"):
            continue
        entry: Dict[str, Any] = {}
        hosts = {}
        for host in group.get("hosts", []):
            hosts[host] = None if host in placed else hostvars.get(host) or None
            placed.add(host)
        if hosts:
            entry["hosts"] = hosts
        if group.get("children"):
            entry["children"] = dict.fromkeys(group["children"])
        if group.get("vars"):
            entry["vars"] = group["vars"]
        groups[name] = entry or None
    for name in export["all"].get("children", []):  # empty groups are only named here
        groups.setdefault(name, None)
    return {"all": {"vars": export["all"].get("vars", {}), "children": groups}}


class DelayProxy:
    """TCP relays on 127.0.0.1 that hold every chunk ``delay`` seconds in each direction.

    This kernel has no ``sch_netem`` (``tc qdisc add ... netem`` fails with "Specified qdisc
    kind is unknown"), so the link latency is added in user space: same effect on a
    request/response protocol such as libvirt's RPC (every round trip pays 2 x delay).
    """

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.servers: List[Any] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def add(self, target: Any, delay: float) -> int:
        import asyncio

        async def pipe(reader: Any, writer: Any) -> None:
            queue: Any = asyncio.Queue()

            async def pump() -> None:
                while True:
                    due, data = await queue.get()
                    if data is None:
                        break
                    wait = due - self.loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
                writer.close()

            task = asyncio.ensure_future(pump())
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    queue.put_nowait((self.loop.time() + delay, data))
            except ConnectionError:
                pass
            queue.put_nowait((0, None))
            await task

        async def handle(reader: Any, writer: Any) -> None:
            up_reader, up_writer = await asyncio.open_connection(*target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        async def start() -> Any:
            return await asyncio.start_server(handle, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def latency_scenario(workdir: str, daemons: int, slots: int, delay_ms: float) -> Dict[str, float]:
    """Real libvirtd daemons, each in its own network and mount namespace, serving a
    test-driver farm over TCP; hypervisor i is reached through a relay that adds
    ``delay_ms * (i + 1)`` of round-trip latency."""

    procs = []
    uris = []
    created = []
    proxy = DelayProxy()
    try:
        for i in range(daemons):
            ns = f"bvtinv{os.getpid() % 10000}x{i}"
            host_if, ns_if = f"bvi{i}h{os.getpid() % 1000}", f"bvi{i}n{os.getpid() % 1000}"
            net = f"10.251.{i}"
            run("ip", "netns", "add", ns)
            created.append(ns)
            run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            run("ip", "link", "set", ns_if, "netns", ns)
            run("ip", "addr", "add", f"{net}.1/30", "dev", host_if)
            run("ip", "link", "set", host_if, "up")
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", ns_if)
            run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            state = os.path.join(workdir, f"libvirtd{i}")
            os.makedirs(state, exist_ok=True)
            conf = os.path.join(state, "libvirtd.conf")
            with open(conf, "w", encoding="utf-8") as fh:
                fh.write(
                    f'listen_tcp = 1\nlisten_tls = 0\ntcp_port = "16509"\nlisten_addr = "{net}.2"\nauth_tcp = "none"\n'
                    f'unix_sock_dir = "{state}"\nmax_workers = 20\nmax_clients = 200\n'
                )
            node = os.path.join(state, "node.xml")
            hv = f"lat{i}"
            write_test_node(
                node,
                [(f"{hv}-s{s:02d}", slot(f"{hv}-s{s:02d}", hv, ssh_port=10000 + s), True) for s in range(slots)],
                seed=1000 + i,
            )
            # a private mount namespace: this libvirtd's run/state dirs hide the system daemon's
            script = (
                "set -e; for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do "
                "mkdir -p $d; mount -t tmpfs tmpfs $d; done; "
                f"exec libvirtd --listen -f {conf} -p {state}/libvirtd.pid"
            )
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(state, "stderr"), "w"),  # noqa: SIM115
            )
            procs.append(proc)
            # hypervisor i is slower than the others: i+1 times the base one-way delay
            port = proxy.add((f"{net}.2", 16509), delay_ms * (i + 1) / 2000.0)
            uris.append(f"test+tcp://127.0.0.1:{port}/{node}")
        import libvirt

        libvirt.registerErrorHandler(lambda *a: None, None)
        deadline = time.monotonic() + 120
        for uri in uris:
            while True:
                try:
                    libvirt.openReadOnly(uri).close()
                    break
                except libvirt.libvirtError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import read_farm

        named = [{"uri": uri, "name": f"lat{i}"} for i, uri in enumerate(uris)]
        path = write_yaml(
            os.path.join(workdir, "lat.farm.slots.yml"), {"plugin": "batchvirt.farm.slots", "hypervisors": named}
        )
        listing = json.loads(ansible_inventory(path))
        assert len(listing["_meta"]["hostvars"]) == daemons * slots, "latency farm incomplete"
        # the read phase of a refresh (what latency affects; ansible-inventory's own start-up of
        # 1-3 s on this shared machine would drown a few tens of milliseconds)
        pairs = [(f"lat{i}", uri) for i, uri in enumerate(uris)]
        singles = [min(timed(read_farm, [pair]) for _attempt in range(5)) for pair in pairs]
        whole = min(timed(read_farm, pairs) for _attempt in range(5))
        listing_s = timed(ansible_inventory, path)
        return {
            "latency_singles_s": singles,
            "latency_all_s": whole,
            "latency_sum_singles_s": sum(singles),
            "latency_ansible_inventory_s": listing_s,
        }
    finally:
        proxy.close()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in created:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypervisors", type=int, default=500)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--community-venv", default="/var/tmp/bvt-inv-community")
    parser.add_argument("--no-community", action="store_true")
    parser.add_argument("--latency", action="store_true", help="also run the latency scenario (root: netns, libvirtd)")
    parser.add_argument("--latency-daemons", type=int, default=3)
    parser.add_argument("--latency-slots", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bvt-bench-inventory-", dir="/var/tmp")
    result: Dict[str, Any] = {"bench": "inventory", "hypervisors": args.hypervisors, "slots": args.slots}
    try:
        farm = os.path.join(workdir, "farm")
        os.makedirs(farm)
        started = time.monotonic()
        uris = make_farm(farm, args.hypervisors, args.slots)
        log(f"farm of {args.hypervisors} x {args.slots} written in {time.monotonic() - started:.1f} s")
        config = {"plugin": "batchvirt.farm.slots", "hypervisors": uris, "connect_concurrency": 20}
        plugin_file = write_yaml(os.path.join(workdir, "bench.farm.slots.yml"), config)
        cached_file = write_yaml(
            os.path.join(workdir, "cached.farm.slots.yml"),
            dict(
                config,
                cache=True,
                cache_plugin="ansible.builtin.jsonfile",
                cache_connection=os.path.join(workdir, "cache"),
                cache_timeout=3600,
            ),
        )
        export = json.loads(ansible_inventory(plugin_file, "--export"))
        static_file = write_yaml(os.path.join(workdir, "static.yml"), static_from_export(export))
        times: Dict[str, List[float]] = {"plugin": [], "cached": [], "static": [], "floor": [], "floor_xmldesc": []}
        listings: Dict[str, str] = {}

        def listing(key: str, source: str) -> None:
            listings[key] = ansible_inventory(source)

        # the identity check's listings are timed samples too (a static listing of 10,000 hosts
        # takes minutes on a loaded machine)
        times["static"].append(timed(listing, "static", static_file))
        times["plugin"].append(timed(listing, "plugin", plugin_file))
        plugin_list = plain(json.loads(listings["plugin"]))
        static_list = plain(json.loads(listings["static"]))
        hosts = len(plugin_list["_meta"]["hostvars"])
        assert hosts == args.hypervisors * args.slots, f"plugin listed {hosts} hosts"
        assert plugin_list == static_list, "the static inventory differs from the plugin's"
        log(f"static inventory identical to the plugin's ({hosts} hosts, {len(plugin_list) - 2} groups)")
        cached_list = plain(json.loads(ansible_inventory(cached_file)))  # warm-up: fills the cache
        assert cached_list == plugin_list, "the cached listing differs"

        floor_cmd = [sys.executable, "-c", FLOOR, "metadata", *uris]
        xml_cmd = [sys.executable, "-c", FLOOR, "xmldesc", *uris]
        for r in range(args.rounds):
            times["static"].append(timed(ansible_inventory, static_file))
            times["plugin"].append(timed(ansible_inventory, plugin_file))
            times["cached"].append(timed(ansible_inventory, cached_file))
            times["floor"].append(timed(subprocess.run, floor_cmd, check=True, capture_output=True))
            times["floor_xmldesc"].append(timed(subprocess.run, xml_cmd, check=True, capture_output=True))
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        med = {k: statistics.median(v) for k, v in times.items()}
        result.update({f"{k}_s": round(v, 3) for k, v in med.items()})
        result["ratio_vs_static"] = round(med["plugin"] / med["static"], 3)
        result["ratio_vs_floor"] = round(med["plugin"] / med["floor"], 3)
        result["cached_ratio_vs_static"] = round(med["cached"] / med["static"], 3)

        community_bin = os.path.join(args.community_venv, "bin", "ansible-inventory")
        result["speedup_vs_community_libvirt"] = None
        if not args.no_community and os.path.exists(community_bin):
            sources = os.path.join(workdir, "community")
            os.makedirs(sources)
            for i, uri in enumerate(uris):
                write_yaml(
                    os.path.join(sources, f"hv{i:03d}.libvirt.yml"), {"plugin": "community.libvirt.libvirt", "uri": uri}
                )
            env = dict(os.environ)
            env.pop("ANSIBLE_COLLECTIONS_PATH", None)
            listing = {}

            def community() -> None:
                listing["out"] = ansible_inventory(sources, binary=community_bin, env=env)

            seconds = timed(community)
            got = len(json.loads(listing["out"])["_meta"]["hostvars"])
            assert got == hosts, f"community.libvirt listed {got} hosts"
            result["community_libvirt_s"] = round(seconds, 3)
            result["speedup_vs_community_libvirt"] = round(seconds / med["plugin"], 2)
            log(f"community.libvirt: {seconds:.2f} s")
        else:
            log(f"community.libvirt skipped: {community_bin} not found")

        result["latency_ratio_vs_slowest"] = None
        if args.latency:
            lat = latency_scenario(workdir, args.latency_daemons, args.latency_slots, args.latency_ms)
            result.update({k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 3) for k, v in lat.items()})
            result["latency_ratio_vs_slowest"] = round(lat["latency_all_s"] / max(lat["latency_singles_s"]), 3)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
