# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: reading a hypervisor's slots in bulk, and the farm clock.

The inventory plugin ``batchvirt.farm.slots`` and any module that needs every slot of a
hypervisor read them here, with the fewest libvirt round trips: one
``getAllDomainStats(STATE)`` call for every domain and its run state, then one
``virDomain.metadata()`` call per domain (libvirt has no bulk metadata API; the metadata
element is a fraction of the size of ``XMLDesc`` and measured faster, see
docs/performance/inventory.md).
"""

from __future__ import annotations

import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._image_selection import WITHDRAWN_SUFFIX
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    DOMAIN_STATE_NAMES,
    FarmLibvirtError,
    connect,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import (
    BatchView,
    LifecycleTimes,
    compute_lifecycle,
    seconds_to_drain,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_clock import farm_now as _env_now
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    SlotMetadataError,
    parse_time,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time

try:
    import libvirt
except ImportError:  # pragma: no cover - reported by connect()
    libvirt = None

# libvirt run states in which a domain counts as "not running" for the lifecycle.
_STOPPED_STATES = frozenset((0, 5, 6))  # NOSTATE, SHUTOFF, CRASHED
# What makes a slot "failed" on libvirt's word alone: CRASHED, or PAUSED for one of these
# reasons (VIR_DOMAIN_PAUSED_IOERROR 5, _WATCHDOG 6, _CRASHED 10, _POSTCOPY_FAILED 13, _API_ERROR 14).
# Not PAUSED_SNAPSHOT (9): a snapshot pauses a healthy guest for a moment.
_CRASHED = 6
_PAUSED = 3
_PAUSED_ON_ERROR = frozenset((5, 6, 10, 13, 14))
_STATE_NAMES = DOMAIN_STATE_NAMES


def farm_now(override: Optional[str] = None) -> datetime.datetime:
    """The farm clock: ``override`` (the plugin option ``now``) if given, else the shared clock
    of ``_slot_clock`` (``$BATCHVIRT_FARM_NOW`` or the real UTC time)."""
    try:
        if override:
            return parse_time(override, "now")
        return _env_now()
    except SlotMetadataError as exc:
        raise ValueError(str(exc)) from None


def state_name(state: int) -> str:
    return _STATE_NAMES.get(state, "unknown")


@dataclass
class DomainRecord:
    """One domain of a hypervisor as read from libvirt (plain data, cacheable as JSON)."""

    domain: str
    state: int
    slot: Optional[Dict[str, Any]] = None  # SlotMetadata.to_dict(), None for a foreign domain
    error: str = ""  # unreadable slot metadata
    reason: int = 0  # libvirt's reason for ``state``

    @property
    def running(self) -> bool:
        return self.state not in _STOPPED_STATES

    @property
    def domain_error(self) -> bool:
        """libvirt reports the domain crashed, or paused on an error (the lifecycle's ``failed``)."""
        return self.state == _CRASHED or (self.state == _PAUSED and self.reason in _PAUSED_ON_ERROR)

    def to_json(self) -> Dict[str, Any]:
        data = {"domain": self.domain, "state": self.state, "slot": self.slot, "error": self.error}
        if self.reason:
            data["reason"] = self.reason
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> DomainRecord:
        return cls(
            data["domain"], int(data["state"]), data.get("slot"), data.get("error", ""), int(data.get("reason", 0))
        )


@dataclass
class HypervisorRead:
    """The outcome of reading one hypervisor: its domains, or why it could not be read."""

    name: str
    uri: str
    domains: List[DomainRecord] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    withdrawn: List[str] = field(default_factory=list)  # "<identifier>_<version>" of withdrawn images

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "domains": [d.to_json() for d in self.domains],
            "error": self.error,
            "seconds": self.seconds,
            "withdrawn": list(self.withdrawn),
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> HypervisorRead:
        return cls(
            data["name"],
            data["uri"],
            [DomainRecord.from_json(d) for d in data.get("domains", [])],
            data.get("error", ""),
            float(data.get("seconds", 0.0)),
            [str(w) for w in data.get("withdrawn", [])],
        )


def read_domains(conn: Any, include_foreign: bool = False) -> List[DomainRecord]:
    """Every domain of an open connection with its run state and slot metadata.

    Round trips: one ``getAllDomainStats`` plus one ``metadata()`` per domain; domains
    without the collection's metadata are dropped unless ``include_foreign``.
    """
    records: List[DomainRecord] = []
    for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0):
        state = int(stats.get("state.state", 0))
        reason = int(stats.get("state.reason", 0))
        try:
            meta = read_metadata(dom)  # one metadata() call; puts back the namespace libvirt strips
        except SlotMetadataError as exc:
            records.append(DomainRecord(dom.name(), state, None, str(exc), reason))
            continue
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined between the listing and now
            raise
        if meta is None:
            if include_foreign:
                records.append(DomainRecord(dom.name(), state, reason=reason))
            continue
        slot = meta.to_dict()
        records.append(DomainRecord(dom.name(), state, slot, reason=reason))
    return records


