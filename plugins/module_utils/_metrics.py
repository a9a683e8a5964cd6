# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: farm metrics for node_exporter's textfile collector.

On each hypervisor the ``farm_metrics`` module reads the slots (through the inventory's
read-only model: :func:`_inventory.read_domains` and the shared lifecycle), the capacity
(:func:`_hypervisor_info.gather_info`), the image cache (its public ``images()`` and
``history()``), the accounting records (:mod:`_accounting`) and the record of the last run
of each lifecycle play (a small JSON file this module keeps), builds a
``prometheus_client`` registry of its own and writes it with ``write_to_textfile`` (a
temporary file renamed into place, so node_exporter never reads half a file).

Every value is a *state* the farm is in, never "time since": ages are exported as Unix
timestamps (``..._timestamp_seconds``) and computed in PromQL (``time() - ...``), so that a
second run with nothing changed writes the same file (the module is idempotent).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._files import write_atomic
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import ACCEPTING_STATES, STATES
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time

try:
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest

    HAS_PROMETHEUS_CLIENT = True
except ImportError:  # pragma: no cover - reported by the module
    HAS_PROMETHEUS_CLIENT = False

PREFIX = "batchvirt_farm"
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
DEFAULT_FILENAME = "batchvirt_farm.prom"
DEFAULT_STATE_PATH = "/var/lib/batchvirt/metrics-state.json"
DEFAULT_WORKER_TYPE = "default"
PLAY_OUTCOMES = ("success", "failure")
FAILURE_KINDS = ("slot_create", "slot_boot", "registration", "image_stage", "drain", "destroy", "other")
STATE_SCHEMA = 1
MIB = 1024 * 1024


class MetricsError(FarmError):
    """Input or state the metrics cannot use; ``option`` names the input."""


@dataclass
class SlotSample:
    """One slot as the metrics count it."""

    hypervisor: str
    name: str
    lifecycle: str
    domain_state: str
    worker_type: str
    image: str
    image_version: str
    vcpus: int = 0
    memory_mib: int = 0
    backoff: bool = False  # held back from re-creation after repeated failures (until its back-off ends)


@dataclass
class FarmSnapshot:
    """Everything one hypervisor's metrics file says, as plain data (also the module result)."""

    hypervisor: str
    now: datetime.datetime
    slots: List[SlotSample] = field(default_factory=list)
    unreadable_slots: int = 0
    capacity: Dict[str, Any] = field(default_factory=dict)
    images: List[Dict[str, Any]] = field(default_factory=list)
    image_failures: int = 0
    newest_ready_at: Optional[datetime.datetime] = None
    image_cache_present: bool = False
    accounting: Dict[str, Any] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        by_state: Dict[str, int] = dict.fromkeys(STATES, 0)
        for slot in self.slots:
            by_state[slot.lifecycle] = by_state.get(slot.lifecycle, 0) + 1
        accepting = [s for s in self.slots if s.lifecycle in ACCEPTING_STATES]
        return {
            "hypervisor": self.hypervisor,
            "time": format_time(self.now),
            "slots": [s.__dict__.copy() for s in self.slots],
            "slots_by_lifecycle": by_state,
            "unreadable_slots": self.unreadable_slots,
            "accepting": {
                "slots": len(accepting),
                "vcpus": sum(s.vcpus for s in accepting),
                "memory_mib": sum(s.memory_mib for s in accepting),
            },
            "capacity": dict(self.capacity),
            "images": [dict(i) for i in self.images],
            "image_failures": self.image_failures,
            "newest_ready_at": format_time(self.newest_ready_at) if self.newest_ready_at else None,
            "accounting": dict(self.accounting),
            "plays": dict(self.state.get("plays", {})),
            "failures": dict(self.state.get("failures", {})),
        }


# -- the state file: last play runs and failure counters ----------------------------------------


def empty_state() -> Dict[str, Any]:
    return {"schema": STATE_SCHEMA, "plays": {}, "failures": {}}


