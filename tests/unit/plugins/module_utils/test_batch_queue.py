"""The pending queue: Slurm squeue output recorded from a real slurmctld, HTCondor condor_q output
in its documented form, the one-command read through each adapter, and queue data given as an option."""

from __future__ import annotations

import datetime
import os
from typing import List

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import (
    SQUEUE_PENDING_ARGS,
    QueueError,
    jobs_from_data,
    parse_condor_q_json,
    parse_squeue_pending,
    read_pending,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
UTC = datetime.timezone.utc


def fixture(*parts: str) -> str:
    with open(os.path.join(FIXTURES, *parts)) as handle:
        return handle.read()


def test_recorded_squeue_pending():
    jobs = parse_squeue_pending(fixture("slurm", "squeue_pending.txt"), tz=UTC)
    by_id = {j.job_id: j for j in jobs}
    assert (by_id["1"].constraint, by_id["1"].partition, by_id["1"].cores) == ("typeB", "work", 2)
    assert by_id["2"].constraint == "typeB&ssd" and by_id["2"].partition == "short"
    assert by_id["3"].constraint == "typeA|typeB"
    assert {"4_1", "4_2", "4_3"} <= set(by_id)
    assert by_id["5"].eligible is False and by_id["5"].reason == "JobHeldUser"
    assert by_id["6"].constraint == ""  # squeue prints (null)
    assert all(j.submitted_at is not None and j.submitted_at.tzinfo is UTC for j in jobs)


def test_squeue_local_time_is_turned_into_utc():
    line = "9\twork\t1\t2026-12-03T10:00:00\tResources\ttypeA\n"
    (job,) = parse_squeue_pending(line, tz=datetime.timezone(datetime.timedelta(hours=1)))
    assert job.submitted_at == datetime.datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9 work 1 2026-12-03T10:00:00 Resources typeA", "has 1 tab-separated fields, expected 6"),
        ("9\twork\tmany\t2026-12-03T10:00:00\tResources\ttypeA", "cores 'many' is not a number"),
    ],
)
def test_malformed_squeue_lines_are_refused(text, message):  # type: ignore[no-untyped-def]
    with pytest.raises(QueueError, match=message):
        parse_squeue_pending(text)


def test_condor_q_idle_jobs():
    jobs = parse_condor_q_json(fixture("htcondor", "condor_q_idle.json"))
    assert [(j.job_id, j.constraint, j.cores, j.partition) for j in jobs] == [
        ("101.0", "typeB", 2, "atlas"),
        ("102.3", "typeC", 1, ""),
        ("103.0", "", 1, ""),
    ]
    assert jobs[0].submitted_at == datetime.datetime.fromtimestamp(1796284800, UTC)


@pytest.mark.parametrize(("text", "message"), [("{not json", "no valid JSON"), ('{"a": 1}', "not print a list")])
def test_bad_condor_q_output_is_refused(text, message):  # type: ignore[no-untyped-def]
    with pytest.raises(QueueError, match=message):
        parse_condor_q_json(text)


def test_empty_condor_q_is_no_job():
    assert parse_condor_q_json("") == [] and parse_condor_q_json("[]") == []


def recorder(output: str, calls: List[List[str]]):  # type: ignore[no-untyped-def]
    def run(argv):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return 0, output, ""

    return run


def test_slurm_adapter_reads_the_queue_with_one_command():
    calls: List[List[str]] = []
    adapter = get_adapter(
        "slurm", runner=recorder(fixture("slurm", "squeue_pending.txt"), calls), bin_dir="/opt/slurm/bin"
    )
    jobs = read_pending(adapter)
    assert calls == [["/opt/slurm/bin/squeue", *SQUEUE_PENDING_ARGS]]
    assert len(jobs) >= 8


def test_htcondor_adapter_reads_the_queue_with_one_command():
    calls: List[List[str]] = []
    adapter = get_adapter(
        "htcondor", runner=recorder(fixture("htcondor", "condor_q_idle.json"), calls), pool="cm.example"
    )
    jobs = read_pending(adapter)
    assert len(calls) == 1 and calls[0][:3] == ["condor_q", "-pool", "cm.example"]
    assert "JobStatus == 1" in calls[0] and len(jobs) == 3


def test_a_failing_squeue_says_what_failed():
    adapter = get_adapter("slurm", runner=lambda argv: (1, "", fixture("slurm", "stderr_controller_down.txt")))
    with pytest.raises(Exception, match="reading the pending jobs failed: the controller"):
        read_pending(adapter)


def test_queue_as_data():
    (job,) = jobs_from_data(
        [{"job_id": "7", "constraint": "typeB", "cores": 2, "submitted_at": "2026-12-03T08:00:00Z"}]
    )
    assert job.submitted_at == datetime.datetime(2026, 12, 3, 8, tzinfo=UTC) and job.cores == 2
    with pytest.raises(QueueError, match=r"queue\[0\].cores"):
        jobs_from_data([{"cores": 0}])
    with pytest.raises(QueueError, match=r"queue\[0\].submitted_at"):
        jobs_from_data([{"submitted_at": "soon"}])
