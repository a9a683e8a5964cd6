"""rebalance.yml on a libvirt test-driver farm (no VM boots), run through ansible-runner as AWX
does: the plan from a given queue in check mode (which slots are filled as which worker type,
which empty places are only reported), nothing touched, the lock taken and released; and the
input it refuses."""

from __future__ import annotations

import datetime
import json

from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node
from tests.testbed.ansible import run_playbook

NOW = EPOCH + 30 * HOUR
TYPES = [
    {"name": "el9", "image": "worker-el9", "vcpus": 1, "min_slots": 1},
    {"name": "el8", "image": "worker-el8", "vcpus": 1, "max_slots": 2},
]


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _farm(tmp_path):
    fresh = NOW - 2 * HOUR
    domains = [
        (f"hv01-slot-a{i}", slot(f"hv01-slot-a{i}", "hv01", created_at=fresh, lifetime_h=48, worker_type="el9"), True)
        for i in range(3)
    ]
    domains += [
        (
            "hv01-slot-expired",
            slot(
                "hv01-slot-expired", "hv01", created_at=NOW - 40 * HOUR, lifetime_h=24, walltime_h=12, worker_type="el9"
            ),
            True,
        ),
        (
            "hv01-slot-stopped",
            slot("hv01-slot-stopped", "hv01", created_at=fresh, lifetime_h=48, worker_type="el9"),
            False,
        ),
    ]
    node = write_test_node(str(tmp_path / "hv01.xml"), domains)
    inventory = tmp_path / "farm.farm.slots.yml"
    inventory.write_text(
        json.dumps({"plugin": "batchvirt.farm.slots", "hypervisors": [{"uri": node, "name": "hv01"}], "now": _iso(NOW)})
    )
    return str(inventory)


def _vars(tmp_path, **extra):
    queue = [
        {
            "job_id": str(100 + i),
            "constraint": "el8",
            "partition": "batch",
            "cores": 1,
            "submitted_at": _iso(NOW - HOUR),
        }
        for i in range(4)
    ]
    return dict(
        {
            "farm_worker_types": TYPES,
            "farm_rebalance_queue": queue,
            "farm_rebalance_hypervisors": [{"name": "hv01", "places": 6, "default_type": "el9"}],
            "farm_ops_lock_path": str(tmp_path / "operations.lock"),
        },
        **extra,
    )


def _msg(result, task):
    res = result.results(task)
    assert res, f"no {task!r} in the job events:\n{result.stdout[-3000:]}"
    return res[-1]["msg"]


def test_rebalance_plan_fills_free_slots_with_the_type_in_demand_and_touches_nothing(tmp_path):
    result = run_playbook(
        "playbooks/rebalance.yml",
        inventory=_farm(tmp_path),
        extravars=_vars(tmp_path),
        envvars={"BATCHVIRT_FARM_NOW": _iso(NOW)},
        check=True,
    )
    assert result.rc == 0, result.stdout[-3000:]
    plan = _msg(result, "Show the plan")
    filled = {item["slot"]: item["type"] for item in plan["fill"]}
    # four el8 jobs wait, el8 may have at most 2 slots: the expired and the stopped el9 slot become el8
    assert filled == {"hv01-slot-expired": "el8", "hv01-slot-stopped": "el8"}, plan
    assert plan["targets"]["el8"]["target"] == 2 and plan["targets"]["el8"]["pending_jobs"] == 4, plan
    # without the batch view no slot's job count is known: nothing is drained for re-typing
    assert plan["drain_for_retyping"] == [], plan
    # the sixth place is empty: reported, never filled by this play
    assert all(item["hypervisor"] == "hv01" for item in plan["empty_places_not_filled"]), plan
    assert not result.results("Re-create the slot") and not result.results("Claim the slot for this rebalance")
    assert not result.changed
    assert not (tmp_path / "operations.lock").exists(), "the run released the operations lock"


def test_rebalance_needs_declared_worker_types(tmp_path):
    result = run_playbook(
        "playbooks/rebalance.yml",
        inventory=_farm(tmp_path),
        extravars=_vars(tmp_path, farm_worker_types=[]),
        check=True,
    )
    assert result.rc != 0
    failed = [e["event_data"]["res"].get("msg", "") for e in result.events if e.get("event") == "runner_on_failed"]
    assert any("farm_worker_types is empty" in m for m in failed), failed


def test_rebalance_refuses_a_bad_declaration_naming_the_field(tmp_path):
    bad = [dict(TYPES[0]), dict(TYPES[1], max_slots=0, min_slots=1)]
    result = run_playbook(
        "playbooks/rebalance.yml",
        inventory=_farm(tmp_path),
        extravars=_vars(tmp_path, farm_worker_types=bad),
        check=True,
    )
    assert result.rc != 0
    failed = [e["event_data"]["res"].get("msg", "") for e in result.events if e.get("event") == "runner_on_failed"]
    assert any("worker_types[1].max_slots" in m for m in failed), failed
