"""The batch_client role: its output makes a slurmd that registers by itself as a dynamic node."""

from __future__ import annotations

import base64
import os
import shlex
import stat
import subprocess
import time

from tests.integration.batch.conftest import HERE
from tests.testbed.ansible import LOCALHOST, run_playbook


def test_client_role_output_registers_a_dynamic_node(slurm_cluster):
    root = os.path.join(slurm_cluster.tmp, "client")
    with open(slurm_cluster.slurm_conf) as handle:
        slurm_conf = handle.read()
    with open("/etc/munge/munge.key", "rb") as handle:
        key = handle.read()
    extravars = {
        "farm_batch_client_node_name": "bvtd1",
        "farm_batch_client_dynamic": True,
        "farm_batch_client_features": ["bvt-dyn", "worker-test"],
        "farm_batch_client_slurm_conf": slurm_conf,
        "farm_batch_client_munge_key_b64": base64.b64encode(key).decode(),
        "farm_batch_client_munge_key_path": os.path.join(root, "munge.key"),
        "farm_batch_client_conf_dir": os.path.join(root, "etc"),
        "farm_batch_client_defaults_file": os.path.join(root, "default-slurmd"),
        "farm_batch_client_spool_dir": os.path.join(slurm_cluster.tmp, "spool", "bvtd1"),
        "farm_batch_client_log_dir": os.path.join(root, "log"),
        "farm_batch_client_start": False,  # as on an image being built
        "farm_batch_client_enable": False,
        "farm_batch_client_install_packages": False,
    }
    playbook = os.path.join(HERE, "client.yml")
    first = run_playbook(playbook, extravars=extravars, inventory=LOCALHOST)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    assert base64.b64encode(key).decode() not in first.stdout
    second = run_playbook(playbook, extravars=extravars, inventory=LOCALHOST)
    assert second.rc == 0 and not second.changed, second.changed_tasks()

    st = os.stat(extravars["farm_batch_client_munge_key_path"])
    assert stat.S_IMODE(st.st_mode) == 0o400
    with open(extravars["farm_batch_client_munge_key_path"], "rb") as handle:
        assert handle.read() == key
    with open(extravars["farm_batch_client_defaults_file"]) as handle:
        defaults = handle.read()
    assert "SLURMD_OPTIONS='-N bvtd1 -Z --conf=Feature=bvt-dyn,worker-test'" in defaults

    # start slurmd the way its init script does: source the defaults file, pass $SLURMD_OPTIONS
    conf = os.path.join(root, "etc", "slurm.conf")
    script = f". {shlex.quote(extravars['farm_batch_client_defaults_file'])}; exec slurmd -f {shlex.quote(conf)} $SLURMD_OPTIONS"
    subprocess.run(["sh", "-c", script], check=True, env=slurm_cluster.env())
    try:
        for _attempt in range(50):
            if os.path.exists(slurm_cluster.pid_file("bvtd1")):
                break
            time.sleep(0.1)
        with open(slurm_cluster.pid_file("bvtd1")) as handle:
            slurm_cluster.slurmd_pids["bvtd1"] = int(handle.read().strip())
        res = slurm_cluster.manage("bvtd1", "present", wait=True, wait_timeout=20, poll_interval=0.5)
        assert not res.get("failed"), res.get("msg")
        node = res["nodes"]["bvtd1"]
        assert node["registered"] and node["state"] == "idle"
        assert node["features"] == ["bvt-dyn", "worker-test"]
    finally:
        slurm_cluster.stop_slurmd("bvtd1")
    # a dynamic node without jobs can be removed; the second time there is nothing to do
    res = slurm_cluster.manage("bvtd1", "absent")
    assert res.get("changed"), res
    assert slurm_cluster.manage("bvtd1", "absent")["changed"] is False
