"""The demand plan: table tests of targets, fills and drains, and property tests (capacity,
minimums, maximums, never drains a slot with a job, a steady queue converges to no change,
fills never exceed the free places)."""

from __future__ import annotations

import datetime
from typing import Dict, List, Optional, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import PendingJob
from ansible_collections.batchvirt.farm.plugins.module_utils._demand import (
    DemandError,
    FarmSlot,
    Hypervisor,
    Plan,
    Policy,
    fair_targets,
    hypervisors_from_data,
    plan_demand,
    slots_from_data,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import WorkerType

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)
OLD = NOW - datetime.timedelta(days=1)
POLICY = Policy(max_retypes_per_run=2, hold_seconds=600, min_slot_age_seconds=3600)


def wt(name: str, **kw) -> WorkerType:  # type: ignore[no-untyped-def]
    return WorkerType(name=name, image="img-" + name, features=(name,), **kw)


A, B, C = wt("A", min_slots=1), wt("B"), wt("C")


def jobs(kind: str, n: int, age: float = 3600, cores: int = 1) -> List[PendingJob]:
    at = NOW - datetime.timedelta(seconds=age)
    return [PendingJob(job_id=f"{kind}{i}", constraint=kind, cores=cores, submitted_at=at) for i in range(n)]


def farm(spec: str, hv: str = "hv1", created: datetime.datetime = OLD) -> List[FarmSlot]:
    """'A1 A0 Bd' -> slot of type A with 1 job, idle A, drained B ('d'), 'x' expired, 'g' draining."""
    out = []
    for i, tok in enumerate(spec.split()):
        kind, rest = tok[0], tok[1:]
        state = {"d": "drained", "x": "expired", "g": "draining", "p": "provisioning"}.get(rest, "active")
        jobs_n: Optional[int] = int(rest) if rest.isdigit() else 0
        if rest == "?":
            jobs_n = None
        out.append(
            FarmSlot(
                name=f"{hv}-{i:02d}", hypervisor=hv, worker_type=kind, state=state, jobs=jobs_n, created_at=created
            )
        )
    return out


def run(types, queue, slots, places: Dict[str, int], policy: Policy = POLICY) -> Plan:  # type: ignore[no-untyped-def]
    hvs = [Hypervisor(name, n, types[0].name) for name, n in places.items()]
    return plan_demand(types, queue, slots, hvs, policy, NOW)


# -- targets ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("need", "capacity", "weights", "mins", "maxs", "expected"),
    [
        ({"A": 0, "B": 0, "C": 0}, 10, (1, 1, 1), (1, 0, 0), (None, None, None), {"A": 1, "B": 0, "C": 0}),
        ({"A": 20, "B": 20, "C": 20}, 9, (1, 1, 1), (0, 0, 0), (None, None, None), {"A": 3, "B": 3, "C": 3}),
        ({"A": 20, "B": 20, "C": 20}, 12, (2, 1, 1), (0, 0, 0), (None, None, None), {"A": 6, "B": 3, "C": 3}),
        ({"A": 2, "B": 20, "C": 20}, 12, (1, 1, 1), (0, 0, 0), (None, None, None), {"A": 2, "B": 5, "C": 5}),
        ({"A": 0, "B": 20, "C": 20}, 12, (1, 1, 1), (4, 0, 0), (None, None, None), {"A": 4, "B": 4, "C": 4}),
        ({"A": 20, "B": 20, "C": 0}, 12, (1, 1, 1), (0, 0, 0), (None, 2, None), {"A": 10, "B": 2, "C": 0}),
        ({"A": 5, "B": 0, "C": 0}, 100, (1, 1, 1), (0, 0, 0), (None, None, None), {"A": 5, "B": 0, "C": 0}),
    ],
)
def test_fair_targets(need, capacity, weights, mins, maxs, expected):  # type: ignore[no-untyped-def]
    types = [wt(n, weight=w, min_slots=lo, max_slots=hi) for n, w, lo, hi in zip("ABC", weights, mins, maxs)]
    target, slack = fair_targets(types, need, capacity)
    assert target == expected
    assert slack == capacity - sum(expected.values())


def test_minimums_over_capacity_are_refused():
    with pytest.raises(DemandError, match="minimums add up to 12 slots but the farm has 10"):
        fair_targets([wt("A", min_slots=6), wt("B", min_slots=6)], {}, 10)


