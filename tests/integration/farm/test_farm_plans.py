"""rolling_update.yml and recycle.yml on a libvirt test-driver farm (no VM boots): the plan in
check mode for every lifecycle state, and bad input. Run through ansible-runner as AWX does, with
the slots inventory plugin file as the inventory and the job events asserted on."""

from __future__ import annotations

import datetime
import json

import pytest

from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node
from tests.testbed.ansible import run_playbook

NOW = EPOCH + 30 * HOUR  # the lifecycle clock of these tests (the plugin's `now` option)


def _farm(tmp_path, active: int = 6):
    """One hypervisor with slots in every lifecycle state the plugin can see without a batch view."""
    fresh = NOW - 2 * HOUR
    domains = [
        (f"hv01-slot-a{i}", slot(f"hv01-slot-a{i}", "hv01", created_at=fresh, lifetime_h=48), True)
        for i in range(active)
    ]
    domains += [
        ("hv01-slot-expiring", slot("hv01-slot-expiring", "hv01", created_at=NOW - 47 * HOUR, lifetime_h=48), True),
        ("hv01-slot-draining", slot("hv01-slot-draining", "hv01", created_at=fresh, drain_requested=True), True),
        (
            "hv01-slot-expired",
            slot("hv01-slot-expired", "hv01", created_at=NOW - 40 * HOUR, lifetime_h=24, walltime_h=12),
            True,
        ),
        ("hv01-slot-stopped", slot("hv01-slot-stopped", "hv01", created_at=fresh, lifetime_h=48), False),
        ("hv01-slot-new", slot("hv01-slot-new", "hv01", created_at=NOW - datetime.timedelta(minutes=5)), True),
        ("foreign", None, True),
    ]
    node = write_test_node(str(tmp_path / "hv01.xml"), domains)
    inventory = tmp_path / "farm.farm.slots.yml"
    inventory.write_text(
        json.dumps(
            {
                "plugin": "batchvirt.farm.slots",
                "hypervisors": [{"uri": node, "name": "hv01"}],
                "now": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    return str(inventory)


def _msg(result, task):
    res = result.results(task)
    assert res, f"no {task!r} in the job events:\n{result.stdout[-3000:]}"
    return res[-1]["msg"]


def test_rolling_update_plan_in_check_mode(tmp_path):
    inventory = _farm(tmp_path, active=7)
    result = run_playbook("playbooks/rolling_update.yml", inventory=inventory, check=True)
    assert result.rc == 0, result.stdout[-3000:]
    plan = _msg(result, "Show the plan")
    # 7 active + 1 expiring accept jobs; 0.75 of 8 must keep accepting: 2 at once
    assert plan["accepting"] == 8 and plan["batch_size"] == 2, plan
    assert plan["capacity_share_kept"] == 0.75, plan
    assert [len(b) for b in plan["batches"]] == [2, 2, 2, 1], plan
    assert sorted(sum(plan["batches"], [])) == [f"hv01-slot-a{i}" for i in range(7)], plan
    assert plan["left_alone"] == ["hv01-slot-expiring"], plan
    # check mode ends before any slot is touched: no drain, no slot module call
    assert not result.results("Drain the batch node and wait until drained")
    assert not result.results("Find whether the slot runs the newest staged version of its image")
    assert not result.changed


def test_rolling_update_plan_with_a_smaller_serial_and_a_scope(tmp_path):
    inventory = _farm(tmp_path, active=6)
    result = run_playbook(
        "playbooks/rolling_update.yml",
        inventory=inventory,
        check=True,
        extravars={"farm_rolling_update_serial": "20%", "farm_rolling_update_min_capacity_share": 0.5},
    )
    assert result.rc == 0, result.stdout[-3000:]
    plan = _msg(result, "Show the plan")
    assert plan["batch_size"] == 1, plan  # 20% of 6 targets = 1, below the bound (3)


@pytest.mark.parametrize(
    ("extravars", "message"),
    [
        ({"farm_rolling_update_mode": "reboot"}, "farm_rolling_update_mode must be replace or patch (got reboot)"),
        (
            {"farm_rolling_update_min_capacity_share": 1.0},
            "farm_rolling_update_min_capacity_share at least 0 and below 1 (got 1.0)",
        ),
    ],
)
def test_rolling_update_bad_input(tmp_path, extravars, message):
    result = run_playbook("playbooks/rolling_update.yml", inventory=_farm(tmp_path), extravars=extravars, check=True)
    assert result.rc != 0
    failed = [e["event_data"]["res"].get("msg", "") for e in result.events if e.get("event") == "runner_on_failed"]
    assert any(message in m for m in failed), failed


@pytest.mark.parametrize("playbook", ["rolling_update.yml", "recycle.yml"])
def test_operations_need_the_slots_inventory(playbook):
    result = run_playbook(f"playbooks/{playbook}", check=True)  # localhost only, no lifecycle groups
    assert result.rc != 0
    failed = [e["event_data"]["res"].get("msg", "") for e in result.events if e.get("event") == "runner_on_failed"]
    assert any("run this playbook with the batchvirt.farm.slots inventory plugin" in m for m in failed), failed


def test_recycle_plan_touches_only_expired_drained_stopped(tmp_path):
    result = run_playbook("playbooks/recycle.yml", inventory=_farm(tmp_path), check=True)
    assert result.rc == 0, result.stdout[-3000:]
    plan = _msg(result, "Show what will be recycled")
    assert plan["replace_expired"] == ["hv01-slot-expired"], plan
    assert plan["restart_stopped"] == ["hv01-slot-stopped"], plan
    assert plan["replace_drained"] == [], plan  # no batch view: nobody saw that no job runs
    assert sorted(plan["left_alone"]) == sorted(
        [f"hv01-slot-a{i}" for i in range(6)] + ["hv01-slot-expiring", "hv01-slot-draining", "hv01-slot-new"]
    ), plan
    assert not result.results("Remove the slot") and not result.changed


def test_recycle_plan_replaces_failed_slots_and_leaves_slots_in_backoff_alone(tmp_path):
    """A crashed slot is `failed` and replaced; a stopped slot whose back-off has not passed is left
    alone (not started again) and reported with its end and its image per hypervisor; one whose
    back-off passed is re-created (not restarted); a stopped slot without failures is restarted."""
    fresh = NOW - 2 * HOUR
    image = "worker-el9/2026.11.1"
    held = slot("hv01-slot-held", "hv01", created_at=fresh, lifetime_h=48)
    held = held.with_failures(3, NOW - HOUR, image, "slurm: down", NOW + HOUR)
    passed = slot("hv01-slot-passed", "hv01", created_at=fresh, lifetime_h=48)
    passed = passed.with_failures(4, NOW - 3 * HOUR, image, "slurm: down", NOW - HOUR)
    domains = [
        ("hv01-slot-crashed", slot("hv01-slot-crashed", "hv01", created_at=fresh, lifetime_h=48), 6),
        ("hv01-slot-held", held, False),
        ("hv01-slot-passed", passed, False),
        ("hv01-slot-stopped", slot("hv01-slot-stopped", "hv01", created_at=fresh, lifetime_h=48), False),
        ("hv01-slot-a0", slot("hv01-slot-a0", "hv01", created_at=fresh, lifetime_h=48), True),
    ]
    node = write_test_node(str(tmp_path / "hv01.xml"), domains)
    inventory = tmp_path / "farm.farm.slots.yml"
    inventory.write_text(
        json.dumps(
            {
                "plugin": "batchvirt.farm.slots",
                "hypervisors": [{"uri": node, "name": "hv01"}],
                "now": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    result = run_playbook("playbooks/recycle.yml", inventory=str(inventory), check=True)
    assert result.rc == 0, result.stdout[-3000:]
    plan = _msg(result, "Show what will be recycled")
    assert plan["replace_failed"] == ["hv01-slot-crashed"], plan
    # no batch view in this inventory: the plan says the batch system has no word on it
    assert plan["failed_batch_state"] == {"hv01-slot-crashed": "not known to the batch system"}, plan
    assert plan["in_backoff"] == {"hv01-slot-held": "2026-11-22T07:00:00Z"}, plan
    assert plan["image_backoff"] == {"hv01 " + image: ["hv01-slot-held until 2026-11-22T07:00:00Z (3 failures)"]}, plan
    assert plan["replace_after_backoff"] == ["hv01-slot-passed"], plan
    assert plan["restart_stopped"] == ["hv01-slot-stopped"], plan
    assert plan["left_alone"] == ["hv01-slot-a0"], plan
    assert not result.changed


# -- the operations lock: a second lifecycle play -------------------------------------------
def _reported(result, task):
    """The message of the run of a lock task that reported (the task file is included again for the release)."""
    msgs = [r["msg"] for r in result.results(task) if "msg" in r]
    assert msgs, f"no {task!r} in the job events:\n{result.stdout[-3000:]}"
    return msgs[0]


def _held_lock(tmp_path, ttl=3600):
    from ansible_collections.batchvirt.farm.plugins.module_utils._oplock import OperationsLock

    lock = OperationsLock(str(tmp_path / "operations.lock"))
    holder = {"play": "rolling_update", "awx_job_id": "4711", "host": "awx-ee-7f9c", "pid": 31337}
    return lock, lock.try_acquire("rolling_update", ttl, holder).record


@pytest.mark.parametrize("playbook", ["rolling_update.yml", "recycle.yml"])
def test_a_second_play_ends_cleanly_naming_the_holder(tmp_path, playbook):
    lock, held = _held_lock(tmp_path)
    result = run_playbook(
        f"playbooks/{playbook}", inventory=_farm(tmp_path), extravars={"farm_ops_lock_path": lock.path}
    )
    assert result.rc == 0, result.stdout[-3000:]
    busy = _reported(result, "Report that the farm is busy with another operation")
    assert "held by rolling_update, AWX job 4711, on awx-ee-7f9c pid 31337" in busy, busy
    assert held["expires_at"] in busy and "nothing was done" in busy
    # nothing was touched, no summary, and the holder's lock is as it was
    assert not result.results("Show what will be recycled")  # recycle takes the lock before its plan
    assert not result.results("Drain the batch node and wait until drained") and not result.results("Remove the slot")
    assert not result.results("Show the summary") and not result.changed
    assert lock.read() == held


def test_a_second_play_can_fail_instead_naming_the_holder(tmp_path):
    lock, held = _held_lock(tmp_path)
    result = run_playbook(
        "playbooks/recycle.yml",
        inventory=_farm(tmp_path),
        extravars={"farm_ops_lock_path": lock.path, "farm_ops_lock_on_busy": "fail", "farm_ops_lock_wait": 2},
    )
    assert result.rc != 0
    failed = [e["event_data"]["res"].get("msg", "") for e in result.events if e.get("event") == "runner_on_failed"]
    assert any("held by rolling_update, AWX job 4711" in m and "(waited 2 s)" in m for m in failed), failed
    assert lock.read() == held


def test_an_expired_lock_is_taken_over_and_reported(tmp_path):
    lock, held = _held_lock(tmp_path, ttl=1)
    import time

    time.sleep(1.5)
    result = run_playbook(
        "playbooks/rolling_update.yml",
        inventory=_farm(tmp_path, active=7),
        check=True,
        extravars={"farm_ops_lock_path": lock.path},
    )
    assert result.rc == 0, result.stdout[-3000:]
    taken = _reported(result, "Report the expired lock this run took over")
    assert "took over the expired operations lock of rolling_update, AWX job 4711" in taken, taken
    assert _msg(result, "Show the plan")["batch_size"] == 2
    assert lock.read() == held  # check mode wrote nothing


def test_rolling_update_bad_serial_names_the_variable(tmp_path):
    result = run_playbook(
        "playbooks/rolling_update.yml",
        inventory=_farm(tmp_path),
        check=True,
        extravars={"farm_rolling_update_serial": "ten", "farm_ops_lock_path": str(tmp_path / "operations.lock")},
    )
    assert result.rc != 0
    assert "farm_rolling_update_serial must be a count of slots (5) or a percentage" in result.stdout, result.stdout[
        -3000:
    ]


def test_without_the_lock_a_run_still_gets_an_id_and_an_expiry(tmp_path):
    lock, held = _held_lock(tmp_path)
    result = run_playbook(
        "playbooks/recycle.yml",
        inventory=_farm(tmp_path),
        check=True,
        extravars={"farm_ops_lock_path": lock.path, "farm_ops_lock_enabled": False},
    )
    assert result.rc == 0, result.stdout[-3000:]
    facts = [r["ansible_facts"]["farm_ops_lock"] for r in result.results("Record the lock") if "ansible_facts" in r]
    assert facts and facts[0]["proceed"] and not facts[0]["acquired"], facts
    assert len(facts[0]["token"]) == 32 and facts[0]["token"] != held["token"], facts
    expires = datetime.datetime.strptime(facts[0]["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = expires.replace(tzinfo=datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert 2000 < (expires - now).total_seconds() < 3400, facts  # 3 x 900 s boot + 600 s
    assert _msg(result, "Show what will be recycled")["replace_expired"] == ["hv01-slot-expired"]
    assert lock.read() == held  # a run without the lock never touches it
