"""The batchvirt.farm.rolling_* filters that rolling_update.yml uses for its ``serial`` and its
plan: the Python rule of ``_rolling.py``, rendered through Ansible's templating as the play does,
and the operation_holder filter that names who takes the operations lock."""

from __future__ import annotations

import os

import pytest
import yaml
from ansible.errors import AnsibleError

from ansible_collections.batchvirt.farm.plugins.filter import rolling as filters
from ansible_collections.batchvirt.farm.plugins.module_utils import _rolling as rolling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PLAYBOOK = os.path.join(ROOT, "playbooks", "rolling_update.yml")


@pytest.mark.parametrize(
    ("active", "expiring", "share", "serial", "size"),
    [
        (100, 0, 0.75, "", 25),
        (8, 0, 0.75, "", 2),
        (7, 1, 0.75, "", 2),
        (2, 0, 0.5, "", 1),
        (2, 0, 0.75, "", 1),  # at least one, or nothing could ever be updated
        (10, 0, 0.7, "", 3),  # 2.9999999999999996 in floating point: still 3
        (3, 5, 0.5, "", 3),  # never more than there is to update
        (1, 0, 0.0, "", 1),
        (0, 4, 0.5, "", 1),  # nothing to update: serial must still be a positive count
        (100, 0, 0.75, "10%", 10),
        (100, 0, 0.75, "40", 25),
    ],
)
def test_batch_size_filter_is_the_python_rule(active, expiring, share, serial, size):
    targets = [f"a{i}" for i in range(active)]
    assert filters.rolling_batch_size(targets, active + expiring, share, serial) == size
    assert size == max(1, rolling.batch_size(active + expiring, share, active, serial))


def test_plan_filter():
    plan = filters.rolling_plan(["a", "b", "c", "d", "e", "f", "g"], 10, 0.7)
    assert plan["batch_size"] == 3 and plan["batches"] == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert plan["capacity_share_kept"] == 0.7 and not plan["below_floor"] and plan["accepting"] == 10
    small = filters.rolling_plan(["a", "b"], ["a", "b"], 0.75)  # accepting given as a list
    assert small["batch_size"] == 1 and small["capacity_share_kept"] == 0.5 and small["below_floor"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["a"], 4, 1.0, ""), "farm_rolling_update_min_capacity_share must be at least 0 and below 1"),
        ((["a"], 4, 0.5, "ten"), "farm_rolling_update_serial must be a count of slots (5) or a percentage"),
        ((["a"], "many", 0.5, ""), "accepting must be a number or a list of slots"),
    ],
)
def test_filters_fail_naming_the_variable(args, message):
    for name in ("rolling_batch_size", "rolling_plan"):
        with pytest.raises(AnsibleError) as err:
            getattr(filters, name)(*args)
        assert message in str(err.value)


def test_the_playbook_takes_serial_and_plan_from_the_filters():
    """No Jinja copy of the rule: the play's ``serial`` and its plan come from the filters (the
    integration tests in tests/integration/farm/test_farm_plans.py render them in check mode)."""
    with open(PLAYBOOK) as handle:
        plays = yaml.safe_load(handle)
    expr = plays[0]["vars"]["__farm_rolling_update_batch_size"]
    assert "batchvirt.farm.rolling_batch_size" in expr and "{%" not in expr
    assert plays[1]["serial"] == "{{ __farm_rolling_update_batch_size }}"
    shown = [t for t in plays[0]["tasks"] if t.get("name") == "Show the plan"][0]
    assert "batchvirt.farm.rolling_plan" in shown["vars"]["__plan"]


def test_operation_holder(monkeypatch):
    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.delenv("AWX_JOB_ID", raising=False)
    monkeypatch.delenv("TOWER_JOB_ID", raising=False)
    holder = filters.operation_holder("recycle")
    assert (
        holder["play"] == "recycle" and holder["awx_job_id"] == "" and holder["host"] and holder["pid"] == os.getpid()
    )
    monkeypatch.setenv("JOB_ID", "4711")  # what AWX sets in the job's execution environment
    assert filters.operation_holder("recycle")["awx_job_id"] == "4711"
    assert filters.operation_holder("recycle", 42)["awx_job_id"] == "42"  # the awx_job_id extra var wins
