"""$JOBFEATURES: the slurm.conf lines, the cloud-init files, and the TaskProlog and Epilog
scripts themselves, run here by /bin/sh with a stand-in ``squeue`` on PATH (the real one runs in
tests/integration/farm/test_farm_features.py)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _mjf
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_create import seed_files

CONF = "ClusterName=farm\nSlurmctldHost=ctl\nNodeName=n1 CPUs=1\n"


def test_slurm_conf_gets_the_prolog_and_epilog_once_and_keeps_a_sites_own():
    text = _mjf.slurm_conf_with_job_features(CONF)
    assert text.startswith(CONF) and text.endswith(f"TaskProlog={_mjf.TASK_PROLOG}\nEpilog={_mjf.EPILOG}\n")
    own = CONF + "TaskProlog=/site/prolog\nepilog=/site/epilog\n"
    assert _mjf.slurm_conf_with_job_features(own) == own
    assert _mjf.slurm_conf_with_job_features(CONF + "Epilog=/x\n").endswith(f"TaskProlog={_mjf.TASK_PROLOG}\n")


def _scripts(tmp_path):
    files = {f["path"]: f for f in _mjf.cloud_init_job_features()["write_files"]}
    assert files[_mjf.TASK_PROLOG]["permissions"] == "0755"
    assert files["/etc/tmpfiles.d/batchvirt-jobfeatures.conf"]["content"] == "d /run/jobfeatures 1777 root root -\n"
    out = {}
    for path in (_mjf.TASK_PROLOG, _mjf.EPILOG):
        local = tmp_path / os.path.basename(path)
        local.write_text(files[path]["content"].replace(_mjf.JOBFEATURES_DIR, str(tmp_path / "jf")))
        local.chmod(0o755)
        out[path] = str(local)
    (tmp_path / "jf").mkdir()
    return out


def _run(script, tmp_path, limit, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\necho '{limit}'\n")
    squeue.chmod(0o755)
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    return subprocess.run(["/bin/sh", script], capture_output=True, text=True, env=environ, check=False, timeout=30)


@pytest.mark.parametrize(
    ("limit", "seconds"),
    [("5:00", "300"), ("01:00:00", "3600"), ("2-00:08:09", str(2 * 86400 + 489)), ("UNLIMITED", None)],
)
def test_the_task_prolog_writes_the_job_files_and_exports_jobfeatures(tmp_path, limit, seconds):
    scripts = _scripts(tmp_path)
    before = int(time.time())
    done = _run(scripts[_mjf.TASK_PROLOG], tmp_path, limit, SLURM_JOB_ID="42", SLURM_CPUS_ON_NODE="2")
    directory = tmp_path / "jf" / "42"
    assert done.returncode == 0 and done.stdout == f"export JOBFEATURES={directory}\n", done
    read = {p.name: p.read_text().strip() for p in directory.iterdir()}
    assert read.pop("wall_limit_secs", None) == seconds
    assert before <= int(read.pop("jobstart_secs")) <= int(time.time())
    assert read == {"job_id": "42", "allocated_cpu": "2"}
    # the Epilog removes it; a hostile job id removes nothing else
    assert _run(scripts[_mjf.EPILOG], tmp_path, limit, SLURM_JOB_ID="../..").returncode == 0
    assert directory.exists() and (tmp_path / "jf").exists()
    assert _run(scripts[_mjf.EPILOG], tmp_path, limit, SLURM_JOB_ID="42").returncode == 0
    assert not directory.exists()


def test_the_task_prolog_outside_a_job_or_with_memory(tmp_path):
    scripts = _scripts(tmp_path)
    assert _run(scripts[_mjf.TASK_PROLOG], tmp_path, "5:00").stdout == ""  # no SLURM_JOB_ID
    _run(scripts[_mjf.TASK_PROLOG], tmp_path, "5:00", SLURM_JOB_ID="7", SLURM_MEM_PER_NODE="200")
    assert (tmp_path / "jf" / "7" / "max_rss_bytes").read_text() == f"{200 * 1048576}\n"


def _plan(machine_features, slurm_conf):
    from types import SimpleNamespace

    batch = SimpleNamespace(
        controller="10.0.2.2",
        system="slurm",
        node="hv1-slot-01",
        munge_key=b"k" * 32,
        features=(),
        slurm_conf=slurm_conf,
        dynamic=False,
        controller_port=6817,
    )
    return SimpleNamespace(
        name="hv1-slot-01",
        batch=batch,
        seed=SimpleNamespace(
            cloud_init=None, ssh_authorized_keys=(), gateway="", dns=(), machine_features=machine_features
        ),
        spec=SimpleNamespace(vcpus=1),
    )


def _meta():
    import datetime
    from types import SimpleNamespace

    deadline = datetime.datetime(2026, 11, 24, tzinfo=datetime.timezone.utc)
    return SimpleNamespace(
        deadline=deadline,
        created_at=deadline - datetime.timedelta(days=3),
        mac="52:54:00:00:00:01",
        address="",
        network_mode="user",
    )


def _doc(plan):
    import json

    return json.loads(seed_files(plan, _meta())["user-data"].split("\n", 1)[1])


def test_a_slot_with_a_slurm_conf_gets_job_features_in_its_user_data():
    doc = _doc(_plan({}, CONF))
    by_path = {f["path"]: f["content"] for f in doc["write_files"]}
    assert by_path["/etc/slurm/slurm.conf"] == _mjf.slurm_conf_with_job_features(CONF)
    assert "export JOBFEATURES=" in by_path[_mjf.TASK_PROLOG] and _mjf.EPILOG in by_path
    # the directory exists before slurmd is restarted
    assert doc["runcmd"][0] == ["install", "-d", "-m", "1777", "/run/jobfeatures"]


def test_a_configless_slot_gets_the_scripts_its_controller_can_name():
    # the VM takes the controller's slurm.conf: the slot writes no slurm.conf, but the scripts the
    # controller's TaskProlog/Epilog name (farm_batch_controller_job_features) are there
    doc = _doc(_plan({}, None))
    by_path = {f["path"]: f["content"] for f in doc["write_files"]}
    assert "/etc/slurm/slurm.conf" not in by_path
    assert "export JOBFEATURES=" in by_path[_mjf.TASK_PROLOG] and _mjf.EPILOG in by_path
    assert doc["runcmd"][0] == ["install", "-d", "-m", "1777", "/run/jobfeatures"]


@pytest.mark.parametrize(
    ("features", "conf"),
    [({"job_features": False}, CONF), (None, CONF), ({"job_features": False}, None)],
    ids=["turned-off", "no-machine-features", "configless-turned-off"],
)
def test_no_job_features_where_the_slot_cannot_or_should_not(features, conf):
    doc = _doc(_plan(features, conf))
    by_path = {f["path"]: f["content"] for f in doc["write_files"]}
    assert _mjf.TASK_PROLOG not in by_path and "TaskProlog" not in by_path.get("/etc/slurm/slurm.conf", "")
