"""demand_plan: main() under patch_module_args; the queue read from recorded squeue output with one
command, the farm given as the slots inventory's hostvars; check mode gives the same plan."""

from __future__ import annotations

import json
import os
from typing import List

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.modules import demand_plan

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "slurm")
TYPES = [
    {"name": "typeA", "image": "worker-a", "vcpus": 2, "min_slots": 1},
    {"name": "typeB", "image": "worker-b", "vcpus": 2, "features": ["ssd"]},
    {"name": "typeC", "image": "worker-c", "vcpus": 4},
]


def hostvars(name: str, kind: str, state: str, jobs: int) -> dict:
    return {
        "inventory_hostname": name,
        "farm_hypervisor": "hv1",
        "farm_lifecycle": state,
        "farm_batch_jobs": jobs,
        "farm_slot": {"name": name, "worker_type": kind, "created_at": "2026-01-01T00:00:00Z"},
        "ansible_host": "127.0.0.1",
    }


SLOTS = [hostvars("s1", "typeA", "active", 1), hostvars("s2", "", "active", 0), hostvars("s3", "typeA", "drained", 0)]


@pytest.fixture
def commands(monkeypatch):
    calls: List[List[str]] = []

    def run_command(self, args, check_rc=False, environ_update=None, **_kw):  # type: ignore[no-untyped-def]
        calls.append(list(args))
        with open(os.path.join(FIXTURES, "squeue_pending.txt")) as handle:
            return 0, handle.read(), ""

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    return calls


def run(args, capsys):  # type: ignore[no-untyped-def]
    with patch_module_args(args), pytest.raises(SystemExit):
        demand_plan.main()
    return json.loads(capsys.readouterr().out)


ARGS = {
    "worker_types": TYPES,
    "slots": SLOTS,
    "hypervisors": [{"name": "hv1", "places": 3, "default_type": "typeA"}],
    "policy": {"hold_seconds": 0, "min_slot_age_seconds": 0, "max_retypes_per_run": 1},
    "now": "2030-01-01T00:00:00Z",
}


def test_plan_from_one_squeue_and_check_mode_gives_the_same(commands, capsys):
    res = run(dict(ARGS), capsys)
    assert res["changed"] is False and res["commands_run"] == 1 and len(commands) == 1
    assert commands[0][0] == "squeue"
    assert [(f["slot"], f["type"]) for f in res["fill"]] == [("s3", "typeB")]
    assert [(d["slot"], d["type"], d["for"]) for d in res["drain"]] == [("s2", "typeA", "typeC")]
    checked = run(dict(ARGS, _ansible_check_mode=True), capsys)
    assert {k: v for k, v in checked.items() if k != "invocation"} == {
        k: v for k, v in res.items() if k != "invocation"
    }


def test_queue_given_as_data_runs_no_command(commands, capsys):
    res = run(
        dict(ARGS, queue=[{"job_id": "1", "constraint": "typeB", "submitted_at": "2029-12-31T00:00:00Z"}]), capsys
    )
    assert commands == [] and res["commands_run"] == 0 and res["queue"]["counted"] == 1


@pytest.mark.parametrize(
    ("change", "option", "message"),
    [
        ({"worker_types": [TYPES[0], dict(TYPES[1], max_slots=-2)]}, "worker_types[1].max_slots", "must be 0 or more"),
        ({"policy": {"hold_seconds": -5}}, "policy.hold_seconds", "a number 0 or more"),
        (
            {"slots": [{"name": "x", "hypervisor": "hv1", "state": "sleeping"}]},
            "slots[0].state",
            "not a lifecycle state",
        ),
        ({"now": "tomorrow"}, "now", "not an ISO-8601 UTC time"),
    ],
)
def test_bad_input_fails_naming_the_field(commands, capsys, change, option, message):  # type: ignore[no-untyped-def]
    res = run(dict(ARGS, **change), capsys)
    assert res["failed"] is True and res["option"] == option and message in res["msg"]
    assert commands == []
