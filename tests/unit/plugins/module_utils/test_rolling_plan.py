"""Rolling update planning: capacity bound -> batch size, batches, the floor schedule, and the
``farm_rolling_update_serial`` override (the playbook gets all of it through the filters)."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _rolling as rolling


@pytest.mark.parametrize(
    ("accepting", "share", "targets", "size"),
    [
        (100, 0.75, 100, 25),
        (100, 0.75, 10, 10),  # never more than there is to update
        (8, 0.75, 8, 2),
        (7, 0.75, 7, 1),  # floor(1.75)
        (4, 0.5, 4, 2),
        (2, 0.5, 2, 1),
        (2, 0.75, 2, 1),  # at least one, or nothing could ever be updated
        (1, 0.0, 1, 1),
        (10, 0.0, 10, 10),
        (10, 0.9, 10, 1),
        (3, 0.7, 3, 1),  # 3 * 0.3 = 0.8999...: floor 0, at least 1
        (10, 0.7, 10, 3),  # 10 * 0.3 = 2.9999999999999996 in floating point: still 3
        (5, 0.75, 0, 0),  # nothing to update
    ],
)
def test_batch_size_from_the_capacity_bound(accepting, share, targets, size):
    assert rolling.batch_size(accepting, share, targets) == size


@pytest.mark.parametrize("share", [1.0, -0.1, 2])
def test_share_out_of_range_names_the_variable(share):
    with pytest.raises(rolling.RollingPlanError, match="farm_rolling_update_min_capacity_share must be at least 0"):
        rolling.batch_size(10, share)


def test_plan_batches_and_capacity_kept():
    plan = rolling.plan(["a", "b", "c", "d", "e"], accepting=8, min_capacity_share=0.75)
    assert plan.size == 2
    assert plan.batches == [["a", "b"], ["c", "d"], ["e"]]
    assert plan.capacity_share_kept == 0.75
    assert not plan.below_floor
    small = rolling.plan(["a", "b"], accepting=2, min_capacity_share=0.75)
    assert small.size == 1 and small.capacity_share_kept == 0.5 and small.below_floor
    assert small.as_dict()["batches"] == [["a"], ["b"]]


@pytest.mark.parametrize(
    ("remaining", "size", "replace", "floor"),
    [
        ([60, 60], 1, 40, 60 + 40 + 40),  # second slot's job ended during the first replacement
        ([0, 0, 0, 0], 2, 30, 60),  # nothing runs: one replacement per batch
        ([10, 200], 1, 30, 200 + 30),  # short first: the long job overlaps the first replacement
        ([200, 10], 1, 30, 200 + 30),  # the order given does not matter: ascending is optimal
        ([100, 100, 100], 3, 50, 150),
        ([300, 0, 0, 0], 1, 20, 300 + 20),
    ],
)
def test_floor_schedule(remaining, size, replace, floor):
    end, groups = rolling.floor_schedule(remaining, size, replace)
    assert end == floor
    assert sorted(i for g in groups for i in g) == list(range(len(remaining)))
    assert all(len(g) <= size for g in groups)


def test_floor_schedule_is_the_best_order():
    """Brute force over every order of a small farm: none beats the ascending one."""
    import itertools

    remaining, size, replace = [50, 5, 120, 80], 2, 30

    def end_of(order):
        t = 0.0
        for i in range(0, len(order), size):
            t = max(t, *(remaining[j] for j in order[i : i + size])) + replace
        return t

    best = min(end_of(p) for p in itertools.permutations(range(len(remaining))))
    assert rolling.floor_schedule(remaining, size, replace)[0] == best


def test_min_share():
    assert rolling.min_share([(0.0, 2), (1.0, 1), (2.0, 2)], 2) == 0.5
    assert rolling.min_share([], 2) == 1.0


# -- farm_rolling_update_serial: a smaller batch, never above the bound --------------------
@pytest.mark.parametrize(
    ("serial", "size"),
    [("10%", 10), ("1%", 1), ("50%", 25), ("5", 5), ("40", 25), ("0", 1), (7, 7), ("", 25), (None, 25), (" 20% ", 20)],
)
def test_serial_is_capped_by_the_bound(serial, size):
    # 100 active slots, share 0.75: the bound is 25 at once whatever is asked
    assert rolling.batch_size(100, 0.75, 100, serial) == size


@pytest.mark.parametrize("serial", ["abc", "-5", "-10%", "2.5", "nan", "inf", "%", "5%%"])
def test_bad_serial_names_the_variable(serial):
    with pytest.raises(rolling.RollingPlanError, match="farm_rolling_update_serial must be a count") as err:
        rolling.batch_size(100, 0.75, 100, serial)
    assert err.value.option == "farm_rolling_update_serial" == err.value.variable


def test_rolling_plan_error_is_a_farm_error():
    from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

    with pytest.raises(FarmError) as err:
        rolling.check_share(1.5)
    assert err.value.option == "farm_rolling_update_min_capacity_share"
