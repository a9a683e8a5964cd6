"""The farm follows demand on booted VMs (issue 17, end to end): two slots of worker type bvta,
one running a job; jobs arrive that need type bvtb (``sbatch --constraint=bvtb``: accepted,
pending). ``rebalance.yml`` drains the IDLE bvta slot for re-typing (never the busy one, whose job
ends with exit 0), the next run re-creates it as bvtb, its new VM registers with feature bvtb and
the bvtb jobs run there and exit 0; the inventory groups the slot by its new type and its metadata
records it. Then bvtb demand is gone and the operator raises bvta's minimum to 2: the next run
drains the bvtb slot to re-type it back to bvta. The run after it would re-create it as bvta, the
same fill as the second run's with the other type: the test stops at the drain (it saves a VM
boot), which leaves one slot drained; only the slot-removal test, which needs a running guest and
not a slot taking jobs, comes after it in this package.

Both types boot the farm's one staged worker image (512 MiB, one vCPU: TCG is slow); they differ
in their batch features. The farm's slurm.conf declares a placeholder node (farmbed.TYPES_NODE)
carrying every type's features, so that Slurm accepts a constraint before a slot of that type
exists (docs/demand.md).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

from tests.integration.farm import farmbed
from tests.integration.inventory.conftest import run_inventory
from tests.testbed.ansible import ROOT, run_playbook

A, B = farmbed.WORKER_TYPES


def _types(min_a: int) -> List[Dict[str, Any]]:
    common = {
        "image": farmbed.IDENTIFIER,
        "vcpus": 1,
        "memory_mib": 512,
        "disk_gib": 4,  # the newest worker image's size: the golden node's 4 GiB disk (the base image is 2)
        "features": ["bvtfarm"],
        "lifetime": 7 * 86400,
        "max_job_walltime": 10,
    }
    return [dict(common, name=A, min_slots=min_a), dict(common, name=B, min_slots=0)]


def _inventory(farm: farmbed.Farm) -> str:
    """The farm's inventory file with the slots grouped by worker type (worker_<type>)."""
    with open(farm.inventory) as handle:
        config = json.load(handle)
    config["keyed_groups"] = [{"key": "farm_slot.worker_type", "prefix": "worker"}]
    path = os.path.join(farm.tmp, "retype.farm.slots.yml")
    with open(path, "w") as handle:
        json.dump(config, handle)
    return path


def _clock(farm: farmbed.Farm) -> str:
    """The clock the rebalance runs see: now, or a minute after the newest slot's creation when the
    package's earlier tests re-created slots at injected times ahead (the recycle tests move the
    clock a week on). A drain that started before its slot was created is refused by the
    accounting, as it should be; the farm's clock only moves forwards."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, utcnow

    now = format_time(utcnow())
    newest = max(meta["created_at"] for meta in farm.metadata().values())
    return max(now, farmbed.iso(newest, 60))


def _rebalance(farm: farmbed.Farm, inventory: str, min_a: int) -> Dict[str, Any]:
    result = run_playbook(
        os.path.join(ROOT, "playbooks", "rebalance.yml"),
        inventory=inventory,
        extravars=dict(
            farm.extravars,
            farm_worker_types=_types(min_a),
            farm_rebalance_hypervisors=[{"name": "localhost", "places": farm.count, "default_type": A}],
            farm_rebalance_policy={"max_retypes_per_run": 2, "hold_seconds": 0, "min_slot_age_seconds": 0},
            farm_rebalance_slurm_conf=farmbed.SLURM_CONF,
        ),
        envvars={"SLURM_CONF": farmbed.SLURM_CONF, "BATCHVIRT_FARM_NOW": _clock(farm)},
    )
    assert result.rc == 0, result.stdout[-6000:]
    summary = result.results("Show the summary")
    assert summary, result.stdout[-3000:]
    return summary[-1]["farm_rebalance_summary"]


def _sbatch(*argv: str) -> str:
    """Submit a job; its id. A refused submission fails here with Slurm's message."""
    out = farmbed.slurm(
        "sbatch", "--parsable", "-N1", "-n1", "-o", "/dev/null", "--chdir=/tmp", "-J", "bvt-retype", *argv
    )
    return out.strip().split(";")[0]


def _job(job: str) -> Dict[str, str]:
    """JobState, ExitCode, NodeList, Features of a job (kept MinJobAge=3600 s after its end)."""
    out = farmbed.slurm("scontrol", "-o", "show", "job", job, check=False)
    fields = {}
    for word in out.split():
        key, _sep, value = word.partition("=")
        if key in ("JobState", "ExitCode", "NodeList", "Features", "Reason"):
            fields[key] = value
    return fields


