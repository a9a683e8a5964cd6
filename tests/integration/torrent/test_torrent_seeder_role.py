"""The image_seeder role on this host (init script here, systemd unit on systemd hosts): the
service seeds so that a hypervisor with no other source downloads the image; a rerun changes
nothing; a seed time ends the service by itself; a missing image is refused by name."""

from __future__ import annotations

import filecmp
import os
import subprocess
import time

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent
from tests.integration.torrent.conftest import free_port
from tests.testbed.ansible import LOCALHOST, run_playbook

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks", "seeder.yml")


def _status(name: str) -> int:
    return subprocess.run(["service", name, "status"], capture_output=True, check=False).returncode


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
    tracker = swarm.tracker()
    meta = _torrent.make_torrent(image, [tracker.url], [])  # no web seed: only the service can serve it
    tracker.allow(meta["info_hash"])
    state_dir = os.path.join(swarm.tmp, "seeder-state")
    extravars = {
        "farm_image_seeder_service_name": name,
        "farm_image_seeder_state_dir": state_dir,
        "farm_image_seeder_torrents": [{"torrent": meta["path"], "data": image}],
        "farm_image_seeder_listen_port": str(free_port()),
        "farm_image_seeder_tracker_interval": 2,
        "farm_image_seeder_install_package": False,
        "farm_image_seeder_enabled": False,
    }
    first = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    assert _status(name) == 0, "the seeder service does not run after the play"
    second = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=extravars)
    assert second.rc == 0, second.stdout[-3000:]
    assert not second.changed, "a rerun with the same torrents must change nothing"

    dest = os.path.join(swarm.tmp, "hv", "image.raw.part")
    _torrent.fetch(meta["path"], dest, os.path.getsize(image), None, timeout=30, state_dir=swarm.state_dir("hv"))
    assert filecmp.cmp(dest, image, shallow=False)

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
