# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the demand plan, a pure function of the queue, the farm and the policy.

:func:`plan_demand` answers one question: given the pending jobs, the slots of the farm (with
their worker type and lifecycle state) and the places the hypervisors hold, which idle slots
should be drained to be re-created as another type, and which places that are free anyway
(drained, expired or stopped slots, empty places) should be filled with which type, and why.

The steps (docs/demand.md has a worked example):

1. *Demand.* Every eligible pending job at least ``hold_seconds`` old is matched to the first
   declared type whose features satisfy its constraint (:func:`._worker_type.match_type`). A
   type needs ``busy + ceil(pending cores / vcpus)`` slots, ``busy`` being its serving slots that
   run a job. Younger jobs, jobs without a constraint and jobs no type serves are reported,
   not counted.
2. *Targets.* Every type first gets its ``min_slots``; the rest of the capacity is handed out
   one slot at a time to the type with the lowest ``target / weight`` that still needs more,
   never past its need or its ``max_slots`` (weighted max-min fair share, as Vac's target_share
   or COBalD's weighted pools). The targets never add up to more than the places.
3. *Fills.* Each free place is filled, in this order, with a type below its minimum, a type
   below its target (the largest shortfall first), the type the place had, the hypervisor's
   default type, or else the type with the most room below its maximum.
4. *Drains.* What is still short after the fills, and after the places that draining slots
   will soon free, is taken from types above their target: only serving slots whose batch node
   runs no job (never a slot with a job or with an unknown job count), at least
   ``min_slot_age_seconds`` old, never taking a type below its target or minimum, at most
   ``max_retypes_per_run`` per run.

Nothing here reads a clock or the batch system: ``now`` and the data are arguments.
"""

from __future__ import annotations

import datetime
import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import (
    PendingJob,
    jobs_from_data,
    read_pending,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time, utcnow
from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import (
    WorkerType,
    match_type,
    parse_worker_types,
)

# Lifecycle states (the names of _lifecycle), grouped by what the plan does with them.
SERVING = ("active", "expiring", "provisioning")
DRAINABLE = ("active", "expiring")
LEAVING = ("draining",)
FILLABLE = ("drained", "expired", "stopped")
KNOWN_STATES = SERVING + LEAVING + FILLABLE


class DemandError(FarmError):
    """The farm or the policy given to the plan cannot be used; ``option`` names the input."""


@dataclass(frozen=True)
class Policy:
    """The damping knobs (docs/demand.md)."""

    max_retypes_per_run: int = 2
    hold_seconds: float = 600.0
    min_slot_age_seconds: float = 3600.0

    @classmethod
    def from_data(cls, raw: Optional[Mapping[str, Any]], field_name: str = "policy") -> Policy:
        raw = raw or {}
        unknown = sorted(set(raw) - {"max_retypes_per_run", "hold_seconds", "min_slot_age_seconds"})
        if unknown:
            raise DemandError(
                f"{field_name}: unknown knob(s) {', '.join(unknown)}; the knobs are max_retypes_per_run, "
                "hold_seconds, min_slot_age_seconds.",
                f"{field_name}.{unknown[0]}",
            )
        values: Dict[str, float] = {}
        for key, default in (("max_retypes_per_run", 2), ("hold_seconds", 600), ("min_slot_age_seconds", 3600)):
            value = raw.get(key, default)
            if value is None:
                value = default
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = -1.0
            if isinstance(value, bool) or not number >= 0 or number == float("inf"):
                raise DemandError(f"{field_name}.{key}: a number 0 or more, got {value!r}.", f"{field_name}.{key}")
            values[key] = number
        return cls(
            max_retypes_per_run=int(values["max_retypes_per_run"]),
            hold_seconds=values["hold_seconds"],
            min_slot_age_seconds=values["min_slot_age_seconds"],
        )


@dataclass(frozen=True)
class FarmSlot:
    """One slot as the plan sees it (from the inventory's hostvars)."""

    name: str
    hypervisor: str
    worker_type: str = ""  # "" reads as the hypervisor's default type
    state: str = "active"
    jobs: Optional[int] = None  # None: the batch system's view is unknown (never drained)
    created_at: Optional[datetime.datetime] = None


@dataclass(frozen=True)
class Hypervisor:
    """How many slot places a hypervisor holds, and the type its untyped slots are."""

    name: str
    places: int
    default_type: str = ""


@dataclass
class Plan:
    """The answer of :func:`plan_demand` (see :meth:`to_dict` for its data form)."""

    targets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    drain: List[Dict[str, Any]] = field(default_factory=list)
    fill: List[Dict[str, Any]] = field(default_factory=list)
    capacity: Dict[str, int] = field(default_factory=dict)
    queue: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.drain or self.fill)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "targets": self.targets,
            "drain": self.drain,
            "fill": self.fill,
            "capacity": self.capacity,
            "queue": self.queue,
            "notes": self.notes,
            "retypes": len(self.drain),
        }


