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


def _conf_after(run) -> str:
    """The slurm.conf the role would write (its template task's diff in check mode)."""
    assert run.rc == 0, run.stdout[-3000:]
    diff = run.results("Write slurm.conf")[0]["diff"]
    return (diff[0] if isinstance(diff, list) else diff)["after"]


def test_job_features_for_configless_workers_name_the_slot_scripts(slurm_cluster):
    """With farm_batch_controller_job_features the controller's slurm.conf (which configless
    workers take) names the TaskProlog and Epilog the slot module writes into every VM; a site's
    own TaskProlog is kept. Check mode: the running controller's nodes have no such scripts."""
    from ansible_collections.batchvirt.farm.plugins.module_utils import _mjf
    from tests.integration.batch.conftest import HERE, LOCALHOST
    from tests.testbed.ansible import run_playbook

    playbook = os.path.join(HERE, "controller.yml")
    base = dict(slurm_cluster.extravars, farm_batch_controller_install_packages=False)
    conf = _conf_after(
        run_playbook(
            playbook,
            extravars=dict(base, farm_batch_controller_job_features=True),
            inventory=LOCALHOST,
            check=True,
            diff=True,
        )
    )
    assert f"TaskProlog={_mjf.TASK_PROLOG}\n" in conf and f"Epilog={_mjf.EPILOG}\n" in conf, conf
    site = dict(
        base, farm_batch_controller_job_features=True, farm_batch_controller_extra_config={"TaskProlog": "/site/prolog"}
    )
    conf = _conf_after(run_playbook(playbook, extravars=site, inventory=LOCALHOST, check=True, diff=True))
    assert conf.count("TaskProlog=") == 1 and "TaskProlog=/site/prolog\n" in conf and f"Epilog={_mjf.EPILOG}\n" in conf
    # off by default: the conf on disk names neither
    with open(slurm_cluster.slurm_conf) as handle:
        assert "batchvirt-jobfeatures" not in handle.read()
