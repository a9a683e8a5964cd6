"""The image_seeder role on this host (init script here, systemd unit on systemd hosts): the
service (the collection's libtorrent engine as the origin seeder) seeds so that a hypervisor
with no other source downloads the image; check mode changes nothing; a rerun changes nothing; the service announces itself
as the origin in its peer id; an image missing when the service starts is dropped while the
other torrent is still served; a seed time ends the service by itself; a missing image is
refused by name; so is a Python without libtorrent."""

from __future__ import annotations

import filecmp
import json
import os
import socket
import subprocess
import time
from typing import Any, Dict

from ansible_collections.batchvirt.farm.plugins.module_utils import (
    _torrent_engine,
    _torrent_fetch,
    _torrent_jobs,
    _torrent_meta,
)
from tests.integration.torrent.conftest import free_port
from tests.testbed.ansible import LOCALHOST, run_playbook

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks", "seeder.yml")


def _status(name: str) -> int:
    return subprocess.run(["service", name, "status"], capture_output=True, check=False).returncode


def _peer_id(port: int, info_hash: str) -> bytes:
    """The peer id the seeder on ``port`` answers a BitTorrent handshake for ``info_hash`` with
    (what a hypervisor's engine sees of it)."""
    hello = b"\x13BitTorrent protocol" + bytes(8) + bytes.fromhex(info_hash) + b"-BT0000-testtesttest"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello)
        reply = b""
        while len(reply) < 68:
            chunk = sock.recv(68 - len(reply))
            if not chunk:
                break
            reply += chunk
    assert len(reply) == 68 and reply[28:48] == bytes.fromhex(info_hash), f"no handshake for {info_hash}: {reply!r}"
    return reply[48:68]