# -- table of plans -----------------------------------------------------------------------------
def test_b_jobs_drain_an_idle_a_slot_never_a_busy_one():
    plan = run([A, B], jobs("B", 1), farm("A1 A0 A1"), {"hv1": 3})
    assert [(d["slot"], d["type"], d["for"]) for d in plan.drain] == [("hv1-01", "A", "B")]
    assert plan.fill == []
    assert "B is short by 1" in plan.drain[0]["reason"]


def test_drained_place_is_filled_with_the_type_that_is_short():
    plan = run([A, B], jobs("B", 1), farm("A1 Ad A1"), {"hv1": 3})
    assert plan.drain == []
    assert [(f["slot"], f["type"], f["previous_type"]) for f in plan.fill] == [("hv1-01", "B", "A")]


def test_steady_queue_and_matching_farm_plans_nothing():
    plan = run([A, B], jobs("B", 2), farm("A1 B1 B0 B0"), {"hv1": 4})
    assert not plan.changes
    assert plan.targets["B"]["target"] == 3


def test_young_demand_is_held():
    plan = run([A, B], jobs("B", 3, age=60), farm("A0 A0 A0"), {"hv1": 3})
    assert plan.drain == [] and plan.queue["young"] == 3 and plan.targets["B"]["young_jobs"] == 3


def test_young_slots_are_not_churned_and_the_note_says_why():
    slots = farm("A0 A0 A0", created=NOW - datetime.timedelta(minutes=5))
    plan = run([wt("A"), B], jobs("B", 2), slots, {"hv1": 3})
    assert plan.drain == []
    assert any("younger than min_slot_age_seconds" in n for n in plan.notes)


def test_no_minimum_age_drains_a_slot_whose_creation_is_ahead_of_this_clock():
    ahead = farm("A0 A0", created=NOW + datetime.timedelta(minutes=10))  # the hypervisor's clock runs ahead
    assert run([wt("A"), B], jobs("B", 1), ahead, {"hv1": 2}).drain == []
    plan = run([wt("A"), B], jobs("B", 1), ahead, {"hv1": 2}, Policy(2, 600, 0))
    assert [d["for"] for d in plan.drain] == ["B"]


def test_at_most_n_retypings_per_run():
    plan = run([wt("A"), B], jobs("B", 10), farm("A0 " * 10), {"hv1": 10})
    assert len(plan.drain) == 2
    assert any("max_retypes_per_run (2) reached" in n for n in plan.notes)


def test_minimum_is_kept_even_when_demand_wants_everything():
    plan = run([wt("A", min_slots=2), B], jobs("B", 50), farm("A0 A0 A0 A0"), {"hv1": 4}, Policy(100, 0, 0))
    assert len(plan.drain) == 2 and plan.targets["A"]["after_plan"] == 2


def test_unknown_job_count_is_never_drained():
    plan = run([wt("A"), B], jobs("B", 3), farm("A? A? A0"), {"hv1": 3}, Policy(100, 0, 0))
    assert [d["slot"] for d in plan.drain] == ["hv1-02"]


def test_draining_slots_count_as_places_to_come():
    # one slot is already draining: its place will serve B, no second drain is needed
    plan = run([wt("A"), B], jobs("B", 1), farm("A0 Ag A0"), {"hv1": 3})
    assert plan.drain == []


def test_free_places_get_the_short_type_then_the_hypervisor_default():
    hvs = [Hypervisor("hv1", 4, "A")]
    plan = plan_demand([wt("A"), B], jobs("B", 1), farm("A0"), hvs, POLICY, NOW)
    assert [(f["slot"], f["type"]) for f in plan.fill] == [("", "B"), ("", "A"), ("", "A")]


def test_maximum_caps_fills():
    types = [wt("A", max_slots=1), wt("B", max_slots=1)]
    plan = plan_demand(types, [], [], [Hypervisor("hv1", 3, "A")], POLICY, NOW)
    assert sorted(f["type"] for f in plan.fill) == ["A", "B"]
    assert any("left empty" in n for n in plan.notes)


def test_fair_share_under_contention():
    types = [wt("A", weight=2), wt("B"), wt("C")]
    queue = jobs("A", 100) + jobs("B", 100) + jobs("C", 100)
    plan = run(types, queue, [], {"hv1": 40})
    assert {f["type"] for f in plan.fill} == {"A", "B", "C"}
    got = {t: sum(1 for f in plan.fill if f["type"] == t) for t in "ABC"}
    assert got == {"A": 20, "B": 10, "C": 10}