def _wait_job(job: str, timeout: float = 600) -> Dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        info = _job(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        assert time.monotonic() < deadline, f"job {job} has not ended after {timeout} s: {info}"
        time.sleep(2)


def _features(node: str) -> List[str]:
    out = farmbed.slurm("scontrol", "-o", "show", "node", node)
    for word in out.split():
        if word.startswith("ActiveFeatures="):
            return sorted(f for f in word.split("=", 1)[1].split(",") if f and f != "(null)")
    return []


def _restore(farm: farmbed.Farm, inventory: str) -> None:
    """After a failure part-way: the later farm tests want two slots taking jobs. Cancel this test's
    jobs, then let rebalance take the slots back to bvta (best effort: the failure is what the
    report shows, this only keeps it from cascading into the next tests)."""
    farmbed.slurm("scancel", "-n", "bvt-retype", check=False)
    for _run in range(2):
        meta = farm.metadata()
        if all(
            m.get("running") and (m.get("worker_type") or A) == A and not (m.get("drain") or {}).get("requested")
            for m in meta.values()
        ):
            return
        try:
            _rebalance(farm, inventory, min_a=2)
        except Exception as exc:  # noqa: BLE001 - reported, the test's own failure is what counts
            print(f"retype: restoring the farm failed: {exc}")
            return


def test_rebalance_retypes_an_idle_slot_for_pending_constraint_jobs_and_back(farm):
    inventory = _inventory(farm)
    try:
        _retype_and_back(farm, inventory)
    except BaseException:
        _restore(farm, inventory)
        raise


def _retype_and_back(farm: farmbed.Farm, inventory: str) -> None:
    start = time.monotonic()
    figures: Dict[str, float] = {}
    busy, idle = farm.names[0], farm.names[1]
    farm.wait_accepting()
    before = farm.metadata()
    assert all(not m.get("worker_type") for m in before.values()), before  # untyped: the default bvta

    # a job holds the slot the plan would otherwise drain first; bvtb jobs arrive
    # it must outlast the first run (the plan sees the slot busy); the second one boots a VM
    a_job = farm.submit(busy, 0, command="sleep 90")
    deadline = time.monotonic() + 300
    while farm.running_jobs().get(busy, 0) < 1:
        assert time.monotonic() < deadline, f"the bvta job did not start: {farm.node_states()}"
        time.sleep(2)
    # accepted although no slot has feature bvtb yet (the placeholder node declares it), pending
    b_ids = [_sbatch(f"--constraint={B}", "--wrap", "hostname") for _i in range(2)]
    for job in b_ids:
        assert _job(job).get("JobState") == "PENDING" and _job(job).get("Features") == B, _job(job)

    # run 1: the idle slot is drained for re-typing, the busy one is left alone
    t0 = time.monotonic()
    first = _rebalance(farm, inventory, min_a=1)
    figures["run1_drain"] = time.monotonic() - t0
    assert list(first["drained"]) == [idle], first
    assert first["drained"][idle]["for"] == B, first
    assert not first["filled"] and not first["failed"], first
    assert farm.running_jobs().get(busy, 0) == 1, "the busy bvta slot's job must go on running"
    assert "drain" in farm.node_states()[idle], farm.node_states()
    assert farm.node_states()[busy].rstrip("*") in ("allocated", "mixed"), farm.node_states()

    # run 2: the drained slot is re-created as bvtb, registers with feature bvtb, takes the jobs
    t0 = time.monotonic()
    second = _rebalance(farm, inventory, min_a=1)
    figures["run2_retype_boot"] = time.monotonic() - t0
    assert list(second["filled"]) == [idle], second
    assert second["filled"][idle]["type"] == B and not second["drained"] and not second["failed"], second
    assert farm.metadata()[idle]["worker_type"] == B
    assert B in _features(idle), _features(idle)
    assert B not in _features(busy), _features(busy)
    groups = run_inventory(inventory, env={"SLURM_CONF": farmbed.SLURM_CONF})
    assert groups.hosts(f"worker_{B}") == [idle], groups.data.keys()

    t0 = time.monotonic()
    for job in b_ids:
        info = _wait_job(job)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"bvtb job {job}: {info}"
        assert info["NodeList"] == idle, f"bvtb job {job} ran on {info['NodeList']!r}, not on the bvtb slot {idle}"
    figures["b_jobs_after_retype"] = time.monotonic() - t0
    a_job.wait(timeout=600)
    assert a_job.returncode == 0, f"the bvta job was hurt by the rebalance: exit {a_job.returncode}"

    # bvtb demand is gone, bvta's minimum rises to 2: the next run drains the bvtb slot for bvta
    t0 = time.monotonic()
    third = _rebalance(farm, inventory, min_a=2)
    figures["run3_drain_back"] = time.monotonic() - t0
    assert list(third["drained"]) == [idle] and third["drained"][idle]["for"] == A, third
    assert not third["filled"] and not third["failed"], third
    assert "drain" in farm.node_states()[idle], farm.node_states()
    assert farm.metadata()[idle]["drain"]["owner"] == "rebalance", farm.metadata()[idle]
    figures["total"] = time.monotonic() - start
    print("retype figures (s):", json.dumps({k: round(v, 1) for k, v in figures.items()}))