def _wait_status(path: str, ready: Any, timeout: float = 15.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: Dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with open(path) as handle:
                status = json.load(handle)
        except (OSError, ValueError):
            status = {}
        if status and ready(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach the expected state in {timeout} s: {status}")


def test_seeder_role_serves_the_swarm(swarm, hostbed):
    name = hostbed.name("seeder")
    init_script = f"/etc/init.d/{name}"
    unit = f"/etc/systemd/system/{name}.service"

    def remove_service() -> None:
        if os.path.exists(init_script):
            subprocess.run([init_script, "stop"], capture_output=True, check=False)
        for path in (init_script, unit):
            if os.path.exists(path):
                os.unlink(path)

    hostbed.cleanup(remove_service)
    image = swarm.image(size=4 * 1024 * 1024)
    other = swarm.image(name="other.raw", size=2 * 1024 * 1024)
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [])  # no web seed: only the service can serve it
    other_meta = _torrent_meta.make_torrent(other, [tracker.url], [])
    tracker.allow(meta["info_hash"])
    tracker.allow(other_meta["info_hash"])
    state_dir = os.path.join(swarm.tmp, "seeder-state")
    port = free_port()
    extravars = {
        "farm_image_seeder_service_name": name,
        "farm_image_seeder_state_dir": state_dir,
        "farm_image_seeder_torrents": [
            {"torrent": meta["path"], "data": image},
            {"torrent": other_meta["path"], "data": other},
        ],
        "farm_image_seeder_listen_port": str(port),
        "farm_image_seeder_tracker_interval": 2,
        "farm_image_seeder_install_package": False,
        "farm_image_seeder_enabled": False,
    }
    checked = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars, check=True)
    assert checked.rc == 0, checked.stdout[-3000:]
    assert checked.changed, "check mode must report the seeder it would install"
    assert not os.path.exists(state_dir) and not os.path.exists(init_script), "check mode must change nothing"
    first = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    assert _status(name) == 0, "the seeder service does not run after the play"
    launcher = os.path.join(_torrent_jobs.DEFAULT_ENGINE_DIR, _torrent_jobs.ENGINE_LAUNCHER)
    assert os.path.isfile(launcher), "the engine was not installed"
    assert not [n for n in os.listdir(state_dir) if n.endswith(".py")], "no code in the (writable) state directory"
    second = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert second.rc == 0, second.stdout[-3000:]
    assert not second.changed, "a rerun with the same torrents must change nothing"

    # The service is the origin: hypervisors with swarm shares recognise it by its peer id.
    status_file = os.path.join(state_dir, f"{name}.status")
    status = _wait_status(status_file, lambda s: all(t["state"] == "seeding" for t in s["torrents"]))
    assert status["port"] == port
    peer_id = _peer_id(port, meta["info_hash"])
    assert peer_id.startswith(_torrent_engine.ORIGIN_PEER_ID), f"the seeder's peer id {peer_id!r} is not the origin's"
    assert peer_id.startswith(_torrent_engine.ORIGIN_FINGERPRINT.encode())

    dest = os.path.join(swarm.tmp, "hv", "image.raw.part")
    _torrent_fetch.fetch(meta["path"], dest, os.path.getsize(image), None, timeout=30, state_dir=swarm.state_dir("hv"))
    assert filecmp.cmp(dest, image, shallow=False)

    # One image missing when the service (re)starts (e.g. at boot): that torrent is dropped with
    # a log line naming it, the other is still served.
    old_pid = status["pid"]
    os.rename(other, other + ".away")
    try:
        restarted = subprocess.run(["service", name, "restart"], capture_output=True, text=True, check=False)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        status = _wait_status(status_file, lambda s: s["pid"] != old_pid and len(s["torrents"]) == 2)
        states = {t["info_hash"]: t for t in status["torrents"]}
        assert states[other_meta["info_hash"]]["state"] == "dropped"
        assert states[other_meta["info_hash"]]["error"] == f"the image {other} is missing (No such file or directory)"
        assert states[meta["info_hash"]]["state"] == "seeding"
        with open(os.path.join(state_dir, f"{name}.log")) as handle:
            log = handle.read()
        assert f"dropped {other_meta['path']}: the image {other} is missing" in log
        assert _status(name) == 0, "the seeder must go on with the other torrent"
        again = os.path.join(swarm.tmp, "hv2", "image.raw.part")
        _torrent_fetch.fetch(
            meta["path"], again, os.path.getsize(image), None, timeout=30, state_dir=swarm.state_dir("hv2")
        )
        assert filecmp.cmp(again, image, shallow=False)
    finally:
        os.rename(other + ".away", other)

    # A hypervisor-style seeder: seed 3 s after the play, then the service ends by itself.
    timed = dict(extravars, farm_image_seeder_seed_time=3)
    third = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=timed)
    assert third.rc == 0, third.stdout[-3000:]
    assert third.changed
    deadline = time.monotonic() + 30
    while _status(name) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _status(name) == 3, "the seeder still runs after its seed time"

    missing = dict(extravars, farm_image_seeder_torrents=[{"torrent": meta["path"], "data": image + ".gone"}])
    failed = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=missing)
    assert failed.rc != 0
    assert f"farm_image_seeder_torrents names files that do not exist: {image}.gone" in failed.stdout

    # A Python without libtorrent's binding is refused before anything is installed, by name.
    fake = os.path.join(swarm.tmp, "python-without-libtorrent")
    with open(fake, "w") as handle:
        handle.write("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'libtorrent'\" >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    nolib = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=dict(extravars, farm_image_seeder_python=fake))
    assert nolib.rc != 0
    assert f"{fake} cannot import libtorrent (ModuleNotFoundError: No module named 'libtorrent')" in nolib.stdout


def test_seeder_role_refuses_an_engine_directory_others_can_write(swarm, hostbed):
    """The engine runs as root: a directory above it that anyone can write is named, and nothing
    (no service, no unit) is installed."""
    name = hostbed.name("seeder")
    shared = os.path.join(swarm.tmp, "shared")
    os.makedirs(shared)
    os.chmod(shared, 0o777)  # world-writable and not sticky: anyone could swap the engine
    engine_dir = os.path.join(shared, "engine")
    image = swarm.image(size=1024 * 1024)
    meta = _torrent_meta.make_torrent(image, ["http://127.0.0.1:9/announce"], [])
    extravars = {
        "farm_image_seeder_service_name": name,
        "farm_image_seeder_state_dir": os.path.join(swarm.tmp, "seeder-state"),
        "farm_image_seeder_engine_dir": engine_dir,
        "farm_image_seeder_torrents": [{"torrent": meta["path"], "data": image}],
        "farm_image_seeder_install_package": False,
        "farm_image_seeder_enabled": False,
    }
    refused = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert refused.rc != 0
    assert f"refusing to run the BitTorrent engine from {engine_dir}: {shared} is writable" in refused.stdout
    assert not os.path.exists(f"/etc/init.d/{name}") and not os.path.exists(f"/etc/systemd/system/{name}.service")
    os.chmod(shared, 0o755)  # the same play once the directory is safe: it installs and starts

    def remove_service() -> None:
        if os.path.exists(f"/etc/init.d/{name}"):
            subprocess.run([f"/etc/init.d/{name}", "stop"], capture_output=True, check=False)
        for path in (f"/etc/init.d/{name}", f"/etc/systemd/system/{name}.service"):
            if os.path.exists(path):
                os.unlink(path)

    hostbed.cleanup(remove_service)
    accepted = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert accepted.rc == 0, accepted.stdout[-3000:]
    assert os.path.isfile(os.path.join(engine_dir, "launch.py")) and _status(name) == 0
