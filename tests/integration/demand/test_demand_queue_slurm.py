"""The pending queue read from a real slurmctld with ONE squeue: constraint, partition, cores,
submit time, held jobs, array elements; then the demand_plan module (through ansible-runner, as
AWX runs it) plans from that queue, in check mode too."""

from __future__ import annotations

import datetime
import os
import re

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import read_pending
from tests.testbed.ansible import run_playbook

HERE = os.path.dirname(os.path.abspath(__file__))

TYPES = [
    {"name": "typeA", "image": "worker-a", "vcpus": 2, "min_slots": 1},
    {"name": "typeB", "image": "worker-b", "vcpus": 2, "features": ["ssd"]},
    {"name": "typeC", "image": "worker-c", "vcpus": 4},
]


@pytest.fixture(scope="module")
def queue(private_slurm):
    return {
        "b1": private_slurm.sbatch("--constraint=typeB", "-c", "2"),
        "b2": private_slurm.sbatch("--constraint=typeB&ssd", "-p", "short"),
        "a_or_b": private_slurm.sbatch("--constraint=typeA|typeB"),
        "c_array": private_slurm.sbatch("--constraint=typeC", "--array=1-3"),
        "held": private_slurm.sbatch("--constraint=typeB", "-H"),
        "free": private_slurm.sbatch(),
        "two_nodes": private_slurm.sbatch("--constraint=[typeA*1&typeB*1]", "-N", "2", "-c", "2"),
    }


def test_one_squeue_reads_every_pending_job(private_slurm, queue):
    adapter = get_adapter("slurm", slurm_conf=private_slurm.conf)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    pending = read_pending(adapter)
    assert adapter.commands_run == 1
    record = os.environ.get("BVT_RECORD_SQUEUE")  # refresh tests/unit/fixtures/slurm/squeue_pending.txt
    if record:
        with open(record, "w") as handle:
            handle.write(adapter.pending_jobs_output())
    by_id = {job.job_id: job for job in pending}
    # the array's three elements are three jobs (squeue -r)
    assert {f"{queue['c_array']}_{i}" for i in (1, 2, 3)} <= set(by_id)
    b1 = by_id[queue["b1"]]
    assert (b1.constraint, b1.partition, b1.cores, b1.eligible) == ("typeB", "work", 2, True)
    assert before <= b1.submitted_at <= datetime.datetime.now(datetime.timezone.utc)  # type: ignore[operator]
    assert (by_id[queue["b2"]].constraint, by_id[queue["b2"]].partition) == ("typeB&ssd", "short")
    assert by_id[queue["a_or_b"]].constraint == "typeA|typeB"
    assert by_id[queue["held"]].eligible is False and by_id[queue["held"]].reason.startswith("JobHeld")
    assert by_id[queue["free"]].constraint == ""
    # a multi-node job with a count per feature: one alternative needing typeA AND typeB
    assert {"typeA", "typeB"} <= set(re.findall(r"type[ABC]", by_id[queue["two_nodes"]].constraint))
    assert by_id[queue["two_nodes"]].cores >= 2


def run_plan(private_slurm, check: bool):  # type: ignore[no-untyped-def]
    result = run_playbook(
        os.path.join(HERE, "demand_plan.yml"),
        extravars={
            "dp": {
                "worker_types": TYPES,
                "slots": [
                    {"name": "s1", "hypervisor": "hv1", "worker_type": "typeA", "state": "active", "jobs": 1},
                    {"name": "s2", "hypervisor": "hv1", "worker_type": "typeA", "state": "active", "jobs": 0},
                    {"name": "s3", "hypervisor": "hv1", "worker_type": "typeA", "state": "drained", "jobs": 0},
                ],
                "hypervisors": [{"name": "hv1", "places": 3, "default_type": "typeA"}],
                "policy": {"hold_seconds": 0, "min_slot_age_seconds": 0, "max_retypes_per_run": 1},
                "slurm_conf": private_slurm.conf,
            }
        },
        check=check,
    )
    results = result.results("Plan")
    assert results, result.stdout[-3000:]
    return results[-1]


@pytest.mark.parametrize("check", [False, True])
def test_demand_plan_module_plans_from_the_real_queue(private_slurm, queue, check):
    plan = run_plan(private_slurm, check)
    assert plan["changed"] is False and plan["commands_run"] == 1
    # counted: b1 (2 cores), b2, a_or_b (first declared type that fits: typeA), 3 array elements of typeC;
    # not counted: the held job, the job without constraint
    # and the two-node job needing typeA and typeB together, which no single type has (unmatched)
    assert plan["queue"] == {"pending": 9, "eligible": 8, "counted": 6, "young": 0, "untyped": 1, "unmatched": 1}
    assert plan["targets"]["typeB"]["pending_cores"] == 3 and plan["targets"]["typeC"]["pending_jobs"] == 3
    # 3 places shared fairly: one each. typeA keeps its busy slot (its minimum); the drained place
    # goes to typeB, and the idle typeA slot is drained to make room for typeC
    assert plan["targets"]["typeA"]["target"] == plan["targets"]["typeB"]["target"] == 1
    assert [(f["slot"], f["type"]) for f in plan["fill"]] == [("s3", "typeB")]
    assert [(d["slot"], d["type"], d["for"]) for d in plan["drain"]] == [("s2", "typeA", "typeC")]
