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
from ansible_collections.batchvirt.farm.plugins.module_utils._metrics_families import (
    DEFAULT_WORKER_TYPE,
    FAILURE_KINDS,
    PLAY_OUTCOMES,
    FarmCollector,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time

try:
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.exposition import generate_latest

    HAS_PROMETHEUS_CLIENT = True
except ImportError:  # pragma: no cover - reported by the module
    HAS_PROMETHEUS_CLIENT = False

DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
DEFAULT_FILENAME = "batchvirt_farm.prom"
DEFAULT_STATE_PATH = "/var/lib/batchvirt/metrics-state.json"
STATE_SCHEMA = 1


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
