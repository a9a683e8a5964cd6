"""batch_node against a real slurmctld and real slurmd processes, with real jobs.

The tests run in file order on one session cluster (see conftest.py); each leaves the
nodes idle and undrained for the next one, the last one stops the controller.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.integration.batch.conftest import SlurmCluster


def submit(cluster: SlurmCluster, node: str, seconds: int) -> tuple:
    out = os.path.join(cluster.tmp, "out", f"job-{node}-{time.monotonic_ns()}.out")
    proc = cluster.run("sbatch", "--parsable", "-w", node, "-o", out, "--wrap", f"sleep {seconds}; echo status=$?")
    job = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
        if state == "RUNNING":
            return job, out
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not start on {node}: {state!r}")


def job_info(cluster: SlurmCluster, job: str) -> str:
    return cluster.run("scontrol", "-o", "show", "job", job).stdout


def wait_job_end(cluster: SlurmCluster, job: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    info = ""
    while time.monotonic() < deadline:
        info = job_info(cluster, job)
        if "JobState=COMPLETED" in info or "JobState=FAILED" in info or "JobState=CANCELLED" in info:
            return info
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not end: {info}")


def test_registered_nodes_are_idle(slurm_cluster):
    res = slurm_cluster.batch_node(name=["bvtn1", "bvtn2"], state="present", wait=True, wait_timeout=20)
    assert not res.get("failed"), res.get("msg")
    assert not res["changed"]
    for node in ("bvtn1", "bvtn2"):
        assert res["nodes"][node]["state"] == "idle"
        assert res["nodes"][node]["registered"] is True
        assert res["nodes"][node]["jobs"] == 0
        assert res["nodes"][node]["features"] == ["bvt"]


def test_drain_waits_for_the_running_job_which_completes(slurm_cluster):
    job, out = submit(slurm_cluster, "bvtn1", 8)
    # check mode: reports the change, drains nothing
    res = slurm_cluster.manage("bvtn1", "drained", reason="kernel update", check_mode=True)
    assert res["changed"] and res["changed_nodes"] == ["bvtn1"]
    assert slurm_cluster.wait_state("bvtn1", lambda s: s in ("allocated", "mixed")) in ("allocated", "mixed")

    t0 = time.monotonic()
    res = slurm_cluster.batch_node(
        name="bvtn1", state="drained", reason="kernel update", wait=True, wait_timeout=60, poll_interval=1
    )
    assert not res.get("failed"), res.get("msg")
    assert res["changed"]
    node = res["nodes"]["bvtn1"]
    assert node["state"] == "drained" and node["jobs"] == 0 and node["reason"] == "kernel update"
    assert time.monotonic() - t0 > 2, "the drain did not wait for the job"
    info = wait_job_end(slurm_cluster, job)
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info
    with open(out) as handle:
        assert handle.read().strip() == "status=0"

    again = slurm_cluster.manage("bvtn1", "drained", reason="kernel update")
    assert not again["changed"], "draining a drained node with the same reason must change nothing"


def test_resume_takes_jobs_again(slurm_cluster):
    res = slurm_cluster.manage("bvtn1", "resumed", wait=True, wait_timeout=20, poll_interval=0.5)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] and res["nodes"]["bvtn1"]["state"] == "idle"
    again = slurm_cluster.manage("bvtn1", "resumed")
    assert not again["changed"]
    job, out = submit(slurm_cluster, "bvtn1", 1)
    info = wait_job_end(slurm_cluster, job)
    assert "JobState=COMPLETED" in info and "NodeList=bvtn1" in info, info


def test_drain_timeout_fails_clearly_and_kills_nothing(slurm_cluster):
    job, _out = submit(slurm_cluster, "bvtn2", 60)
    try:
        res = slurm_cluster.batch_node(
            name=["bvtn1", "bvtn2"], state="drained", reason="timeout test", wait=True, wait_timeout=3, poll_interval=1
        )
        assert res.get("failed")
        msg = res["msg"]
        assert "drain not finished after 3 s" in msg
        assert "still running jobs: bvtn2 (1 job)" in msg
        assert "left draining and no job was killed" in msg
        assert "bvtn1" not in msg.split("still running jobs:")[1], msg
        assert res["nodes"]["bvtn2"]["state"] == "draining"
        assert slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING"
        assert slurm_cluster.wait_state("bvtn2", lambda s: True) == "draining"
    finally:
        slurm_cluster.run("scancel", job, check=False)
    res = slurm_cluster.manage(["bvtn1", "bvtn2"], "resumed", wait=True, wait_timeout=20, poll_interval=0.5)
    assert sorted(res["changed_nodes"]) == ["bvtn1", "bvtn2"]
    slurm_cluster.wait_state("bvtn2", lambda s: s == "idle")


def test_unknown_node_is_a_clear_error(slurm_cluster):
    res = slurm_cluster.manage(["bvtn1", "nosuchnode"], "drained")
    assert res.get("failed")
    assert "unknown node(s) nosuchnode" in res["msg"]
    assert "bvtn1" not in res["msg"]
    assert slurm_cluster.wait_state("bvtn1", lambda s: True) == "idle", "nothing must be drained"


@pytest.fixture
def foreign_munge(slurm_cluster):
    """A second munged with another key, and a slurm.conf copy that uses it."""
    base = os.path.join(slurm_cluster.tmp, "munge2")
    os.makedirs(base)
    os.chmod(base, 0o711)
    key = os.path.join(base, "munge.key")
    with open(key, "wb") as handle:
        handle.write(os.urandom(128))
    os.chmod(key, 0o400)
    shutil.chown(base, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    sock = os.path.join(base, "sock")
    subprocess.run(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            f"--key-file={key}",
            f"--socket={sock}",
            f"--pid-file={base}/pid",
            f"--log-file={base}/log",
            f"--seed-file={base}/seed",
        ],
        check=True,
    )
    conf = os.path.join(slurm_cluster.tmp, "slurm-foreign.conf")
    with open(slurm_cluster.slurm_conf) as src, open(conf, "w") as dst:
        dst.write(src.read().replace("AuthType=auth/munge", f"AuthType=auth/munge\nAuthInfo=socket={sock}"))
    yield conf
    with open(f"{base}/pid") as handle:
        pid = int(handle.read().strip())
    os.kill(pid, 15)


def test_munge_key_mismatch_is_explained(slurm_cluster, foreign_munge):
    os.makedirs(os.path.join(slurm_cluster.tmp, "spool", "bvtn3"), exist_ok=True)
    slurm_cluster.start_slurmd("bvtn3", ["-f", foreign_munge])
    try:
        res = slurm_cluster.manage("bvtn3", "present", wait=True, wait_timeout=6, poll_interval=1)
        assert res.get("failed")
        assert "not registered after 6 s" in res["msg"]
        assert "munge key mismatch" in res["msg"], res["msg"]
        # the admin's commands from a host with the wrong key are explained too
        res = slurm_cluster.manage("bvtn1", "drained", slurm_conf=foreign_munge)
        assert res.get("failed")
        assert "authentication failure" in res["msg"] and "munge key mismatch" in res["msg"], res["msg"]
    finally:
        slurm_cluster.stop_slurmd("bvtn3")


def test_controller_down_is_a_clear_error(slurm_cluster):
    slurm_cluster.stop_controller()
    res = slurm_cluster.manage("bvtn1", "drained")
    assert res.get("failed")
    assert re.search(r"controller \(slurmctld\) does not answer", res["msg"]), res["msg"]
    assert "service slurmctld start" in res["msg"]
