"""The demand plan on a simulated farm (no VMs): damped plan vs an undamped oracle.

A small farm-and-queue simulator drives ``_demand.plan_demand`` every TICK seconds (the AWX
schedule) over a demand trace that shifts between three worker types (a day compressed into
DURATION seconds), on HVS hypervisors x PLACES slots. The same simulator runs twice:

* **damped**: the plan with the policy of this bench (hold time, minimum slot age, at most
  MAX_RETYPES re-typings per run);
* **oracle**: the same plan function with damping off (hold 0, minimum age 0, no limit per
  run): it re-types every idle slot the demand asks for at once. Same boot times, same job
  runtimes, same slot lifetimes, same trace (same seed).

Each tick: jobs that ended free their slot; slots past their lifetime drain; slots whose boot
time has passed start serving; the plan runs on the queue and the farm (as the inventory would
show them) and is applied at once (drains requested; drained, expired and empty places
re-created with the planned type, serving after BOOT seconds); then each serving idle slot of a
type takes the oldest pending job of that type (one job per slot, the job uses every vCPU).

Figures: ``served_ratio_vs_oracle`` (vCPU-hours of queued jobs run within the trace, damped /
oracle), ``churn_ratio_vs_oracle`` (slots drained early for re-typing, damped / oracle),
``min_violations`` (ticks x types with fewer slots of a type than its minimum, counting slots
that serve, boot, or drain at the end of their lifetime), ``capacity_violations`` (ticks where
a hypervisor holds more slots than places, or a type more than its maximum), and
``plan_seconds_400x8`` (the slowest single plan of the damped run on the full farm and queue).

    .venv/bin/python bench/demand.py [--hvs 400] [--places 8] [--seed 1]

Last line: JSON.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import heapq
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "batchvirt", "farm")
if not os.path.lexists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)
sys.path.insert(0, COLLECTIONS)

from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import PendingJob  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._demand import (  # noqa: E402
    FarmSlot,
    Hypervisor,
    Policy,
    plan_demand,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import WorkerType  # noqa: E402

T0 = datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc)
TICK = 300  # s: the AWX schedule
DURATION = 12 * 3600  # s: a day's demand compressed
BOOT = 300  # s: a new slot serves one tick after it is created
LIFETIME, SPREAD = 6 * 3600, 2 * 3600
RUNTIME = (600, 3000)  # s: uniform job runtimes (mean 30 min)
LOAD = 0.95  # arrivals as a share of what the farm can run
TYPES = [
    WorkerType(name="A", image="worker-a", vcpus=2, features=("A",), min_slots=400, weight=2.0),
    WorkerType(name="B", image="worker-b", vcpus=2, features=("B",), min_slots=200),
    WorkerType(name="C", image="worker-c", vcpus=2, features=("C",), max_slots=2000),
]
DAMPED = Policy(max_retypes_per_run=16, hold_seconds=600, min_slot_age_seconds=1800)
ORACLE = Policy(max_retypes_per_run=10**9, hold_seconds=0, min_slot_age_seconds=0)

# The trace: each type's share of the arrivals, by hour of the compressed day (A, B, C).
PHASES = [(0.7, 0.2, 0.1), (0.2, 0.7, 0.1), (0.1, 0.2, 0.7), (0.6, 0.1, 0.3)]


def shares_at(t: float) -> Tuple[float, ...]:
    """Piecewise-linear between phases (each phase a quarter of the day, crossfading)."""
    pos = t / DURATION * len(PHASES)
    i = min(int(pos), len(PHASES) - 1)
    j = min(i + 1, len(PHASES) - 1)
    frac = min(1.0, max(0.0, (pos - i) * 2 - 1))  # hold for half a phase, then fade
    return tuple(a + (b - a) * frac for a, b in zip(PHASES[i], PHASES[j]))


@dataclass
class SimSlot:
    name: str
    hypervisor: str
    kind: str
    created: float
    serving_at: float
    drain_at: float
    drain: bool = False
    retype_drain: bool = False
    job_end: Optional[float] = None

    def state(self, now: float) -> str:
        if self.drain or now >= self.drain_at:
            return "drained" if self.job_end is None else "draining"
        if now < self.serving_at:
            return "provisioning"
        return "expiring" if self.drain_at - now <= 2 * 3600 else "active"


def trace(seed: int, capacity: int) -> List[Tuple[float, str, float]]:
    """(submit time, type, runtime) of every job of the run."""
    rng = random.Random(seed)
    per_tick = LOAD * capacity * TICK / (sum(RUNTIME) / 2)
    jobs = []
    t = 0.0
    while t < DURATION:
        shares = shares_at(t)
        for kind, share in zip("ABC", shares):
            n = int(rng.gauss(per_tick * share, (per_tick * share) ** 0.5) + 0.5)
            for _job in range(max(0, n)):
                jobs.append((t + rng.uniform(0, TICK), kind, rng.uniform(*RUNTIME)))
        t += TICK
    jobs.sort()
    return jobs


def simulate(policy: Policy, hvs: int, places: int, seed: int) -> Dict[str, float]:
    rng = random.Random(seed + 1)
    hypervisors = [Hypervisor(f"hv{h:03d}", places, "ABC"[h % 3]) for h in range(hvs)]
    slots: Dict[str, SimSlot] = {}
    counter = 0

    def new_slot(hv: str, kind: str, now: float) -> SimSlot:
        nonlocal counter
        counter += 1
        name = f"{hv}-{counter:06d}"
        life = LIFETIME - rng.uniform(0, SPREAD)
        return SimSlot(name, hv, kind, now, now + BOOT, now + life)

    # start: every place full with its hypervisor's default type, ages spread over a lifetime
    for hv in hypervisors:
        for _place in range(places):
            s = new_slot(hv.name, hv.default_type, 0.0)
            age = rng.uniform(0, LIFETIME - SPREAD)
            s.created, s.serving_at, s.drain_at = -age - BOOT, -age, s.drain_at - age - BOOT
            slots[s.name] = s
    capacity = hvs * places
    arrivals = trace(seed, capacity)
    pending: Dict[str, Deque[PendingJob]] = {k: collections.deque() for k in "ABC"}
    runtimes: Dict[str, float] = {}
    ends: List[Tuple[float, str]] = []
    vcpus = {t.name: t.vcpus for t in TYPES}
    limits = {t.name: (t.min_slots, t.max_slots) for t in TYPES}
    served = 0.0
    demanded = 0.0
    retype_drains = type_changes = min_violations = capacity_violations = 0
    plan_times: List[float] = []
    ai = 0
    now = 0.0
    while now < DURATION:
        # arrivals up to now
        while ai < len(arrivals) and arrivals[ai][0] <= now:
            at, kind, runtime = arrivals[ai]
            job_id = str(ai)
            pending[kind].append(PendingJob(job_id, kind, "", vcpus[kind], T0 + datetime.timedelta(seconds=at)))
            runtimes[job_id] = runtime
            demanded += vcpus[kind] * runtime / 3600
            ai += 1
        # jobs that ended
        while ends and ends[0][0] <= now:
            _end, name = heapq.heappop(ends)
            if name in slots:
                slots[name].job_end = None
        # the plan on the farm as the inventory shows it
        farm = [
            FarmSlot(
                s.name,
                s.hypervisor,
                s.kind,
                s.state(now),
                0 if s.job_end is None else 1,
                T0 + datetime.timedelta(seconds=s.created),
            )
            for s in slots.values()
        ]
        queue = [job for kind in "ABC" for job in pending[kind]]
        started = time.perf_counter()
        plan = plan_demand(TYPES, queue, farm, hypervisors, policy, T0 + datetime.timedelta(seconds=now))
        plan_times.append(time.perf_counter() - started)
        for d in plan.drain:
            s = slots[d["slot"]]
            s.drain = s.retype_drain = True
            retype_drains += 1
        for f in plan.fill:
            if f["slot"]:
                old = slots.pop(f["slot"])
                if old.kind != f["type"]:
                    type_changes += 1
            s = new_slot(f["hypervisor"], f["type"], now)
            slots[s.name] = s
        # measure the farm after the plan
        per_hv: Dict[str, int] = collections.Counter(s.hypervisor for s in slots.values())
        if any(n > places for n in per_hv.values()):
            capacity_violations += 1
        kept: Dict[str, int] = collections.Counter(
            s.kind for s in slots.values() if not s.retype_drain and s.state(now) != "drained"
        )
        for kind, (lo, hi) in limits.items():
            if kept.get(kind, 0) < lo:
                min_violations += 1
            if hi is not None and sum(1 for s in slots.values() if s.kind == kind) > hi:
                capacity_violations += 1
        # the batch scheduler: idle serving slots take the oldest pending job of their type
        for s in slots.values():
            if s.job_end is None and s.state(now) in ("active", "expiring") and pending[s.kind]:
                job = pending[s.kind].popleft()
                runtime = runtimes.pop(job.job_id)
                s.job_end = now + runtime
                heapq.heappush(ends, (s.job_end, s.name))
                served += vcpus[s.kind] * min(runtime, DURATION - now) / 3600
        now += TICK
    return {
        "served_core_hours": served,
        "demanded_core_hours": demanded,
        "retype_drains": retype_drains,
        "type_changes": type_changes,
        "min_violations": min_violations,
        "capacity_violations": capacity_violations,
        "plan_seconds_max": max(plan_times),
        "plan_seconds_median": statistics.median(plan_times),
        "pending_at_end": sum(len(q) for q in pending.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hvs", type=int, default=400)
    parser.add_argument("--places", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-retypes", type=int, default=DAMPED.max_retypes_per_run)
    parser.add_argument("--hold", type=float, default=DAMPED.hold_seconds)
    parser.add_argument("--min-age", type=float, default=DAMPED.min_slot_age_seconds)
    args = parser.parse_args()
    started = time.monotonic()
    policy = Policy(args.max_retypes, args.hold, args.min_age)
    damped = simulate(policy, args.hvs, args.places, args.seed)
    oracle = simulate(ORACLE, args.hvs, args.places, args.seed)
    for name, run in (("damped", damped), ("oracle", oracle)):
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in run.items()}))
    figures = {
        "bench": "demand",
        "hypervisors": args.hvs,
        "places": args.hvs * args.places,
        "ticks": DURATION // TICK,
        "policy": {
            "max_retypes_per_run": policy.max_retypes_per_run,
            "hold_seconds": policy.hold_seconds,
            "min_slot_age_seconds": policy.min_slot_age_seconds,
        },
        "plan_seconds_400x8": round(damped["plan_seconds_max"], 4),
        "plan_seconds_median": round(damped["plan_seconds_median"], 4),
        "served_ratio_vs_oracle": round(damped["served_core_hours"] / oracle["served_core_hours"], 4),
        "churn_ratio_vs_oracle": round(damped["retype_drains"] / max(1, oracle["retype_drains"]), 4),
        "retype_drains": {"damped": damped["retype_drains"], "oracle": oracle["retype_drains"]},
        "type_changes": {"damped": damped["type_changes"], "oracle": oracle["type_changes"]},
        "served_core_hours": {
            "damped": round(damped["served_core_hours"]),
            "oracle": round(oracle["served_core_hours"]),
        },
        "demanded_core_hours": round(damped["demanded_core_hours"]),
        "min_violations": damped["min_violations"],
        "capacity_violations": damped["capacity_violations"],
        "oracle_min_violations": oracle["min_violations"],
        "oracle_capacity_violations": oracle["capacity_violations"],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