def test_multi_core_jobs_need_slots_by_vcpus():
    types = [wt("A"), wt("B", vcpus=4)]
    plan = run(types, jobs("B", 3, cores=2), [], {"hv1": 10})
    assert plan.targets["B"]["need"] == 2  # 6 cores on 4-vCPU slots


def test_slots_without_type_read_as_the_hypervisor_default():
    slots = [FarmSlot("s1", "hv1", "", "active", 1, OLD), FarmSlot("s2", "hv2", "", "active", 1, OLD)]
    hvs = [Hypervisor("hv1", 1, "A"), Hypervisor("hv2", 1, "B")]
    plan = plan_demand([wt("A"), wt("B")], [], slots, hvs, POLICY, NOW)
    assert plan.targets["A"]["serving"] == 1 and plan.targets["B"]["serving"] == 1


def test_retired_type_is_drained_when_idle():
    slots = farm("Z0 A1")
    plan = run([wt("A")], [], slots, {"hv1": 2})
    assert [(d["slot"], d["reason"]) for d in plan.drain] == [
        ("hv1-00", "idle for re-typing: its type is no longer declared")
    ]


def test_unmatched_and_untyped_jobs_are_reported_not_counted():
    queue = [PendingJob("1", "gpu", submitted_at=OLD), PendingJob("2", "", submitted_at=OLD)]
    plan = run([wt("A")], queue, farm("A0"), {"hv1": 1})
    assert plan.queue["unmatched"] == 1 and plan.queue["untyped"] == 1 and not plan.changes
    assert any("no declared worker type" in n for n in plan.notes)


def test_hostvars_form_of_slots():
    hostvars = [
        {
            "inventory_hostname": "slot-hv1-00",
            "farm_hypervisor": "hv1",
            "farm_lifecycle": "active",
            "farm_batch_jobs": 0,
            "farm_slot": {"name": "slot-hv1-00", "worker_type": "B", "created_at": "2026-12-01T00:00:00Z"},
        }
    ]
    (slot,) = slots_from_data(hostvars)
    assert (slot.name, slot.hypervisor, slot.worker_type, slot.jobs) == ("slot-hv1-00", "hv1", "B", 0)
    assert slot.created_at == datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"name": "s"}], r"slots\[0\]: a slot needs its name and its hypervisor"),
        ([{"name": "s", "hypervisor": "h", "state": "bogus"}], r"slots\[0\].state: 'bogus' is not a lifecycle state"),
        ([{"name": "s", "hypervisor": "h", "state": "active", "jobs": -1}], r"slots\[0\].jobs"),
        ([{"name": "s", "hypervisor": "h", "state": "active", "created_at": "yesterday"}], r"slots\[0\].created_at"),
        (
            [{"name": "s", "hypervisor": "h", "state": "active"}, {"name": "s", "hypervisor": "h", "state": "active"}],
            r"slots\[1\]: slot s is listed twice",
        ),
    ],
)
def test_bad_slots_name_the_field(raw, message):  # type: ignore[no-untyped-def]
    with pytest.raises(DemandError, match=message):
        slots_from_data(raw)


def test_bad_policy_and_hypervisors_name_the_field():
    with pytest.raises(DemandError, match=r"policy.hold_seconds: a number 0 or more"):
        Policy.from_data({"hold_seconds": -1})
    with pytest.raises(DemandError, match=r"policy: unknown knob\(s\) holdtime"):
        Policy.from_data({"holdtime": 3})
    with pytest.raises(DemandError, match=r"hypervisors\[0\].places"):
        hypervisors_from_data([{"name": "hv1", "places": "many"}])
    with pytest.raises(DemandError, match=r"hypervisors\[0\].default_type: 'Q' is not a declared"):
        plan_demand([wt("A")], [], [], [Hypervisor("hv1", 1, "Q")], POLICY, NOW)


# -- properties ---------------------------------------------------------------------------------
STATES = ("active", "active", "expiring", "provisioning", "draining", "drained", "expired", "stopped")


