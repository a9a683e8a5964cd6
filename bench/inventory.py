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
  (``--community-venv``, created on first use; ``--no-community`` skips it), on the same farm
  files read in-process (``test:///...``);
- network: the same farm files served by ``--network-daemons`` real libvirtd daemons (own network
  and mount namespaces) over TCP with ``--network-rtt-ms`` of added round-trip latency, the way
  an inventory host reaches its hypervisors: plugin, floor and community.libvirt again.
  ``speedup_vs_community_libvirt`` is measured here; the in-process figure is reported beside
  it (the in-process test driver makes community.libvirt's five calls per domain free);
- latency: a few real libvirtd daemons with different latencies, one test-driver hypervisor
  each: the refresh must track the slowest hypervisor, not the sum (``--latency``).

The kernel here has no ``sch_netem``, so latency is added by a delaying TCP relay
(:class:`DelayProxy`). Needs root (network namespaces) and libvirtd.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import collections
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


class _DelayedPipe:
    """One direction of a relayed connection: every chunk is written ``delay`` seconds after it
    arrived, in arrival order (one timer per direction, not one per chunk)."""

    def __init__(self, loop: Any, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.queue: Any = collections.deque()
        self.target: Any = None  # the transport to write to, once connected
        self.timer: Any = None
        self.closing = False

    def push(self, data: bytes) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        self._arm()

    def close(self) -> None:
        self.closing = True
        self._arm()

    def connected(self, transport: Any) -> None:
        self.target = transport
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.target is not None:
            due = self.queue[0][0] if self.queue else self.loop.time()
            self.timer = self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            self.target.write(self.queue.popleft()[1])
        if self.queue:
            self._arm()
        elif self.closing:
            self.target.close()


class _RelaySide:
    """asyncio protocol of one end of a relayed connection: what it receives goes to ``pipe``."""

    def __init__(self, pipe: Any, other: Any) -> None:
        self.pipe = pipe  # towards the other end
        self.other = other  # the pipe that writes into this end

    def connection_made(self, transport: Any) -> None:
        self.other.connected(transport)

    def data_received(self, data: bytes) -> None:
        self.pipe.push(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Any) -> None:
        self.pipe.close()

    def pause_writing(self) -> None:  # the relayed volumes are small: no flow control
        pass

    def resume_writing(self) -> None:
        pass


class DelayProxy:
    """TCP relays on 127.0.0.1 that hold every chunk ``delay`` seconds in each direction.

    This kernel has no ``sch_netem`` (``tc qdisc add ... netem`` fails with "Specified qdisc
    kind is unknown"), so the link latency is added in user space: same effect on a
    request/response protocol such as libvirt's RPC (every round trip pays 2 x delay).
    netem costs no CPU; this relay runs on the same two cores as what it measures, so it is
    written with asyncio protocols and one timer per direction to keep its CPU small.
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

        loop = self.loop

        def accept() -> Any:
            upstream, downstream = _DelayedPipe(loop, delay), _DelayedPipe(loop, delay)
            client = _RelaySide(upstream, downstream)  # client -> upstream; downstream writes to the client
            server_side = _RelaySide(downstream, upstream)  # server -> client; upstream writes to the server

            async def connect() -> None:
                try:
                    await loop.create_connection(lambda: server_side, *target)
                except OSError:
                    downstream.close()

            asyncio.ensure_future(connect())
            return client

        async def start() -> Any:
            return await loop.create_server(accept, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), loop).result()
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Fleet:
    """Real libvirtd daemons, each in its own network and mount namespace, listening on TCP.

    Every daemon serves libvirt test-driver files by path (``test+tcp://host/path/hv.xml``: the
    remote driver hands the path to the daemon, which opens the file with its test driver), so
    the same farm files can be read in-process (``test:///...``) or over the network. Each daemon
    is reached through a :class:`DelayProxy` relay on 127.0.0.1 that adds its round-trip latency.
    """

    serial = 0  # namespaces started by this process

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.procs: List[Any] = []
        self.namespaces: List[str] = []
        self.proxy = DelayProxy()
        self.ports: List[int] = []

    def start(self, count: int, rtt_ms: List[float]) -> None:
        for i in range(count):
            # unique across fleets of this process: a deleted namespace's veth lingers for a while
            Fleet.serial += 1
            tag = f"{os.getpid() % 1000}{Fleet.serial}"
            ns = f"bvtinv{tag}"
            host_if, ns_if = f"bvih{tag}", f"bvin{tag}"
            net = f"10.251.{Fleet.serial % 256}"
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            run("ip", "link", "set", ns_if, "netns", ns)
            run("ip", "addr", "add", f"{net}.1/30", "dev", host_if)
            run("ip", "link", "set", host_if, "up")
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", ns_if)
            run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            state = os.path.join(self.workdir, f"libvirtd-{ns}")
            os.makedirs(state, exist_ok=True)
            conf = os.path.join(state, "libvirtd.conf")
            with open(conf, "w", encoding="utf-8") as fh:
                fh.write(
                    f'listen_tcp = 1\nlisten_tls = 0\ntcp_port = "16509"\nlisten_addr = "{net}.2"\nauth_tcp = "none"\n'
                    f'unix_sock_dir = "{state}"\nmax_workers = 20\nmax_clients = 1000\nmax_anonymous_clients = 1000\n'
                )
            # a private mount namespace: this libvirtd's run/state dirs hide the system daemon's
            script = (
                "set -e; for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do "
                "mkdir -p $d; mount -t tmpfs tmpfs $d; done; "
                f"exec libvirtd --listen -f {conf} -p {state}/libvirtd.pid"
            )
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(state, "stderr"), "w"),  # noqa: SIM115
                )
            )
            self.ports.append(self.proxy.add((f"{net}.2", 16509), rtt_ms[i] / 2000.0))

    def uri(self, daemon: int, path: str) -> str:
        return f"test+tcp://127.0.0.1:{self.ports[daemon]}{path}"

    def wait(self, paths: List[str]) -> None:
        """Until daemon i answers for ``paths[i]``."""
        import libvirt

        libvirt.registerErrorHandler(lambda *a: None, None)
        deadline = time.monotonic() + 120
        for daemon, path in enumerate(paths):
            while True:
                try:
                    libvirt.openReadOnly(self.uri(daemon, path)).close()
                    break
                except libvirt.libvirtError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

    def close(self) -> None:
        self.proxy.close()
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def latency_scenario(workdir: str, daemons: int, slots: int, delay_ms: float) -> Dict[str, float]:
    """Real libvirtd daemons reached over TCP, each serving one test-driver hypervisor of
    ``slots`` slots; hypervisor i is reached through a relay that adds ``delay_ms * (i + 1)``
    of round-trip latency."""

    fleet = Fleet(workdir)
    try:
        fleet.start(daemons, [delay_ms * (i + 1) for i in range(daemons)])
        nodes = []
        for i in range(daemons):
            hv = f"lat{i}"
            node = os.path.join(workdir, f"lat{i}.xml")
            write_test_node(
                node,
                [(f"{hv}-s{s:02d}", slot(f"{hv}-s{s:02d}", hv, ssh_port=10000 + s), True) for s in range(slots)],
                seed=1000 + i,
            )
            nodes.append(node)
        fleet.wait(nodes)
        uris = [fleet.uri(i, node) for i, node in enumerate(nodes)]
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
        fleet.close()


def community_venv(args: Any) -> str:
    """community.libvirt's ``ansible-inventory``, in its own venv (created on first use)."""
    binary = os.path.join(args.community_venv, "bin", "ansible-inventory")
    if not os.path.exists(binary):
        log(f"creating {args.community_venv} with ansible 12 (community.libvirt) and libvirt-python ...")
        subprocess.run([sys.executable, "-m", "venv", args.community_venv], check=True)
        subprocess.run(
            [
                os.path.join(args.community_venv, "bin", "pip"),
                "install",
                "-q",
                "ansible-core==2.19.*",
                "ansible>=12,<13",
                "libvirt-python",
            ],
            check=True,
        )
    return binary


def community_listing(workdir: str, label: str, uris: List[str], binary: str, hosts: int) -> None:
    """``ansible-inventory --list`` over one community.libvirt source per URI."""
    sources = os.path.join(workdir, f"community-{label}")
    if not os.path.isdir(sources):
        os.makedirs(sources)
        for i, uri in enumerate(uris):
            write_yaml(
                os.path.join(sources, f"hv{i:03d}.libvirt.yml"), {"plugin": "community.libvirt.libvirt", "uri": uri}
            )
    env = dict(os.environ)
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    got = len(json.loads(ansible_inventory(sources, binary=binary, env=env))["_meta"]["hostvars"])
    assert got == hosts, f"community.libvirt listed {got} hosts ({label})"


def network_scenario(
    workdir: str, farm: str, local_uris: List[str], args: Any, community_bin: str, hosts: int
) -> Dict[str, Any]:
    """The same farm files served by a few real libvirtd daemons over TCP with added latency.

    This is how an inventory host (AWX) reaches hypervisors. Hypervisor i is read through
    daemon ``i % K``; every call to it is a network round trip, as on a real farm.
    """
    fleet = Fleet(workdir)
    try:
        count = args.network_daemons
        fleet.start(count, [args.network_rtt_ms] * count)
        paths = [uri[len("test://") :] for uri in local_uris]
        fleet.wait(paths[:count])
        uris = [fleet.uri(i % count, path) for i, path in enumerate(paths)]
        config = {
            "plugin": "batchvirt.farm.slots",
            "hypervisors": [{"uri": uri, "name": os.path.basename(path)[:-4]} for uri, path in zip(uris, paths)],
            "connect_concurrency": 20,
        }
        plugin_file = write_yaml(os.path.join(workdir, "network.farm.slots.yml"), config)
        out: Dict[str, Any] = {"network_daemons": count, "network_rtt_ms": args.network_rtt_ms}

        def plugin() -> None:
            got = len(json.loads(ansible_inventory(plugin_file))["_meta"]["hostvars"])
            assert got == hosts, f"the plugin listed {got} hosts over the network"

        floor_cmd = [sys.executable, "-c", FLOOR, "metadata", *uris]
        samples = {"plugin": [], "floor": []}  # type: Dict[str, List[float]]
        for _round in range(max(1, args.rounds)):
            samples["plugin"].append(timed(plugin))
            samples["floor"].append(timed(subprocess.run, floor_cmd, check=True, capture_output=True))
        out["network_plugin_s"] = round(statistics.median(samples["plugin"]), 3)
        out["network_floor_s"] = round(statistics.median(samples["floor"]), 3)
        log(
            f"network ({count} libvirtd, {args.network_rtt_ms} ms RTT): plugin {out['network_plugin_s']} s, "
            f"floor {out['network_floor_s']} s"
        )
        if community_bin:
            seconds = timed(community_listing, workdir, "network", uris, community_bin, hosts)
            out["network_community_libvirt_s"] = round(seconds, 3)
            log(f"network: community.libvirt {seconds:.2f} s")
        return out
    finally:
        fleet.close()


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
    parser.add_argument("--network-daemons", type=int, default=4, help="libvirtd daemons serving the farm (0: skip)")
    parser.add_argument("--network-rtt-ms", type=float, default=1.0, help="round-trip latency added in front of each")
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

        community_bin = community_venv(args) if not args.no_community else ""
        result["speedup_vs_community_libvirt"] = None
        if community_bin:
            seconds = timed(community_listing, workdir, "in-process", uris, community_bin, hosts)
            result["community_libvirt_in_process_s"] = round(seconds, 3)
            result["speedup_vs_community_libvirt_in_process"] = round(seconds / med["plugin"], 2)
            log(f"community.libvirt, in-process test driver: {seconds:.2f} s")

        if args.network_daemons:
            net = network_scenario(workdir, farm, uris, args, community_bin, hosts)
            result.update(net)
            if community_bin:
                result["speedup_vs_community_libvirt"] = round(
                    net["network_community_libvirt_s"] / net["network_plugin_s"], 2
                )

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