def read_withdrawn(conn: Any, pool: str) -> List[str]:
    """``<identifier>_<version>`` of every image the image cache of this hypervisor marks as
    withdrawn (a marker volume ``<identifier>_<version>.withdrawn`` in its pool, see
    ``_image_selection``): two round trips per hypervisor. A hypervisor without that pool (or
    with the pool stopped) has none."""
    if not pool:
        return []
    try:
        names = [vol.name() for vol in conn.storagePoolLookupByName(pool).listAllVolumes(0)]
    except Exception:  # no such pool, pool inactive: no image cache here
        return []
    return sorted(n[: -len(WITHDRAWN_SUFFIX)] for n in names if n.endswith(WITHDRAWN_SUFFIX))


def image_volume_stem(identifier: str, version: str) -> str:
    """How the image cache names an image version's files (without the format suffix)."""
    return f"{identifier}_{version}"


def read_hypervisor(name: str, uri: str, include_foreign: bool = False, image_pool: str = "") -> HypervisorRead:
    """Open ``uri`` read-only, read its domains (and withdrawn images of ``image_pool``), close;
    errors land in ``.error``."""
    started = time.monotonic()
    result = HypervisorRead(name, uri)
    conn = None
    try:
        conn = connect(uri, readonly=True)
        result.domains = read_domains(conn, include_foreign)
        result.withdrawn = read_withdrawn(conn, image_pool)
    except FarmLibvirtError as exc:
        result.error = str(exc)
    except Exception as exc:  # libvirt errors while listing, anything unexpected
        message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
        result.error = f"cannot read the domains of {uri}: {message}"
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing a broken connection
                pass
    result.seconds = time.monotonic() - started
    return result


def read_hypervisor_with_timeout(
    name: str, uri: str, timeout: float, include_foreign: bool = False, image_pool: str = ""
) -> HypervisorRead:
    """:func:`read_hypervisor` in its own thread, abandoned after ``timeout`` seconds.

    libvirt's open can hang (a black-holed TCP connect, an SSH prompt): the reading thread
    is a daemon thread, so a hung hypervisor never holds the refresh or the process.
    """
    box: List[HypervisorRead] = []
    thread = threading.Thread(
        target=lambda: box.append(read_hypervisor(name, uri, include_foreign, image_pool)),
        name=f"farm-slots-{name}",
        daemon=True,
    )
    thread.start()
    thread.join(timeout)
    if box:
        return box[0]
    return HypervisorRead(
        name, uri, error=f"no answer from {uri} within {timeout:g} s (option timeout)", seconds=timeout
    )


def read_farm(
    hypervisors: List[Tuple[str, str]],
    concurrency: int = 20,
    timeout: float = 10.0,
    include_foreign: bool = False,
    image_pool: str = "",
) -> List[HypervisorRead]:
    """Read every ``(name, uri)`` hypervisor with at most ``concurrency`` at once, in input order."""
    if not hypervisors:
        return []
    workers = max(1, min(concurrency, len(hypervisors)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farm-slots") as pool:
        futures = [
            pool.submit(read_hypervisor_with_timeout, n, u, timeout, include_foreign, image_pool)
            for n, u in hypervisors
        ]
        return [f.result() for f in futures]


# -- from records to inventory data --------------------------------------------------------


def slot_times(slot: Dict[str, Any]) -> LifecycleTimes:
    return LifecycleTimes(
        parse_time(slot["created_at"], "created_at"),
        parse_time(slot["drain_at"], "drain_at"),
        parse_time(slot["deadline"], "deadline"),
        bool(slot.get("drain", {}).get("requested")),
    )


def slot_state(
    record: DomainRecord,
    now: datetime.datetime,
    batch: Optional[BatchView] = None,
    **kwargs: Any,
) -> Tuple[str, int]:
    """``(lifecycle state, seconds to drain)`` of a slot record with the shared model."""
    if record.slot is None:
        raise ValueError(f"domain {record.domain} is not a slot")
    times = slot_times(record.slot)
    kwargs.setdefault("domain_error", record.domain_error)
    return compute_lifecycle(times, now, record.running, batch, **kwargs), seconds_to_drain(times, now)


def backoff_until(slot: Dict[str, Any], now: datetime.datetime) -> Optional[str]:
    """When the slot's back-off ends (its metadata's ``failures.backoff_until``), or None when it
    has none or it has passed: recycle.yml leaves a slot alone until then."""
    until = (slot.get("failures") or {}).get("backoff_until")
    if not until:
        return None
    return until if now < parse_time(until, "failures.until") else None


def batch_view_to_json(view: BatchView) -> Dict[str, Any]:
    data = {"registered": view.registered, "drain": view.drain, "jobs": view.jobs, "state": view.state}
    if view.state_since is not None:
        data["state_since"] = format_time(view.state_since)
    return data


def batch_view_from_json(data: Dict[str, Any]) -> BatchView:
    since = data.get("state_since")
    return BatchView(
        bool(data["registered"]),
        bool(data.get("drain")),
        int(data.get("jobs", 0)),
        data.get("state", ""),
        parse_time(since, "state_since") if since else None,
    )
