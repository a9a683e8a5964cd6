# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: how many slots a hypervisor holds and what each one is called,
addressed and reached by (pure functions, no libvirt).

Names are ``<hypervisor>-slot-NN``; addresses come from a site pool, slot ``n`` of the
hypervisor whose address block is ``i`` taking the pool's ``i * stride + n``-th address. The
block is fixed once per hypervisor and recorded on it (:class:`BlockRecord`), so that the
table never changes and never collides across hypervisors; user-mode SSH forwards take
``ssh_port_base + n``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import CapacityError, DomainUsage, HostCapacity
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time

try:
    import netaddr

    HAS_NETADDR = True
except ImportError:  # pragma: no cover - depends on the hypervisor
    netaddr = None
    HAS_NETADDR = False

DEFAULT_BLOCK_RECORD = "/etc/batchvirt/slot-block.json"


class LayoutError(FarmError, ValueError):
    """A layout that cannot be built; ``option`` names the input to change."""


def plan_count(
    host: HostCapacity,
    count: Union[int, str, None],
    vcpus: int,
    memory_mib: int,
    overcommit_cpu: float = 1.0,
) -> int:
    """The number of slots: ``auto`` (or None) = what fits; an explicit count must fit.

    ``host`` must not count this layout's own slots among its domains (a rerun lays out
    the same table); :func:`without_slots` removes them.
    """
    try:
        if count in (None, "auto"):
            return host.max_vms(memory_mib, vcpus, overcommit_cpu)
        try:
            wanted = int(count)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise LayoutError(f"count must be 'auto' or a number, got {count!r}", "count") from None
        if wanted < 0:
            raise LayoutError(f"count must not be negative, got {wanted}", "count")
        verdict = host.check_plan(wanted, memory_mib, vcpus, overcommit_cpu)
    except CapacityError as exc:
        raise LayoutError(str(exc), exc.option) from None
    if not verdict.fits:
        raise LayoutError("count=%d does not fit on this hypervisor: %s" % (wanted, verdict.message), "count")
    return wanted


def without_slots(host: HostCapacity, hypervisor: str) -> HostCapacity:
    """``host`` without the domains named ``<hypervisor>-slot-*`` (the layout's own)."""
    prefix = hypervisor + "-slot-"
    return replace(host, domains=tuple(d for d in host.domains if not d.name.startswith(prefix)))


@dataclass(frozen=True)
class MixPart:
    """One worker type's share of a hypervisor's layout: how many slots and what each takes."""

    worker_type: str
    count: int
    vcpus: int
    memory_mib: int


def plan_mix(host: HostCapacity, mix: Sequence[Dict[str, Any]], overcommit_cpu: float = 1.0) -> List[MixPart]:
    """The slot count of each part of ``layout.mix``, in order, within the host's capacity.

    Each part takes its count from what the parts before it left (``auto``: as many as fit,
    so an ``auto`` part usually comes last); an explicit count that does not fit fails naming
    ``mix[i].count``. ``host`` must not count the layout's own slots (:func:`without_slots`).
    """
    parts: List[MixPart] = []
    seen: Dict[str, int] = {}
    for i, raw in enumerate(mix):
        where = f"mix[{i}]"
        name = str(raw.get("worker_type") or "").strip()
        if not name:
            raise LayoutError(f"{where}.worker_type: give the worker type of these slots", where + ".worker_type")
        if name in seen:
            raise LayoutError(
                f"{where}.worker_type: {name!r} is already mix[{seen[name]}]; give each type once",
                where + ".worker_type",
            )
        seen[name] = i
        vcpus, memory = int(raw["vcpus"]), int(raw["memory_mib"])
        try:
            count = plan_count(host, raw.get("count", "auto"), vcpus, memory, overcommit_cpu)
        except LayoutError as exc:
            raise LayoutError(f"{where} ({name}): {exc}", f"{where}.{exc.option}") from None
        parts.append(MixPart(name, count, vcpus, memory))
        planned = tuple(
            DomainUsage(name=f"(planned {name} {n})", memory_mib=memory, vcpus=vcpus, active=True) for n in range(count)
        )
        host = replace(host, domains=host.domains + planned)
    return parts