@st.composite
def scenarios(draw):  # type: ignore[no-untyped-def]
    ntypes = draw(st.integers(1, 3))
    names = ["A", "B", "C"][:ntypes]
    nhv = draw(st.integers(1, 4))
    places = [draw(st.integers(0, 6)) for _hv in range(nhv)]
    capacity = sum(places)
    types = []
    budget = capacity
    for name in names:
        lo = draw(st.integers(0, max(0, min(3, budget))))
        budget -= lo
        hi = draw(st.one_of(st.none(), st.integers(lo, lo + 6)))
        types.append(
            wt(
                name,
                min_slots=lo,
                max_slots=hi,
                weight=draw(st.sampled_from([0.5, 1.0, 2.0])),
                vcpus=draw(st.sampled_from([1, 2])),
            )
        )
    slots = []
    for h, n in enumerate(places):
        for i in range(draw(st.integers(0, n))):
            slots.append(
                FarmSlot(
                    name=f"hv{h}-{i}",
                    hypervisor=f"hv{h}",
                    worker_type=draw(st.sampled_from(names + [""])),
                    state=draw(st.sampled_from(STATES)),
                    jobs=draw(st.sampled_from([0, 0, 1, 2, None])),
                    created_at=NOW - datetime.timedelta(seconds=draw(st.sampled_from([60, 7200, 86400]))),
                )
            )
    queue = []
    for k in range(draw(st.integers(0, 25))):
        queue.append(
            PendingJob(
                job_id=str(k),
                constraint=draw(st.sampled_from(names + ["", "gpu"])),
                cores=draw(st.integers(1, 2)),
                submitted_at=NOW - datetime.timedelta(seconds=draw(st.sampled_from([10, 5000]))),
            )
        )
    hvs = [Hypervisor(f"hv{h}", n, draw(st.sampled_from(names))) for h, n in enumerate(places)]
    policy = Policy(draw(st.integers(0, 4)), draw(st.sampled_from([0, 600])), draw(st.sampled_from([0, 3600])))
    return types, queue, slots, hvs, policy


def apply(plan: Plan, slots: Sequence[FarmSlot], types: Sequence[WorkerType]) -> List[FarmSlot]:
    """The plan carried out at once: drains end (the slot is drained), fills boot and serve."""
    by_name = {s.name: s for s in slots}
    drained = {d["slot"] for d in plan.drain}
    out = []
    for s in slots:
        if s.name in drained:
            out.append(FarmSlot(s.name, s.hypervisor, s.worker_type, "drained", 0, s.created_at))
        else:
            out.append(s)
    filled = {f["slot"]: f for f in plan.fill if f["slot"]}
    out = [
        FarmSlot(s.name, s.hypervisor, filled[s.name]["type"], "active", 0, OLD) if s.name in filled else s for s in out
    ]
    n = len(by_name)
    for f in plan.fill:
        if not f["slot"]:
            n += 1
            out.append(FarmSlot(f"new{n}", f["hypervisor"], f["type"], "active", 0, OLD))
    return out


def counts_by_type(
    slots: Sequence[FarmSlot], hvs: Sequence[Hypervisor], states=("active", "expiring", "provisioning")
) -> Dict[str, int]:  # type: ignore[no-untyped-def]
    default = {h.name: h.default_type for h in hvs}
    out: Dict[str, int] = {}
    for s in slots:
        if s.state in states:
            t = s.worker_type or default[s.hypervisor]
            out[t] = out.get(t, 0) + 1
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_properties_of_one_plan(scenario):  # type: ignore[no-untyped-def]
    types, queue, slots, hvs, policy = scenario
    plan = plan_demand(types, queue, slots, hvs, policy, NOW)
    capacity = sum(h.places for h in hvs)
    by_slot = {s.name: s for s in slots}
    # capacity: targets and the farm after the plan fit the places
    assert sum(t["target"] for t in plan.targets.values()) <= capacity
    after = apply(plan, slots, types)
    per_hv: Dict[str, int] = {}
    for s in after:
        per_hv[s.hypervisor] = per_hv.get(s.hypervisor, 0) + 1
    for h in hvs:
        assert per_hv.get(h.name, 0) <= h.places
    # minimums and maximums of targets
    for t in types:
        target = plan.targets[t.name]["target"]
        assert t.min_slots <= target and (t.max_slots is None or target <= t.max_slots)
    # never drains a slot with a job (or with an unknown job count), nor a young or leaving one
    for d in plan.drain:
        s = by_slot[d["slot"]]
        assert s.jobs == 0 and s.state in ("active", "expiring")
        assert (NOW - s.created_at).total_seconds() >= policy.min_slot_age_seconds  # type: ignore[operator]
    assert len(plan.drain) <= policy.max_retypes_per_run
    # drains never take a type below its minimum
    before = counts_by_type(slots, hvs)
    serving_after_drains = counts_by_type([s for s in slots if s.name not in {d["slot"] for d in plan.drain}], hvs)
    for t in types:
        assert serving_after_drains.get(t.name, 0) >= min(t.min_slots, before.get(t.name, 0))
    # fills never exceed the free places, and fill only places that are free
    free: Dict[str, int] = {h.name: h.places - sum(1 for s in slots if s.hypervisor == h.name) for h in hvs}
    for h in hvs:
        assert sum(1 for f in plan.fill if not f["slot"] and f["hypervisor"] == h.name) <= max(0, free[h.name])
    filled = [f["slot"] for f in plan.fill if f["slot"]]
    assert len(filled) == len(set(filled))
    for name in filled:
        assert by_slot[name].state in ("drained", "expired", "stopped")
    # fills never push a type over its maximum (slots still draining count: they still exist)
    present = counts_by_type(slots, hvs, ("active", "expiring", "provisioning", "draining"))
    for t in types:
        if t.max_slots is not None:
            fills = sum(1 for f in plan.fill if f["type"] == t.name)
            assert fills == 0 or present.get(t.name, 0) + fills <= t.max_slots


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_steady_queue_converges_to_no_change(scenario):  # type: ignore[no-untyped-def]
    types, queue, slots, hvs, policy = scenario
    policy = Policy(max(1, policy.max_retypes_per_run), policy.hold_seconds, policy.min_slot_age_seconds)
    rounds = 2 + sum(h.places for h in hvs)
    for _round in range(rounds):
        plan = plan_demand(types, queue, slots, hvs, policy, NOW)
        if not plan.changes:
            break
        slots = apply(plan, slots, types)
    assert not plan.changes, plan.to_dict()
    again = plan_demand(types, queue, slots, hvs, policy, NOW)
    assert again.to_dict() == plan.to_dict()