# -- reading the farm as data -----------------------------------------------------------------
def _first(item: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in item and item[key] is not None:
            return item[key]
    return None


def slots_from_data(raw: Any, field_name: str = "slots") -> List[FarmSlot]:
    """Slots given either as the inventory's hostvars (``farm_slot``, ``farm_lifecycle``,
    ``farm_batch_jobs``, ``farm_hypervisor``) or plainly (``name``, ``hypervisor``,
    ``worker_type``, ``state``, ``jobs``, ``created_at``)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DemandError(f"{field_name}: a list of slots (hostvars of the slots inventory).", field_name)
    out: List[FarmSlot] = []
    seen: Dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"{field_name}[{i}]"
        if not isinstance(item, Mapping):
            raise DemandError(f"{where}: a slot is a mapping, got {item!r}.", where)
        meta: Mapping[str, Any] = item["farm_slot"] if isinstance(item.get("farm_slot"), Mapping) else {}
        name = _first(item, "name", "inventory_hostname") or meta.get("name")
        hypervisor = _first(item, "hypervisor", "farm_hypervisor") or meta.get("hypervisor")
        if not name or not hypervisor:
            raise DemandError(f"{where}: a slot needs its name and its hypervisor (farm_slot, farm_hypervisor).", where)
        state = str(_first(item, "state", "farm_lifecycle") or "")
        if state not in KNOWN_STATES:
            raise DemandError(
                f"{where}.state: {state!r} is not a lifecycle state ({', '.join(KNOWN_STATES)}).", f"{where}.state"
            )
        jobs = _first(item, "jobs", "farm_batch_jobs")
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0):
            raise DemandError(f"{where}.jobs: a number of running jobs, got {jobs!r}.", f"{where}.jobs")
        created = _first(item, "created_at") or meta.get("created_at")
        created_at = parse_time(created, f"{where}.created_at", DemandError) if created else None
        if str(name) in seen:
            raise DemandError(f"{where}: slot {name} is listed twice (also {field_name}[{seen[str(name)]}]).", where)
        seen[str(name)] = i
        out.append(
            FarmSlot(
                name=str(name),
                hypervisor=str(hypervisor),
                worker_type=str(_first(item, "worker_type") or meta.get("worker_type") or ""),
                state=state,
                jobs=jobs,
                created_at=created_at,
            )
        )
    return out


def hypervisors_from_data(raw: Any, field_name: str = "hypervisors") -> List[Hypervisor]:
    """Hypervisors given as ``name``, ``places`` and optionally ``default_type``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DemandError(f"{field_name}: a list of hypervisors (name, places, default_type).", field_name)
    out: List[Hypervisor] = []
    for i, item in enumerate(raw):
        where = f"{field_name}[{i}]"
        if not isinstance(item, Mapping) or not item.get("name"):
            raise DemandError(f"{where}: a hypervisor is a mapping with name and places.", where)
        places = item.get("places")
        if isinstance(places, bool) or not isinstance(places, int) or places < 0:
            raise DemandError(
                f"{where}.places: the number of slot places, 0 or more; got {places!r}.", f"{where}.places"
            )
        out.append(Hypervisor(name=str(item["name"]), places=places, default_type=str(item.get("default_type") or "")))
    return out


# -- the plan -----------------------------------------------------------------------------------
def fair_targets(types: Sequence[WorkerType], need: Mapping[str, int], capacity: int) -> Tuple[Dict[str, int], int]:
    """Weighted max-min fair targets: minimums first, then by ``target / weight``; and the slack."""
    target = {t.name: t.min_slots for t in types}
    rest = capacity - sum(target.values())
    if rest < 0:
        raise DemandError(
            f"worker_types: the minimums add up to {sum(target.values())} slots but the farm has {capacity} "
            "places: lower min_slots or add places.",
            "worker_types",
        )
    upper = {t.name: max(t.min_slots, min(t.cap(capacity), need.get(t.name, 0))) for t in types}
    heap = [
        (target[t.name] / t.weight, i, t.name, t.weight) for i, t in enumerate(types) if target[t.name] < upper[t.name]
    ]
    heapq.heapify(heap)
    while rest > 0 and heap:
        _share, i, name, weight = heapq.heappop(heap)
        # hand out in steps: up to the next type's share (or the upper bound) at once
        next_share = heap[0][0] if heap else math.inf
        step = upper[name] - target[name]
        if next_share != math.inf:
            step = min(step, max(1, int(next_share * weight) - target[name] + 1))
        step = min(step, rest)
        target[name] += step
        rest -= step
        if target[name] < upper[name]:
            heapq.heappush(heap, (target[name] / weight, i, name, weight))
    return target, rest


def plan_demand(
    types: Sequence[WorkerType],
    jobs: Iterable[PendingJob],
    slots: Sequence[FarmSlot],
    hypervisors: Sequence[Hypervisor],
    policy: Policy,
    now: datetime.datetime,
    default_type: str = "",
) -> Plan:
    """The plan (see the module docstring). Pure: the same arguments give the same plan."""
    if not types:
        raise DemandError("worker_types: declare at least one worker type.", "worker_types")
    planner = _Planner(types, policy, now, default_type)
    planner.places(hypervisors, slots)
    planner.count_demand(jobs)
    planner.survey(slots)
    planner.fill()
    planner.reserve_for_draining()
    planner.drain_for_retyping(slots)
    return planner.finish(len(slots))


class _Planner:
    """The state of one :func:`plan_demand` run, its steps in the order they run."""

    def __init__(self, types: Sequence[WorkerType], policy: Policy, now: datetime.datetime, default_type: str) -> None:
        self.types = list(types)
        self.policy = policy
        self.now = now
        self.by_name = {t.name: t for t in types}
        self.order = {t.name: i for i, t in enumerate(types)}
        self.default = default_type or types[0].name
        if self.default not in self.by_name:
            raise DemandError(f"default_type: {self.default!r} is not a declared worker type.", "default_type")
        self.plan = Plan()
        self.hv_places: Dict[str, int] = {}
        self.hv_default: Dict[str, str] = {}
        self.on_hv: Dict[str, int] = {}
        self.over: Dict[str, int] = {}
        self.capacity = 0
        zero = {t.name: 0 for t in types}
        self.cores, self.held, self.young = dict(zero), dict(zero), dict(zero)
        self.serving, self.busy = dict(zero), dict(zero)
        self.counts = {"pending": 0, "eligible": 0, "counted": 0, "young": 0, "untyped": 0, "unmatched": 0}
        self.retired: List[FarmSlot] = []  # slots of a type that is no longer declared
        self.fillable: List[Tuple[str, str, str]] = []  # (slot name or "", hypervisor, previous type)
        self.draining: List[str] = []
        self.need: Dict[str, int] = {}
        self.target: Dict[str, int] = {}
        self.slack = 0
        self.count: Dict[str, int] = {}
        self.leaving: Dict[str, int] = {}
        self.after_fills: Dict[str, int] = {}

    def type_of(self, slot: FarmSlot) -> str:
        return slot.worker_type or self.hv_default.get(slot.hypervisor, self.default)

    def places(self, hypervisors: Sequence[Hypervisor], slots: Sequence[FarmSlot]) -> None:
        """Places per hypervisor (declared, or as many as the slots a hypervisor holds), and those over it."""
        for i, hv in enumerate(hypervisors):
            if hv.default_type and hv.default_type not in self.by_name:
                raise DemandError(
                    f"hypervisors[{i}].default_type: {hv.default_type!r} is not a declared worker type.",
                    f"hypervisors[{i}].default_type",
                )
            self.hv_places[hv.name] = self.hv_places.get(hv.name, 0) + hv.places
            self.hv_default[hv.name] = hv.default_type or self.default
        for slot in slots:
            self.on_hv[slot.hypervisor] = self.on_hv.get(slot.hypervisor, 0) + 1
        for name, held_slots in self.on_hv.items():
            if name not in self.hv_places:  # a hypervisor known only by its slots: as many places as slots
                self.hv_places[name] = held_slots
                self.hv_default[name] = self.default
        self.capacity = sum(self.hv_places.values())
        self.over = {
            name: self.on_hv.get(name, 0) - places
            for name, places in self.hv_places.items()
            if self.on_hv.get(name, 0) > places
        }
        if self.over:
            self.plan.notes.append(
                "hypervisor(s) hold more slots than their places: "
                + ", ".join(f"{n} (+{c})" for n, c in sorted(self.over.items()))
                + "; nothing is filled there."
            )

    def count_demand(self, jobs: Iterable[PendingJob]) -> None:
        """1. Demand: the pending jobs per type, old enough to count (younger ones are held)."""
        counts = self.counts
        for job in jobs:
            counts["pending"] += 1
            if not job.eligible:
                continue
            counts["eligible"] += 1
            if not job.constraint:
                counts["untyped"] += 1
                continue
            wt = match_type(self.types, job.constraint, job.partition)
            if wt is None:
                counts["unmatched"] += 1
                continue
            if job.age(self.now) < self.policy.hold_seconds:
                counts["young"] += 1
                self.young[wt.name] += 1
                continue
            counts["counted"] += 1
            self.held[wt.name] += 1
            self.cores[wt.name] += job.cores
        if counts["unmatched"]:
            self.plan.notes.append(
                f"{counts['unmatched']} pending job(s) ask for features no declared worker type has: no slot the "
                "farm can make serves them."
            )

    def survey(self, slots: Sequence[FarmSlot]) -> None:
        """2. What each type has (serving, busy, draining), the places to fill, and the targets."""
        for slot in slots:
            kind = self.type_of(slot)
            if slot.state in FILLABLE:
                if self.over.get(slot.hypervisor, 0) <= 0:
                    self.fillable.append((slot.name, slot.hypervisor, kind if kind in self.by_name else ""))
                continue
            if kind not in self.by_name:
                if slot.state in SERVING:
                    self.retired.append(slot)
                elif slot.state in LEAVING:
                    self.draining.append("")
                continue
            if slot.state in LEAVING:
                self.draining.append(kind)
            elif slot.state in SERVING:
                self.serving[kind] += 1
                if slot.jobs is None or slot.jobs > 0:
                    self.busy[kind] += 1
        for name in sorted(self.hv_places):
            for _place in range(max(0, self.hv_places[name] - self.on_hv.get(name, 0))):
                self.fillable.append(("", name, self.hv_default[name]))
        self.need = {t.name: self.busy[t.name] + math.ceil(self.cores[t.name] / t.vcpus) for t in self.types}
        self.target, self.slack = fair_targets(self.types, self.need, self.capacity)
        self.count = dict(self.serving)
        # slots that drain still exist until they are gone: a type's maximum counts them
        self.leaving = {t.name: self.draining.count(t.name) for t in self.types}

    def room(self, name: str) -> bool:
        return self.count[name] + self.leaving[name] < self.by_name[name].cap(self.capacity)

    def choose(self, previous: str, hv_type: str) -> Tuple[str, str]:
        """The type a place gets, and why: a type below its minimum, the one most short of its target
        (by weight), else the place's own type or the hypervisor's, else the one with the most room."""
        types, count, target, order = self.types, self.count, self.target, self.order
        below_min = [t for t in types if count[t.name] < t.min_slots and self.room(t.name)]
        if below_min:
            wt = max(below_min, key=lambda t: (t.min_slots - count[t.name], -order[t.name]))
            return wt.name, f"{wt.name} has {count[wt.name]} slot(s), below its minimum of {wt.min_slots}"
        short = [t for t in types if count[t.name] < target[t.name] and self.room(t.name)]
        if short:
            wt = max(short, key=lambda t: ((target[t.name] - count[t.name]) / t.weight, -order[t.name]))
            return wt.name, (
                f"{wt.name} has {count[wt.name]} slot(s) for a target of {target[wt.name]} "
                f"({self.held[wt.name]} job(s) pending for {self.policy.hold_seconds:g} s or more, "
                f"{self.busy[wt.name]} busy slot(s))"
            )
        for candidate, why in ((previous, "the type this place had"), (hv_type, "the hypervisor's default type")):
            if candidate in self.by_name and self.room(candidate):
                return candidate, f"no type is short: {why}"
        roomy = [t for t in types if self.room(t.name)]
        if roomy:
            wt = max(
                roomy,
                key=lambda t: (t.cap(self.capacity) - count[t.name] - self.leaving[t.name], -order[t.name]),
            )
            return wt.name, "no type is short: the type with the most room below its maximum"
        return "", "every type is at its maximum"

    def fill(self) -> None:
        """3. Fills: every drained, expired or stopped slot and every free place gets a type (or a note)."""
        for slot_name, hv_name, previous in self.fillable:
            chosen, why = self.choose(previous, self.hv_default.get(hv_name, self.default))
            if not chosen:
                self.plan.notes.append(f"{slot_name or 'a free place'} on {hv_name} is left empty: {why}.")
                continue
            self.count[chosen] += 1
            self.plan.fill.append(
                {"slot": slot_name, "hypervisor": hv_name, "type": chosen, "previous_type": previous, "reason": why}
            )
        self.after_fills = dict(self.count)

    def reserve_for_draining(self) -> None:
        """Places that draining slots will free soon go to the types that are short (not output)."""
        for _previous in self.draining:
            short = [t for t in self.types if self.count[t.name] < max(t.min_slots, self.target[t.name])]
            if not short:
                break
            wt = max(
                short, key=lambda t: (max(t.min_slots, self.target[t.name]) - self.count[t.name], -self.order[t.name])
            )
            self.count[wt.name] += 1

    def old_enough(self, slot: FarmSlot) -> bool:
        """Old enough to drain for re-typing; with no minimum age every slot is, even one whose creation
        time is ahead of this clock (a hypervisor's clock a little ahead of the controller's)."""
        min_age = self.policy.min_slot_age_seconds
        if min_age <= 0 or slot.created_at is None:
            return True
        return (self.now - slot.created_at).total_seconds() >= min_age

    @staticmethod
    def drain_key(slot: FarmSlot) -> Tuple[int, str, str]:
        created = format_time(slot.created_at) if slot.created_at else ""
        return (0 if slot.state == "expiring" else 1, created, slot.name)

    def drain_for_retyping(self, slots: Sequence[FarmSlot]) -> None:
        """4. Drains: idle, old enough slots of a type above its floor (or no longer declared), at most
        ``max_retypes_per_run``, each for the type most short of its target."""
        types, order, target = self.types, self.order, self.target
        shortfall = {t.name: max(0, target[t.name] - self.count[t.name]) for t in types}
        wanted = sum(shortfall.values())
        floor = {t.name: max(t.min_slots, target[t.name]) for t in types}
        candidates, young_idle = self._drain_candidates(slots) if wanted else ({t.name: [] for t in types}, 0)
        idle_retired = sorted(
            (s for s in self.retired if s.jobs == 0 and s.state in DRAINABLE and self.old_enough(s)),
            key=self.drain_key,
            reverse=True,
        )
        after_fills, plan, limit = self.after_fills, self.plan, self.policy.max_retypes_per_run
        while len(plan.drain) < limit and (wanted > 0 or idle_retired):
            if idle_retired:
                slot, source, why = idle_retired.pop(), "", "its type is no longer declared"
            else:
                surplus = [t for t in types if after_fills[t.name] - floor[t.name] > 0 and candidates[t.name]]
                if not surplus:
                    break
                wt = max(surplus, key=lambda t: ((after_fills[t.name] - floor[t.name]) / t.weight, -order[t.name]))
                slot, source = candidates[wt.name].pop(), wt.name
                after_fills[source] -= 1
                why = f"{source} has {after_fills[source] + 1} serving slot(s) for a target of {target[source]}"
            short = [t for t in types if shortfall[t.name] > 0]
            goal = ""
            if short:
                gt = max(short, key=lambda t: (shortfall[t.name] / t.weight, -order[t.name]))
                goal = gt.name
                shortfall[goal] -= 1
                wanted -= 1
                why += f"; {goal} is short by {shortfall[goal] + 1} slot(s)"
            plan.drain.append(
                {
                    "slot": slot.name,
                    "hypervisor": slot.hypervisor,
                    "type": source or slot.worker_type,
                    "for": goal,
                    "reason": f"idle for re-typing: {why}",
                }
            )
        if wanted > 0:
            self._note_unmet(wanted, young_idle)

    def _drain_candidates(self, slots: Sequence[FarmSlot]) -> Tuple[Dict[str, List[FarmSlot]], int]:
        """Idle drainable slots per declared type, in drain order (``pop()`` takes the first), and how many
        idle ones are too young."""
        candidates: Dict[str, List[FarmSlot]] = {t.name: [] for t in self.types}
        young_idle = 0
        for slot in slots:
            kind = self.type_of(slot)
            if slot.state not in DRAINABLE or slot.jobs is None or slot.jobs > 0 or kind not in self.by_name:
                continue
            if not self.old_enough(slot):
                young_idle += 1
                continue
            candidates[kind].append(slot)
        for queue_of_type in candidates.values():
            queue_of_type.sort(key=self.drain_key, reverse=True)
        return candidates, young_idle

    def _note_unmet(self, wanted: int, young_idle: int) -> None:
        limit, min_age = self.policy.max_retypes_per_run, self.policy.min_slot_age_seconds
        if len(self.plan.drain) >= limit:
            self.plan.notes.append(f"{wanted} more re-typing(s) wanted; max_retypes_per_run ({limit}) reached.")
        elif young_idle:
            self.plan.notes.append(
                f"{wanted} more re-typing(s) wanted; {young_idle} idle slot(s) are younger than "
                f"min_slot_age_seconds ({min_age:g} s)."
            )
        else:
            self.plan.notes.append(f"{wanted} more re-typing(s) wanted; no idle slot of a type above its target.")

    def finish(self, slot_count: int) -> Plan:
        """The targets per type, the capacity and the queue counts beside the fills and drains."""
        for t in self.types:
            self.plan.targets[t.name] = {
                "target": self.target[t.name],
                "serving": self.serving[t.name],
                "busy": self.busy[t.name],
                "after_plan": self.after_fills[t.name],
                "need": self.need[t.name],
                "pending_jobs": self.held[t.name],
                "pending_cores": self.cores[t.name],
                "young_jobs": self.young[t.name],
                "min_slots": t.min_slots,
                "max_slots": t.max_slots,
                "weight": t.weight,
            }
        self.plan.capacity = {
            "places": self.capacity,
            "slots": slot_count,
            "fillable": len(self.fillable),
            "draining": len(self.draining),
            "unassigned": self.slack,
        }
        self.plan.queue = self.counts
        return self.plan


def plan_from_params(params: Mapping[str, Any], adapter: Any = None) -> Dict[str, Any]:
    """The ``demand_plan`` module's engine: validate the options, read the queue ONCE through
    ``adapter`` (unless ``params['queue']`` gives it), and return the plan as data."""
    types = parse_worker_types(params.get("worker_types"))
    policy = Policy.from_data(params.get("policy"))
    slots = slots_from_data(params.get("slots") or [])
    hypervisors = hypervisors_from_data(params.get("hypervisors") or [])
    now = parse_time(params["now"], "now", DemandError) if params.get("now") else utcnow()
    commands_before = getattr(adapter, "commands_run", 0)
    if params.get("queue") is not None or adapter is None:
        jobs = jobs_from_data(params.get("queue") or [])
    else:
        jobs = read_pending(adapter)
    plan = plan_demand(types, jobs, slots, hypervisors, policy, now, params.get("default_type") or "")
    result = plan.to_dict()
    result["commands_run"] = getattr(adapter, "commands_run", 0) - commands_before
    result["now"] = format_time(now)
    return result