def load_state(path: str) -> Dict[str, Any]:
    """The recorded play runs and failure counters; an empty state when the file is absent."""
    if not path or not os.path.exists(path):
        return empty_state()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise MetricsError(
            f"state_path: cannot read {path}: {exc} (remove the file to start the counters afresh)", "state_path"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("plays", {}), dict):
        raise MetricsError(f"state_path: {path} is not a metrics state file (a JSON object)", "state_path")
    if int(data.get("schema", 1)) > STATE_SCHEMA:
        raise MetricsError(f"state_path: {path} is newer than this collection understands: upgrade", "state_path")
    state = empty_state()
    state["plays"] = dict(data.get("plays") or {})
    state["failures"] = {str(k): int(v) for k, v in (data.get("failures") or {}).items()}
    return state


def save_state(path: str, state: Dict[str, Any]) -> None:
    """Write the state file atomically (a temporary file beside it, fsynced, renamed)."""
    write_atomic(path, json.dumps(state, sort_keys=True, indent=1) + "\n", mode=0o644, makedirs=True)


def record_play(
    state: Dict[str, Any],
    play: str,
    outcome: str,
    finished: datetime.datetime,
    started: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """A copy of ``state`` with the run of ``play`` recorded (its last run and its run counters)."""
    if not play or not all(c.isalnum() or c in "_-." for c in play):
        raise MetricsError(f"play.name: {play!r} must be a non-empty name of letters, digits, _ - .", "play.name")
    if outcome not in PLAY_OUTCOMES:
        raise MetricsError(f"play.outcome: {outcome!r} must be one of {', '.join(PLAY_OUTCOMES)}", "play.outcome")
    duration = 0.0
    if started is not None:
        duration = (finished - started).total_seconds()
        if duration < 0:
            raise MetricsError("play.started must not be after the end of the play", "play.started")
    new = json.loads(json.dumps(state))
    entry = dict(new["plays"].get(play, {}))
    runs = dict(entry.get("runs", {}))
    runs[outcome] = int(runs.get(outcome, 0)) + 1
    entry.update(
        last_finished=format_time(finished),
        last_outcome=outcome,
        last_duration_seconds=duration,
        runs=runs,
    )
    if outcome == "success":
        entry["last_success"] = format_time(finished)
    new["plays"][play] = entry
    return new


def record_failures(state: Dict[str, Any], kind: str, count: int = 1) -> Dict[str, Any]:
    """A copy of ``state`` with ``count`` more failures of ``kind``."""
    if kind not in FAILURE_KINDS:
        raise MetricsError(f"failure.kind: {kind!r} must be one of {', '.join(FAILURE_KINDS)}", "failure.kind")
    if count < 0:
        raise MetricsError(f"failure.count must be 0 or more, got {count}", "failure.count")
    new = json.loads(json.dumps(state))
    new["failures"][kind] = int(new["failures"].get(kind, 0)) + count
    return new


# -- reading the farm -------------------------------------------------------------------------


def read_slots(conn: Any, hypervisor: str, now: datetime.datetime, batch: Any = None) -> Tuple[List[SlotSample], int]:
    """The slots of an open connection with their lifecycle (the inventory's model), vCPUs and memory."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import (
        backoff_until,
        read_domains,
        slot_state,
        state_name,
    )

    samples: List[SlotSample] = []
    unreadable = 0
    for record in read_domains(conn):
        if record.slot is None:
            unreadable += 1
            continue
        slot = record.slot
        view = batch.get(slot["batch"]["node"]) if batch else None
        lifecycle, _seconds = slot_state(record, now, view)
        vcpus, memory_mib = _domain_size(conn, record.domain)
        samples.append(
            SlotSample(
                hypervisor=hypervisor,
                name=slot["name"],
                lifecycle=lifecycle,
                domain_state=state_name(record.state),
                worker_type=slot.get("worker_type") or DEFAULT_WORKER_TYPE,
                image=slot["image"]["identifier"],
                image_version=slot["image"]["version"],
                vcpus=vcpus,
                memory_mib=memory_mib,
                backoff=backoff_until(slot, now) is not None,
            )
        )
    samples.sort(key=lambda s: s.name)
    return samples, unreadable


def _domain_size(conn: Any, name: str) -> Tuple[int, int]:
    """(vCPUs, maximum memory in MiB) of a domain; (0, 0) when it vanished meanwhile."""
    try:
        info = conn.lookupByName(name).info()
    except Exception:  # undefined between the listing and now
        return 0, 0
    return int(info[3]), int(info[1]) // 1024


def read_image_cache(root: str) -> Tuple[bool, List[Dict[str, Any]], int, Optional[datetime.datetime]]:
    """(present, images, failures seen in the history, time the newest ready image became ready).

    The cache is read through its public methods; a host without a cache database (no image
    staged yet) has no entries rather than an empty database created by a read.
    """
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache

    if not root:
        return False, [], 0, None
    cache = ImageCache(root)
    if not os.path.exists(cache.db_path):
        return False, [], 0, None
    try:
        images = [r.as_dict() for r in cache.images()]
        history = cache.history()
    finally:
        cache.close()
    failures = sum(1 for h in history if h.get("to_state") == "failed")
    ready_keys = {(i["identifier"], i["version"]) for i in images if i["state"] == "ready"}
    newest: Optional[datetime.datetime] = None
    for entry in history:
        if entry.get("to_state") == "ready" and (entry["identifier"], entry["version"]) in ready_keys:
            at = parse_time(entry["at"], "history.at", MetricsError)
            if newest is None or at > newest:
                newest = at
    return True, images, failures, newest


def read_accounting(path: str) -> Dict[str, Any]:
    """Ended VM lives by end reason, and lives still open, from the accounting database."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import AccountingStore

    if not path or not os.path.exists(path):
        return {}
    store = AccountingStore(path, create=False)
    try:
        return store.counts()
    finally:
        store.close()


def collect(
    conn: Any,
    hypervisor: str,
    now: datetime.datetime,
    image_root: str = "",
    accounting_path: str = "",
    state: Optional[Dict[str, Any]] = None,
    capacity: Optional[Dict[str, Any]] = None,
    batch: Any = None,
) -> FarmSnapshot:
    """Read everything the metrics file shows from one hypervisor."""
    slots, unreadable = read_slots(conn, hypervisor, now, batch)
    present, images, failures, newest = read_image_cache(image_root)
    return FarmSnapshot(
        hypervisor=hypervisor,
        now=now,
        slots=slots,
        unreadable_slots=unreadable,
        capacity=dict(capacity or {}),
        images=images,
        image_failures=failures,
        newest_ready_at=newest,
        image_cache_present=present,
        accounting=read_accounting(accounting_path),
        state=state or empty_state(),
    )


# -- the exposition ---------------------------------------------------------------------------


def _epoch(value: str) -> float:
    return parse_time(value, "time", MetricsError).timestamp()


class FarmCollector:
    """A ``prometheus_client`` collector over one :class:`FarmSnapshot` (families in a fixed order)."""

    def __init__(self, snapshot: FarmSnapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterator[Any]:  # noqa: C901 - one family after another
        snap = self.snapshot
        hv = snap.hypervisor

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


def registry_for(snapshot: FarmSnapshot) -> Any:
    """A registry of its own (never the process-global one) holding the farm collector."""
    if not HAS_PROMETHEUS_CLIENT:
        raise MetricsError(
            "the Python module prometheus_client is not installed on this host: "
            "install python3-prometheus-client or 'pip install prometheus-client'"
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(snapshot))  # type: ignore[arg-type]
    return registry


def exposition(snapshot: FarmSnapshot) -> str:
    """The text exposition format of the snapshot (what the textfile holds)."""
    return str(generate_latest(registry_for(snapshot)).decode("utf-8"))


def write_textfile(path: str, snapshot: FarmSnapshot, check_mode: bool = False) -> Tuple[bool, str]:
    """Write the metrics file unless its content is the same; returns (changed, content)."""
    text = exposition(snapshot)
    old = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            old = handle.read()
    if old == text:
        return False, text
    if not check_mode:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise MetricsError(
                f"textfile_dir: {directory} does not exist: install prometheus-node-exporter or create the "
                "directory its --collector.textfile.directory names",
                "textfile_dir",
            )
        write_to_textfile(path, registry_for(snapshot))  # temporary file + rename
        os.chmod(path, 0o644)
    return True, text


# -- the farm_metrics module's logic ------------------------------------------------------------

METRICS_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "hypervisor": {"type": "str"},
    "textfile_dir": {"type": "path", "default": DEFAULT_TEXTFILE_DIR},
    "filename": {"type": "str", "default": DEFAULT_FILENAME},
    "state_path": {"type": "path", "default": DEFAULT_STATE_PATH},
    "image_root": {"type": "path", "default": "/var/lib/batchvirt/images"},
    "accounting_path": {"type": "path", "default": "/var/lib/batchvirt/accounting.sqlite"},
    "config_path": {"type": "path", "default": "/etc/batchvirt/hypervisor.json"},
    "now": {"type": "str"},
    "play": {
        "type": "dict",
        "options": {
            "name": {"type": "str", "required": True},
            "outcome": {"type": "str", "required": True, "choices": list(PLAY_OUTCOMES)},
            "started": {"type": "str"},
        },
    },
    "failures": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "kind": {"type": "str", "required": True, "choices": list(FAILURE_KINDS)},
            "count": {"type": "int", "default": 1},
        },
    },
}


