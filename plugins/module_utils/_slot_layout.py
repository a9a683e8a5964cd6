# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: how many slots a hypervisor holds and what each one is called,
addressed and reached by (pure functions, no libvirt).

Names are ``<hypervisor>-slot-NN``; addresses come from a site pool, slot ``n`` of the
hypervisor with index ``i`` taking the pool's ``i * stride + n``-th address, so that the
table is deterministic and never collides across hypervisors; user-mode SSH forwards take
``ssh_port_base + n``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import CapacityError, HostCapacity


class LayoutError(ValueError):
    """A layout that cannot be built; ``option`` names the input to change."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


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
        raise LayoutError(str(exc), exc.field_name) from None
    if not verdict.fits:
        raise LayoutError("count=%d does not fit on this hypervisor: %s" % (wanted, verdict.message), "count")
    return wanted


def without_slots(host: HostCapacity, hypervisor: str) -> HostCapacity:
    """``host`` without the domains named ``<hypervisor>-slot-*`` (the layout's own)."""
    prefix = hypervisor + "-slot-"
    return replace(host, domains=tuple(d for d in host.domains if not d.name.startswith(prefix)))


@dataclass(frozen=True)
class AddressPool:
    """A site's address pool: the addresses of ``network`` between ``first`` and ``last``."""

    network: ipaddress.IPv4Network
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    gateway: Optional[ipaddress.IPv4Address] = None
    dns: Tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> AddressPool:
        try:
            network = ipaddress.IPv4Network(str(spec["network"]), strict=False)
        except (KeyError, ValueError) as exc:
            raise LayoutError(
                f"address_pool.network must be an IPv4 network such as 192.0.2.0/24 ({exc})", "address_pool.network"
            ) from None
        hosts_first = network.network_address + 1 if network.prefixlen < 31 else network.network_address
        hosts_last = network.broadcast_address - 1 if network.prefixlen < 31 else network.broadcast_address
        try:
            first = ipaddress.IPv4Address(str(spec["first"])) if spec.get("first") else hosts_first
            last = ipaddress.IPv4Address(str(spec["last"])) if spec.get("last") else hosts_last
            gateway = ipaddress.IPv4Address(str(spec["gateway"])) if spec.get("gateway") else None
        except ValueError as exc:
            raise LayoutError(f"address_pool: {exc}", "address_pool") from None
        for label, value in (("first", first), ("last", last), ("gateway", gateway)):
            if value is not None and value not in network:
                raise LayoutError(f"address_pool.{label} {value} is not in {network}", f"address_pool.{label}")
        if last < first:
            raise LayoutError(f"address_pool.last {last} is before address_pool.first {first}", "address_pool.last")
        return cls(network, first, last, gateway, tuple(str(d) for d in spec.get("dns") or ()))

    def address(self, index: int) -> str:
        """The ``index``-th usable address (0-based) as ``a.b.c.d/prefix``."""
        usable = int(self.last) - int(self.first) + 1
        gateway_inside = self.gateway is not None and self.first <= self.gateway <= self.last
        if gateway_inside:
            usable -= 1
        if index >= usable:
            raise LayoutError(
                "address pool %s (%s-%s) is exhausted: slot needs its address number %d, the pool has %d; "
                "widen address_pool or lower the stride or the slot count"
                % (self.network, self.first, self.last, index + 1, usable),
                "address_pool",
            )
        address = self.first + index
        if gateway_inside and self.gateway is not None and address >= self.gateway:
            address += 1
        return f"{address}/{self.network.prefixlen}"


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