def _ip(value: int) -> Any:
    return netaddr.IPAddress(value, 4)


def _parse_range(text: str, network: Any, label: str) -> Any:
    """``a.b.c.d``, ``a.b.c.d-e.f.g.h`` or a CIDR, inside ``network``, as a netaddr IPSet."""
    value = str(text).strip()
    try:
        if "-" in value:
            start, end = (part.strip() for part in value.split("-", 1))
            found = netaddr.IPSet(netaddr.IPRange(start, end))
        else:
            found = netaddr.IPSet([netaddr.IPNetwork(value) if "/" in value else netaddr.IPAddress(value)])
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise LayoutError(
            f"address_pool.{label}: {value!r} is not an address, a range a.b.c.d-e.f.g.h or a CIDR ({exc})",
            f"address_pool.{label}",
        ) from None
    if not found.issubset(netaddr.IPSet([network])):
        raise LayoutError(f"address_pool.{label} {value} is not in {network}", f"address_pool.{label}")
    return found


@dataclass(frozen=True)
class AddressPool:
    """A site's address pool: the addresses of ``ranges`` (default ``first``-``last`` of
    ``network``) minus ``exclude`` and the gateway, in address order (netaddr IPSet)."""

    network: Any  # netaddr.IPNetwork
    usable: Any  # netaddr.IPSet
    described: str  # the ranges as given, for messages
    gateway: Optional[str] = None
    dns: Tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> AddressPool:
        if not HAS_NETADDR:
            raise LayoutError(
                "address_pool needs the Python module netaddr on the hypervisor: install python3-netaddr "
                "(Debian/Ubuntu, EL) or 'pip install netaddr'",
                "address_pool",
            )
        try:
            network = netaddr.IPNetwork(str(spec["network"]))
            if network.version != 4:
                raise ValueError("not IPv4")
        except (KeyError, ValueError, netaddr.AddrFormatError) as exc:
            raise LayoutError(
                f"address_pool.network must be an IPv4 network such as 192.0.2.0/24 ({exc})", "address_pool.network"
            ) from None
        hosts = network if network.prefixlen >= 31 else netaddr.IPRange(network.first + 1, network.last - 1)
        if spec.get("ranges"):
            if spec.get("first") or spec.get("last"):
                raise LayoutError("address_pool: give ranges, or first and last, not both", "address_pool.ranges")
            ranges = netaddr.IPSet()
            for entry in spec["ranges"]:
                ranges |= _parse_range(entry, network, "ranges")
            described = ", ".join(str(r) for r in ranges.iter_ipranges())
        else:
            first = _parse_range(spec["first"], network, "first") if spec.get("first") else None
            last = _parse_range(spec["last"], network, "last") if spec.get("last") else None
            start = _ip(first.iprange().first) if first else _ip(hosts.first)
            end = _ip(last.iprange().first) if last else _ip(hosts.last)
            if end < start:
                raise LayoutError(f"address_pool.last {end} is before address_pool.first {start}", "address_pool.last")
            ranges = netaddr.IPSet(netaddr.IPRange(start, end))
            described = f"{start}-{end}"
        gateway = None
        if spec.get("gateway"):
            gateway = str(_ip(_parse_range(spec["gateway"], network, "gateway").iprange().first))
            ranges.remove(gateway)
        for entry in spec.get("exclude") or ():
            ranges -= _parse_range(entry, network, "exclude")
        return cls(network.cidr, ranges, described, gateway, tuple(str(d) for d in spec.get("dns") or ()))

    @property
    def size(self) -> int:
        return int(self.usable.size)

    def address(self, index: int) -> str:
        """The ``index``-th usable address (0-based) as ``a.b.c.d/prefix``."""
        offset = index
        for block in self.usable.iter_ipranges():
            if offset < block.size:
                return f"{_ip(block.first + offset)}/{self.network.prefixlen}"
            offset -= block.size
        raise LayoutError(
            "address pool %s (%s) is exhausted: slot needs its address number %d, the pool has %d; "
            "widen address_pool or lower the stride or the slot count"
            % (self.network, self.described, index + 1, self.size),
            "address_pool",
        )