def run_metrics(conn: Any, params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    """Record the play run and failures given, read the farm, write the textfile."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import farm_now

    filename = params["filename"]
    if not filename.endswith(".prom") or "/" in filename or filename.startswith("."):
        raise MetricsError(
            f"filename: {filename!r} must be a plain file name ending in .prom (node_exporter reads only those)",
            "filename",
        )
    try:
        now = farm_now(params.get("now"))
    except ValueError as exc:
        raise MetricsError(str(exc), "now") from None
    with _state_lock(params["state_path"], check_mode):
        return _refresh(conn, params, check_mode, now, filename)


@contextlib.contextmanager
def _state_lock(state_path: str, check_mode: bool) -> Iterator[None]:
    """One refresh at a time per state file: two plays recording runs at once both count."""
    if check_mode or not state_path:
        yield
        return
    directory = os.path.dirname(os.path.abspath(state_path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(state_path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MetricsError(f"state_path: cannot lock {state_path}: {exc}", "state_path") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _refresh(
    conn: Any, params: Dict[str, Any], check_mode: bool, now: datetime.datetime, filename: str
) -> Dict[str, Any]:
    from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor_info import gather_info

    state = load_state(params["state_path"])
    state_changed = False
    play = params.get("play")
    if play:
        started = parse_time(play["started"], "play.started", MetricsError) if play.get("started") else None
        state = record_play(state, play["name"], play["outcome"], now, started)
        state_changed = True
    for failure in params.get("failures") or []:
        if failure.get("count", 1):
            state = record_failures(state, failure["kind"], failure.get("count", 1))
            state_changed = True
    info = gather_info(conn, config_path=params["config_path"], now=now)
    hypervisor = params.get("hypervisor") or info["hostname"]
    snapshot = collect(
        conn,
        hypervisor,
        now,
        image_root=params["image_root"],
        accounting_path=params["accounting_path"],
        state=state,
        capacity=info["capacity"],
    )
    if state_changed and not check_mode:
        save_state(params["state_path"], state)
    path = os.path.join(params["textfile_dir"], filename)
    changed, text = write_textfile(path, snapshot, check_mode)
    result = snapshot.to_dict()
    result.update(changed=changed or state_changed, path=path, metrics=len(text.splitlines()))
    return result
