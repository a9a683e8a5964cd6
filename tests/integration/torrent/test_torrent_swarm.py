"""A swarm in network namespaces: the image server (opentracker, web seed, origin seeder from
make_torrent + start_seeding) and three hypervisors, each its own namespace and process, fetch at
once, verify, and seed; then, with the server's seeder and web seed gone, a fourth hypervisor
still gets the image from the three."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs, _torrent_meta
from tests.integration.torrent.conftest import HERE
from tests.integration.torrent.netlab import NetLab

HYPERVISOR = os.path.join(HERE, "hypervisor.py")


def _start_hypervisor(netlab, ns, source, dest, image, state_dir, timeout=40, share=None):
    with open(image, "rb") as handle:
        sha512 = hashlib.sha512(handle.read()).hexdigest()
    return subprocess.Popen(
        [*netlab.prefix(ns), sys.executable, HYPERVISOR, source, dest, str(os.path.getsize(image)), sha512,
         state_dir, str(timeout), "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, BVT_SWARM_INDEX=str(share[0]), BVT_SWARM_SIZE=str(share[1])) if share else None,
    )  # fmt: skip


def _result(proc):
    out, err = proc.communicate(timeout=60)
    assert out.strip(), f"hypervisor printed nothing: {err.decode()[-2000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


def test_swarm_of_hypervisors_in_namespaces(swarm, netlab):
    server = netlab.add(1)
    server_ip = netlab.address(1)
    image = swarm.image(size=8 * 1024 * 1024)
    srv_dir = os.path.dirname(image)
    base = swarm.http(srv_dir, host=server_ip, prefix=netlab.prefix(server))
    tracker = swarm.tracker(host=server_ip, prefix=netlab.prefix(server))
    meta = _torrent_meta.make_torrent(image, [tracker.url], [f"{base}/image.raw"])
    tracker.allow(meta["info_hash"])
    origin_state = swarm.state_dir("origin")
    origin = subprocess.run(
        [*netlab.prefix(server), sys.executable, "-c",
         "import sys, json; sys.path[:0] = [sys.argv[1]];"
         "from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs, _torrent_meta;"
         "print(json.dumps(_torrent_jobs.start_seeding(sys.argv[2], sys.argv[3], 120, state_dir=sys.argv[4])))",
         os.path.join(HERE, "..", "..", "..", "build", "collections"), meta["path"], image, origin_state],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert origin.returncode == 0, origin.stderr[-2000:]
    hypervisors = [netlab.add(10 + i) for i in range(3)]
    dests = [os.path.join(swarm.tmp, f"hv{i}", "image.raw") for i in range(3)]
    states = [swarm.state_dir(f"hv{i}") for i in range(3)]
    torrent_url = f"{base}/image.raw.torrent"
    procs = [_start_hypervisor(netlab, ns, torrent_url, d, image, s) for ns, d, s in zip(hypervisors, dests, states)]
    results = [_result(p) for p in procs]
    assert [r["failed"] for r in results] == [False] * 3, results
    for dest in dests:
        with open(dest, "rb") as got, open(image, "rb") as want:
            assert got.read() == want.read()
    for state in states:  # each hypervisor now seeds, detached, found by its pidfile
        assert [r["running"] for r in _torrent_jobs.seeding_status(state)] == [True]

    # The image server goes away (seeder and web seed): the hypervisors are the only source.
    _torrent_jobs.stop_seeding(meta["info_hash"], origin_state)
    swarm.servers[base].terminate()
    swarm.servers[base].wait(timeout=10)
    late = netlab.add(20)
    dest = os.path.join(swarm.tmp, "hv-late", "image.raw")
    result = _result(_start_hypervisor(netlab, late, meta["path"], dest, image, swarm.state_dir("hv-late")))
    assert not result["failed"], result
    with open(dest, "rb") as got, open(image, "rb") as want:
        assert got.read() == want.read()


def test_swarm_shares_with_a_hypervisor_missing(swarm, hostbed):
    """Three hypervisors told they are 3 of a swarm of 4 (the play's fourth host failed): each asks
    the origin for its own share and trades the others; the missing hypervisor's share, which
    nobody in the swarm fetches for it, still arrives (from the origin), and every image is whole."""
    netlab = NetLab(hostbed.cleanup, rate_mbit=40)
    server = netlab.add(1)
    server_ip = netlab.address(1)
    image = swarm.image(size=8 * 1024 * 1024)
    base = swarm.http(os.path.dirname(image), host=server_ip, prefix=netlab.prefix(server))
    tracker = swarm.tracker(host=server_ip, prefix=netlab.prefix(server))
    meta = _torrent_meta.make_torrent(image, [tracker.url], [f"{base}/image.raw"])
    tracker.allow(meta["info_hash"])
    origin = subprocess.run(
        [*netlab.prefix(server), sys.executable, "-c",
         "import sys, json; sys.path[:0] = [sys.argv[1]];"
         "from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs, _torrent_meta;"
         "print(json.dumps(_torrent_jobs.start_seeding(sys.argv[2], sys.argv[3], 120, state_dir=sys.argv[4])))",
         os.path.join(HERE, "..", "..", "..", "build", "collections"), meta["path"], image, swarm.state_dir("origin")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert origin.returncode == 0, origin.stderr[-2000:]
    hypervisors = [netlab.add(10 + i) for i in range(3)]
    dests = [os.path.join(swarm.tmp, f"hv{i}", "image.raw") for i in range(3)]
    procs = [
        _start_hypervisor(netlab, ns, meta["path"], dest, image, swarm.state_dir(f"hv{i}"), timeout=60, share=(i, 4))
        for i, (ns, dest) in enumerate(zip(hypervisors, dests))
    ]
    results = [_result(p) for p in procs]
    assert [r["failed"] for r in results] == [False] * 3, results
    for dest in dests:
        with open(dest, "rb") as got, open(image, "rb") as want:
            assert got.read() == want.read()
    peers = {netlab.address(10 + i) for i in range(3)}
    for result in results:  # the swarm traded: every hypervisor got pieces from another one
        assert sum(n for ip, n in result["sources"].items() if ip in peers) > 0, result["sources"]