@dataclass(frozen=True)
class BlockRecord:
    """A hypervisor's address block: slot ``n`` takes the pool's address ``index * stride + n``.

    Fixed the first time a layout with an address pool runs on a hypervisor, and recorded there
    (:data:`DEFAULT_BLOCK_RECORD`), so that adding or reordering hypervisors, or ``--limit``,
    never moves an address. ``recorded`` says it came from the record; ``warning`` why a
    requested index was not used.
    """

    hypervisor: str
    index: int
    stride: int
    recorded: bool = False
    warning: str = ""


def read_block_record(path: str) -> Optional[Dict[str, Any]]:
    """The recorded block (a JSON object), or None when none is recorded."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("index"), int)
            or not isinstance(data.get("stride"), int)
        ):
            raise ValueError("expected an object with the integers index and stride")
    except (OSError, ValueError) as exc:
        raise LayoutError(
            f"block_record {path} cannot be read ({exc}): restore it from a backup, or rewrite it with the index "
            "this hypervisor's slots have (their addresses show it)",
            "block_record",
        ) from None
    return data


def choose_block(recorded: Optional[Dict[str, Any]], hypervisor: str, index: int, stride: int) -> BlockRecord:
    """The recorded block if there is one (refusing another stride), else ``index`` to record."""
    if index < 0:
        raise LayoutError(f"hypervisor index must not be negative, got {index}", "index")
    if recorded is None:
        return BlockRecord(hypervisor, index, stride)
    if recorded["stride"] != stride:
        raise LayoutError(
            "stride %d differs from the stride %d recorded with this hypervisor's address block: every slot "
            "address would move; keep stride %d (it is fixed for the farm)"
            % (stride, recorded["stride"], recorded["stride"]),
            "stride",
        )
    warning = ""
    if recorded["index"] != index:
        warning = "layout.index %d not used: this hypervisor's address block %d is recorded (addresses never move)" % (
            index,
            recorded["index"],
        )
    return BlockRecord(hypervisor, recorded["index"], stride, recorded=True, warning=warning)


def write_block_record(path: str, block: BlockRecord, now: Any) -> None:
    """Record ``block`` atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    data = {
        "hypervisor": block.hypervisor,
        "index": block.index,
        "stride": block.stride,
        "recorded_at": format_time(now),
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def slot_name(hypervisor: str, number: int) -> str:
    """``<hypervisor>-slot-NN`` (NN from 01)."""
    return "%s-slot-%02d" % (hypervisor, number)


def layout(
    hypervisor: str,
    index: int,
    count: int,
    stride: int = 32,
    pool: Optional[AddressPool] = None,
    ssh_port_base: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """The slot table of one hypervisor: name, number, address (with pool), ssh_port (with a base)."""
    if index < 0:
        raise LayoutError(f"hypervisor index must not be negative, got {index}", "index")
    if count > stride:
        raise LayoutError(
            f"count={count} slots exceed the per-hypervisor address stride {stride}: raise stride "
            "(it must stay the same for the whole farm)",
            "stride",
        )
    if ssh_port_base is not None and (ssh_port_base < 1 or ssh_port_base + count - 1 > 65535):
        raise LayoutError(
            f"ssh_port_base {ssh_port_base} leaves no room for {count} ports below 65536", "ssh_port_base"
        )
    slots = []
    for n in range(count):
        entry: Dict[str, Any] = {"name": slot_name(hypervisor, n + 1), "number": n + 1}
        if pool is not None:
            entry["address"] = pool.address(index * stride + n)
        if ssh_port_base is not None:
            entry["ssh_port"] = ssh_port_base + n
        slots.append(entry)
    return slots


def check_unique(slots: Sequence[Dict[str, Any]], keys: Iterable[str] = ("name", "address", "mac", "ssh_port")) -> None:
    """Refuse two slots with one name, address, MAC or SSH port (the message names both)."""
    for key in keys:
        seen: Dict[str, str] = {}
        for slot in slots:
            value = slot.get(key)
            if value in (None, "", 0):
                continue
            text = str(value).split("/", maxsplit=1)[0] if key == "address" else str(value)
            if text in seen:
                raise LayoutError(
                    f"two slots share the {key} {text}: {seen[text]} and {slot.get('name')}; every slot needs its own",
                    key,
                )
            seen[text] = str(slot.get("name"))
