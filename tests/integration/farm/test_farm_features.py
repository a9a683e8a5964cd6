"""HEPiX Machine/Job Features on the REAL farm (slurmctld on the host, two slot VMs under QEMU
with the QEMU guest agent): an early drain through the slot_drain module moves
$MACHINEFEATURES/shutdowntime inside the running VM (seen by a real Slurm job), the other slot
keeps its deadline, and clearing the drain writes the deadline back (the farm is left as found
for the other farm tests that share the fixture); and $JOBFEATURES per job from the slot's Slurm
TaskProlog."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time
from tests.integration.farm import farmbed
from tests.testbed import slurmcli
from tests.testbed.ansible import run_playbook

pytestmark = pytest.mark.slow

OPERATION = "bvt-features"
SHUTDOWNTIME = "/etc/machinefeatures/shutdowntime"


def _epoch(value: str) -> int:
    return int(parse_time(value, "time").timestamp())


def _drain(farm, name: str, state: str):
    result = run_playbook(
        os.path.join(farmbed.PLAYBOOKS, "slot_drain.yml"),
        extravars=dict(
            farm.extravars,
            bvt_drain_slots=[name],
            bvt_drain_state=state,
            bvt_drain_operation=OPERATION,
            bvt_drain_reason="bvt: retire early",
        ),
    )
    assert result.rc == 0, result.stdout[-4000:]
    return result.results("Claim or clear the drain")[0]


def _job_sees(farm, name: str, shutdowntime: int) -> None:
    """A job on ``name`` (login shell, as pilots start) reads this shutdowntime; exit code says so."""
    check = f'test "$(cat "$MACHINEFEATURES/shutdowntime")" = {shutdowntime}'
    seen = f'echo "shutdowntime=$(cat "$MACHINEFEATURES/shutdowntime")" >&2; {check}'
    job = farm.submit(name, 0, command=f"bash -lc {shlex.quote(seen)}")
    _out, err = job.communicate(timeout=300)
    assert job.returncode == 0, (name, shutdowntime, err)


def _wait_for_agent(name: str, timeout: float = 300) -> bytes:
    """The guest agent answers (it starts with the VM's boot): the shutdowntime file read over it."""
    import libvirt

    from ansible_collections.batchvirt.farm.plugins.module_utils import _guest_agent

    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _guest_agent.read_file(dom, SHUTDOWNTIME, timeout=10)
            except _guest_agent.GuestAgentError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the guest agent of {name} does not answer: {exc.status}") from None
                time.sleep(3)
    finally:
        conn.close()


def test_an_early_drain_moves_shutdowntime_inside_the_vm(farm):
    farm.wait_accepting(timeout=300)
    drained, other = farm.names[0], farm.names[1]
    before = farm.metadata()
    deadline = _epoch(before[drained]["deadline"])
    other_deadline = _epoch(before[other]["deadline"])
    assert _wait_for_agent(drained).strip() == str(deadline).encode()

    try:
        claimed = _drain(farm, drained, "requested")
        meta = farm.metadata()[drained]
        walltime = deadline - _epoch(meta["drain_at"])
        moved = _epoch(meta["drain"]["requested_at"]) + walltime
        entry = claimed["slots"][0]
        assert claimed["changed"] and entry["claimed"], claimed
        assert (entry["machinefeatures"], entry["shutdowntime"]) == ("updated", moved), entry
        assert moved < deadline
        # inside the VM: the agent's view and a real Slurm job's
        assert _wait_for_agent(drained).strip() == str(moved).encode()
        _job_sees(farm, drained, moved)
        _job_sees(farm, other, other_deadline)  # the other slot keeps its deadline
        # a rerun records nothing new and writes the same time again
        again = _drain(farm, drained, "requested")
        assert not again["changed"] and again["slots"][0]["shutdowntime"] == moved, again
    finally:
        cleared = _drain(farm, drained, "cleared")
    entry = cleared["slots"][0]
    assert cleared["changed"] and (entry["machinefeatures"], entry["shutdowntime"]) == ("updated", deadline), entry
    _job_sees(farm, drained, deadline)
    assert farm.metadata() == before


def _sbatch(node: str, command: str, *options: str) -> subprocess.CompletedProcess:
    """``sbatch --wait --parsable`` of ``command`` on ``node``: stdout is the job id, the exit code the job's."""
    return subprocess.run(
        ["sbatch", "--wait", "--parsable", "-w", node, "-N1", "-n1", "-o", "/dev/null", "--chdir=/tmp", *options]
        + ["-J", "bvt-features", "--wrap", command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=slurmcli.env(farmbed.SLURM_CONF),
    )


def test_jobs_read_their_jobfeatures(farm):
    """$JOBFEATURES from the slot's TaskProlog: a job submitted with --time=7 reads wall_limit_secs
    420, its own job id, its CPUs and its start; the Epilog removes the directory when it ends."""
    farm.wait_accepting(timeout=300)
    node = farm.names[1]
    check = (
        'test -n "$JOBFEATURES" && test "$(cat "$JOBFEATURES/wall_limit_secs")" = 420'
        ' && test "$(cat "$JOBFEATURES/job_id")" = "$SLURM_JOB_ID"'
        ' && test "$(cat "$JOBFEATURES/allocated_cpu")" -ge 1'
        ' && test "$(cat "$JOBFEATURES/jobstart_secs")" -le "$(date +%s)"'
        ' && test "$(cat "$JOBFEATURES/jobstart_secs")" -gt "$(( $(date +%s) - 600 ))"'
    )
    first = _sbatch(node, f"sh -c {shlex.quote(check)}", "--time=7")
    assert first.returncode == 0, (first.stdout, first.stderr)
    job_id = first.stdout.strip().split(";")[0]
    assert job_id.isdigit(), first.stdout
    # the next job on the node: the first one's directory is gone, its own is there
    gone = f'test ! -e /run/jobfeatures/{job_id} && test -d "$JOBFEATURES"'
    second = _sbatch(node, f"sh -c {shlex.quote(gone)}", "--time=3")
    assert second.returncode == 0, (second.stdout, second.stderr)
