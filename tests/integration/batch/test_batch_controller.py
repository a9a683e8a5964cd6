"""The batch_controller role: a controller that really answers, idempotent, munge key kept."""

from __future__ import annotations

import os
import stat
import subprocess


def test_controller_role_is_idempotent_and_answers(slurm_cluster):
    assert slurm_cluster.second.rc == 0, slurm_cluster.second.stdout[-3000:]
    assert not slurm_cluster.second.changed, f"second run changed: {slurm_cluster.second.changed_tasks()}"
    ping = slurm_cluster.run("scontrol", "ping")
    assert "is UP" in ping.stdout
    assert slurm_cluster.slurm_conf != "/etc/slurm/slurm.conf"
    with open(slurm_cluster.slurm_conf) as handle:
        conf = handle.read()
    assert "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny" in conf
    assert "MaxNodeCount=8" in conf
    assert "NodeName=bvtn1 NodeAddr=127.0.0.1 Port=" in conf


def test_munge_key_private_never_regenerated_never_logged(slurm_cluster):
    first, second = slurm_cluster.key_digests
    assert first == second, "the second run regenerated the munge key"
    st = os.stat("/etc/munge/munge.key")
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert st.st_uid == int(subprocess.check_output(["id", "-u", "munge"]).strip())
    key_b64 = subprocess.check_output(["base64", "-w0", "/etc/munge/munge.key"]).decode()
    assert key_b64 not in slurm_cluster.first.stdout
    for event in slurm_cluster.first.events:
        assert key_b64 not in repr(event), "the munge key leaked into a job event"
