# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the metric families of the farm exposition, one function per group
(slots, capacity, image cache, health and accounting, play runs), over a ``FarmSnapshot`` of
:mod:`_metrics`. Every name and help text is listed in the collection's ``docs/observability.md``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import ACCEPTING_STATES, STATES
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover - reported by the module
    pass

PREFIX = "batchvirt_farm"
DEFAULT_WORKER_TYPE = "default"
PLAY_OUTCOMES = ("success", "failure")
FAILURE_KINDS = ("slot_create", "slot_boot", "registration", "image_stage", "drain", "destroy", "other")
MIB = 1024 * 1024


def _epoch(value: str) -> float:
    return parse_time(value, "time", FarmError).timestamp()


class FarmCollector:
    """A ``prometheus_client`` collector over one ``FarmSnapshot`` (families in a fixed order)."""

    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for group in (slot_families, capacity_families, image_families, health_families, play_families):
            yield from group(self.snapshot, self.snapshot.hypervisor)


def slot_families(snap: Any, hv: str) -> Iterator[Any]:
    """Slots by lifecycle, type and image; by lifecycle; by libvirt run state; unreadable."""
    slots = GaugeMetricFamily(
        f"{PREFIX}_slots",
        "Slots by lifecycle state, worker type and image version (slots without a type count as 'default').",
        labels=["hypervisor", "lifecycle", "worker_type", "image", "image_version"],
    )
    counts: Dict[Tuple[str, str, str, str], int] = {}
    for s in snap.slots:
        key = (s.lifecycle, s.worker_type, s.image, s.image_version)
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts):
        slots.add_metric([hv, *key], counts[key])
    yield slots

    by_state = GaugeMetricFamily(
        f"{PREFIX}_slots_by_lifecycle",
        "Slots in each lifecycle state (every state listed, 0 when empty).",
        labels=["hypervisor", "lifecycle"],
    )
    for state in STATES:
        by_state.add_metric([hv, state], sum(1 for s in snap.slots if s.lifecycle == state))
    yield by_state

    domains = GaugeMetricFamily(
        f"{PREFIX}_slot_domains", "Slot domains by libvirt run state.", labels=["hypervisor", "domain_state"]
    )
    run_states: Dict[str, int] = {}
    for s in snap.slots:
        run_states[s.domain_state] = run_states.get(s.domain_state, 0) + 1
    for name in sorted(run_states):
        domains.add_metric([hv, name], run_states[name])
    yield domains

    unreadable = GaugeMetricFamily(
        f"{PREFIX}_slots_unreadable", "Slot domains whose slot metadata cannot be read.", labels=["hypervisor"]
    )
    unreadable.add_metric([hv], snap.unreadable_slots)
    yield unreadable


def capacity_families(snap: Any, hv: str) -> Iterator[Any]:
    """Slots, vCPUs and memory accepting jobs per worker type, and the host capacity left."""
    accepting = [s for s in snap.slots if s.lifecycle in ACCEPTING_STATES]
    types = sorted({s.worker_type for s in snap.slots} | {DEFAULT_WORKER_TYPE})
    acc_slots = GaugeMetricFamily(
        f"{PREFIX}_accepting_slots",
        "Slots accepting jobs (active or expiring).",
        labels=["hypervisor", "worker_type"],
    )
    acc_cpus = GaugeMetricFamily(
        f"{PREFIX}_accepting_vcpus", "vCPUs of the slots accepting jobs.", labels=["hypervisor", "worker_type"]
    )
    acc_mem = GaugeMetricFamily(
        f"{PREFIX}_accepting_memory_bytes",
        "Guest memory of the slots accepting jobs.",
        labels=["hypervisor", "worker_type"],
    )
    for wtype in types:
        mine = [s for s in accepting if s.worker_type == wtype]
        acc_slots.add_metric([hv, wtype], len(mine))
        acc_cpus.add_metric([hv, wtype], sum(s.vcpus for s in mine))
        acc_mem.add_metric([hv, wtype], sum(s.memory_mib for s in mine) * MIB)
    yield acc_slots
    yield acc_cpus
    yield acc_mem

    if snap.capacity:
        cap = snap.capacity
        for name, help_text, value in (
            ("free_memory_bytes", "Host memory left for new VMs (may be negative when overcommitted).",
             cap["free_memory_mib"] * MIB),
            ("free_vcpus", "vCPUs left for new VMs (usable CPUs x overcommit - vCPUs in use).", cap["free_vcpus"]),
            ("usable_memory_bytes", "Host memory minus the host reservation.", cap["usable_memory_mib"] * MIB),
            ("usable_vcpus", "Host CPUs minus the CPUs kept for the host.", cap["usable_cpus"]),
        ):  # fmt: skip
            family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["hypervisor"])
            family.add_metric([hv], value)
            yield family