def test_plan_is_pure():
    queue = jobs("B", 5)
    slots = farm("A0 A0 A1 Ad")
    first = run([A, B], queue, slots, {"hv1": 6}).to_dict()
    assert run([A, B], list(reversed(queue)), slots, {"hv1": 6}).to_dict() == first


def test_the_worked_example_of_docs_demand_md():
    from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import parse_worker_types

    types = parse_worker_types(
        [
            {"name": "el9", "image": "worker-el9", "vcpus": 2, "min_slots": 2, "weight": 2},
            {"name": "el8", "image": "worker-el8", "vcpus": 2, "max_slots": 3},
            {"name": "gpu", "image": "worker-gpu", "vcpus": 4},
        ]
    )

    def ago(minutes: float) -> datetime.datetime:
        return NOW - datetime.timedelta(minutes=minutes)

    slots = [
        FarmSlot("hv01-0", "hv01", "el9", "active", 1, ago(600)),
        FarmSlot("hv01-1", "hv01", "el9", "active", 0, ago(500)),
        FarmSlot("hv01-2", "hv01", "el9", "expiring", 0, ago(1400)),
        FarmSlot("hv01-3", "hv01", "", "active", 0, ago(30)),
        FarmSlot("hv02-0", "hv02", "el8", "active", 1, ago(300)),
        FarmSlot("hv02-1", "hv02", "el8", "expired", 0, ago(1500)),
        FarmSlot("hv02-2", "hv02", "el9", "active", 1, ago(200)),
    ]
    queue = [PendingJob(str(i), "el8", "", 2, ago(30)) for i in range(1, 7)] + [
        PendingJob("7", "gpu", "", 4, ago(20)),
        PendingJob("8", "gpu", "", 4, ago(3)),
        PendingJob("9", "", "", 1, ago(40)),
    ]
    hvs = [Hypervisor("hv01", 4, "el9"), Hypervisor("hv02", 4, "el8")]
    plan = plan_demand(types, queue, slots, hvs, Policy(), NOW).to_dict()
    assert {k: v["target"] for k, v in plan["targets"].items()} == {"el9": 2, "el8": 3, "gpu": 1}
    assert [(f["slot"], f["hypervisor"], f["type"]) for f in plan["fill"]] == [
        ("hv02-1", "hv02", "el8"),
        ("", "hv02", "el8"),
    ]
    assert [(d["slot"], d["type"], d["for"]) for d in plan["drain"]] == [("hv01-2", "el9", "gpu")]
    assert plan["capacity"] == {"places": 8, "slots": 7, "fillable": 2, "draining": 0, "unassigned": 2}
    assert plan["queue"] == {"pending": 9, "eligible": 9, "counted": 7, "young": 1, "untyped": 1, "unmatched": 0}
