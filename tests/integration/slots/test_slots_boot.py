"""A slot boots the real base image (roles/base_image's output) under QEMU, answers SSH on its
127.0.0.1 forward, and cloud-init ran with the data the slot module gave it.

Skipped when no base image has been built on this machine (``/var/lib/batchvirt/base/*.json``,
written by the base_image role; building one takes minutes and belongs to that role's tests).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import subprocess
import time

import pytest

from tests.integration.slots.conftest import SLOT_PLAYBOOK, register_slot
from tests.testbed.ansible import run_playbook

SSH_PORT = 12795


def _base_image():
    for path in sorted(glob.glob("/var/lib/batchvirt/base/*.json"), key=os.path.getmtime, reverse=True):
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        if os.path.exists(info.get("file", "")) and os.path.exists((info.get("boot") or {}).get("kernel", "")):
            return info
    return None


@pytest.mark.slow
def test_slot_boots_base_image_ssh_and_cloud_init(testbed, libvirt_conn, slots_pool):
    info = _base_image()
    if info is None:
        pytest.skip("no base image built on this machine (run the base_image role first)")
    name = register_slot(testbed, testbed.name("boot"))
    key = os.path.join(testbed.tmp, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    with open(key + ".pub", encoding="utf-8") as handle:
        pub = handle.read().strip()
    token = secrets.token_hex(8)
    result = run_playbook(
        SLOT_PLAYBOOK,
        extravars={
            "slot_name": name,
            "slot_image": {"path": info["file"]},
            "slot_boot": {"mode": "kernel"},  # kernel, initrd and cmdline from the image description
            "slot_memory_mib": 512,
            "slot_network": {"mode": "user", "ssh_port": SSH_PORT},
            "slot_cloud_init": {
                "disable_root": False,
                "ssh_authorized_keys": [pub],
                "ssh_genkeytypes": ["ed25519"],
                "write_files": [{"path": "/etc/bvt-slot-token", "content": token + "\n"}],
            },
        },
    )
    assert result.rc == 0, result.stdout[-3000:]
    ssh = [
        "ssh", "-q", "-i", key, "-p", str(SSH_PORT),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=5", "root@127.0.0.1",
    ]  # fmt: skip
    deadline = time.monotonic() + 240
    out = None
    while time.monotonic() < deadline:
        out = subprocess.run([*ssh, "cat /etc/bvt-slot-token; hostname"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and token in out.stdout:
            break
        time.sleep(3)
    assert out is not None and out.returncode == 0, (
        f"no SSH with the slot's key within 240 s: {out.stderr if out else ''}"
    )
    lines = out.stdout.split()
    assert lines == [token, name]
    status = subprocess.run(
        [*ssh, "cloud-init status --wait"], capture_output=True, text=True, check=False, timeout=180
    )
    assert "done" in status.stdout, status.stdout + status.stderr