def image_families(snap: Any, hv: str) -> Iterator[Any]:
    """Image cache entries and bytes by state, and when the newest ready image was staged."""
    entries = GaugeMetricFamily(
        f"{PREFIX}_image_cache_images", "Image cache entries by state.", labels=["hypervisor", "state"]
    )
    sizes = GaugeMetricFamily(
        f"{PREFIX}_image_cache_bytes",
        "Size of the image cache entries by state (declared image size).",
        labels=["hypervisor", "state"],
    )
    for state in ("partial", "ready", "failed", "expired"):
        mine_i = [i for i in snap.images if i["state"] == state]
        entries.add_metric([hv, state], len(mine_i))
        sizes.add_metric([hv, state], sum(int(i["size"]) for i in mine_i))
    yield entries
    yield sizes

    if snap.newest_ready_at is not None:
        newest = GaugeMetricFamily(
            f"{PREFIX}_image_cache_newest_ready_timestamp_seconds",
            "When the newest ready image was staged (Unix time); age: time() - this.",
            labels=["hypervisor"],
        )
        newest.add_metric([hv], snap.newest_ready_at.timestamp())
        yield newest


def health_families(snap: Any, hv: str) -> Iterator[Any]:
    """Failures by kind, slots in back-off, and the VM lives of the accounting records."""
    failures = CounterMetricFamily(
        f"{PREFIX}_failures",
        "Failures by kind: image_stage from the image cache history, the others as recorded by the plays.",
        labels=["hypervisor", "kind"],
    )
    recorded = dict(snap.state.get("failures", {}))
    for kind in FAILURE_KINDS:
        value = int(recorded.get(kind, 0))
        if kind == "image_stage":
            value += snap.image_failures
        failures.add_metric([hv, kind], value)
    yield failures

    backoff = GaugeMetricFamily(
        f"{PREFIX}_slots_in_backoff",
        "Slots held back from re-creation after repeated failures (back-off not expired yet).",
        labels=["hypervisor"],
    )
    backoff.add_metric([hv], sum(1 for s in snap.slots if s.backoff))
    yield backoff

    if snap.accounting:
        ended = CounterMetricFamily(
            f"{PREFIX}_vm_lives_ended",
            "VM lives ended, by end reason (from the accounting records).",
            labels=["hypervisor", "end_reason"],
        )
        for reason, value in sorted(snap.accounting.get("ended", {}).items()):
            ended.add_metric([hv, reason], value)
        yield ended
        open_lives = GaugeMetricFamily(
            f"{PREFIX}_vm_lives_open", "Accounting records of VM lives not ended yet.", labels=["hypervisor"]
        )
        open_lives.add_metric([hv], snap.accounting.get("open", 0))
        yield open_lives


def play_families(snap: Any, hv: str) -> Iterator[Any]:
    """The last run of each lifecycle play: when, outcome, duration, last success, runs."""
    plays = snap.state.get("plays", {})
    if plays:
        last = GaugeMetricFamily(
            f"{PREFIX}_play_last_run_timestamp_seconds",
            "When the last run of each lifecycle play ended (Unix time).",
            labels=["hypervisor", "play"],
        )
        success = GaugeMetricFamily(
            f"{PREFIX}_play_last_run_success",
            "1 when the last run of the play succeeded, 0 when it failed.",
            labels=["hypervisor", "play"],
        )
        duration = GaugeMetricFamily(
            f"{PREFIX}_play_last_run_duration_seconds",
            "Duration of the last run of the play (0 when its start was not given).",
            labels=["hypervisor", "play"],
        )
        last_ok = GaugeMetricFamily(
            f"{PREFIX}_play_last_success_timestamp_seconds",
            "When the last successful run of the play ended (Unix time).",
            labels=["hypervisor", "play"],
        )
        runs = CounterMetricFamily(
            f"{PREFIX}_play_runs",
            "Runs of each lifecycle play by outcome.",
            labels=["hypervisor", "play", "outcome"],
        )
        for name in sorted(plays):
            entry = plays[name]
            last.add_metric([hv, name], _epoch(entry["last_finished"]))
            success.add_metric([hv, name], 1 if entry["last_outcome"] == "success" else 0)
            duration.add_metric([hv, name], float(entry.get("last_duration_seconds", 0.0)))
            if entry.get("last_success"):
                last_ok.add_metric([hv, name], _epoch(entry["last_success"]))
            for outcome in PLAY_OUTCOMES:
                runs.add_metric([hv, name, outcome], int(entry.get("runs", {}).get(outcome, 0)))
        yield last
        yield success
        yield duration
        yield last_ok
        yield runs
