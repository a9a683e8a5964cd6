# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the hypervisor capacity model (pure functions, no libvirt).

What a hypervisor can hold is its memory and CPUs, minus what is kept for the host itself
(the *reservation*: the kernel, page cache, libvirtd, sshd, the image cache, monitoring),
minus what the domains already there take. Every VM costs more than its guest memory: the
QEMU process around it has its own resident memory (:data:`DEFAULT_QEMU_OVERHEAD_MIB`).

The ``vm_slots`` role plans from :class:`HostCapacity`; ``hypervisor_info`` reports it.
A planned layout is judged by :meth:`HostCapacity.check_plan`, which says *why* a layout
does not fit: a 16 GiB host with 2 GiB kept for the host cannot run eight 2 GiB VMs, since
8 x (2048 + 200) MiB = 17,984 MiB > 14,336 MiB; at most six fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

# Resident memory of one QEMU process beyond its guest's RAM, under KVM, in MiB.
# A 1 vCPU / 512 MiB guest under KVM shows an RSS of about guest memory + 150-200 MiB:
# QEMU's own code and heap, device emulation and virtio rings, video memory (16 MiB for
# the default VGA), the guest's page tables and the firmware (SeaBIOS/OVMF). 200 MiB is
# the rounded upper end, which is the safe side for planning. It is a parameter
# everywhere (``qemu_overhead_mib``) so a site can replace it with what it measures
# (``ps -o rss`` of the qemu processes minus the guest memory).
DEFAULT_QEMU_OVERHEAD_MIB = 200

# Under TCG (domain type ``qemu``, software emulation) QEMU also keeps its translation
# block cache; the collection's domains set ``<tcg><tb-cache unit='MiB'>128</tb-cache>``
# (without it QEMU sizes the cache to ~1 GiB). Added to the overhead for ``qemu`` domains.
DEFAULT_TCG_TB_CACHE_MIB = 128

# What the hypervisor role keeps for the host by default.
DEFAULT_RESERVED_MEMORY_MIB = 2048
DEFAULT_RESERVED_CPUS = 1


class CapacityError(FarmError, ValueError):
    """Input the capacity model cannot use; ``option`` names the offending input."""

    @property
    def field_name(self) -> str:
        """The former name of ``option``."""
        return self.option


def qemu_overhead_for(
    domain_type: str,
    qemu_overhead_mib: int = DEFAULT_QEMU_OVERHEAD_MIB,
    tcg_tb_cache_mib: int = DEFAULT_TCG_TB_CACHE_MIB,
) -> int:
    """Per-VM overhead in MiB for a domain type: ``kvm`` the QEMU overhead, ``qemu`` (TCG) plus its cache."""
    if qemu_overhead_mib < 0:
        raise CapacityError(f"qemu_overhead_mib must be 0 or more, got {qemu_overhead_mib}", "qemu_overhead_mib")
    if domain_type == "qemu":
        return qemu_overhead_mib + max(0, tcg_tb_cache_mib)
    return qemu_overhead_mib


@dataclass(frozen=True)
class DomainUsage:
    """What one existing libvirt domain takes (memory in MiB is its maximum memory).

    A domain counts against the host when it runs, when it is set to autostart, or when it
    is one of the collection's slots (defined to run: the slot module starts it): a stopped
    slot or autostart domain comes back and needs its memory then.
    """

    name: str
    memory_mib: int
    vcpus: int
    active: bool
    autostart: bool = False
    slot: bool = False

    @property
    def counts(self) -> bool:
        return self.active or self.autostart or self.slot

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "active": self.active,
            "autostart": self.autostart,
            "slot": self.slot,
            "counted": self.counts,
        }


@dataclass(frozen=True)
class PlanCheck:
    """The verdict on a planned layout: ``fits`` and, when it does not, ``reasons`` why."""

    fits: bool
    count: int
    memory_mib: int
    vcpus: int
    max_vms: int
    memory_needed_mib: int
    memory_free_mib: int
    vcpus_needed: int
    vcpus_free: float
    reasons: Tuple[str, ...] = ()

    @property
    def message(self) -> str:
        if self.fits:
            return "%d VM(s) of %d MiB / %d vCPU fit: %d MiB of %d MiB free memory and %s of %s free vCPUs" % (
                self.count,
                self.memory_mib,
                self.vcpus,
                self.memory_needed_mib,
                self.memory_free_mib,
                _num(self.vcpus_needed),
                _num(self.vcpus_free),
            )
        return "; ".join(self.reasons)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "fits": self.fits,
            "count": self.count,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "max_vms": self.max_vms,
            "memory_needed_mib": self.memory_needed_mib,
            "memory_free_mib": self.memory_free_mib,
            "vcpus_needed": self.vcpus_needed,
            "vcpus_free": self.vcpus_free,
            "reasons": list(self.reasons),
            "message": self.message,
        }


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else "%.2f" % value


@dataclass(frozen=True)
class HostCapacity:
    """A hypervisor's capacity: host size, reservation, per-VM overhead and existing domains."""

    cpus: int
    memory_mib: int
    reserved_cpus: int = DEFAULT_RESERVED_CPUS
    reserved_memory_mib: int = DEFAULT_RESERVED_MEMORY_MIB
    qemu_overhead_mib: int = DEFAULT_QEMU_OVERHEAD_MIB
    domains: Tuple[DomainUsage, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate_reservation(self.cpus, self.memory_mib, self.reserved_cpus, self.reserved_memory_mib)
        if self.qemu_overhead_mib < 0:
            raise CapacityError(
                f"qemu_overhead_mib must be 0 or more, got {self.qemu_overhead_mib}", "qemu_overhead_mib"
            )

    # -- what is there ---------------------------------------------------------------------
    @property
    def usable_memory_mib(self) -> int:
        """Host memory minus the host reservation."""
        return self.memory_mib - self.reserved_memory_mib

    @property
    def usable_cpus(self) -> int:
        """Host CPUs minus the CPUs kept for the host."""
        return self.cpus - self.reserved_cpus

    @property
    def counted_domains(self) -> List[DomainUsage]:
        return [d for d in self.domains if d.counts]

    @property
    def used_memory_mib(self) -> int:
        """Memory the counted domains take, each with its QEMU overhead."""
        return sum(d.memory_mib + self.qemu_overhead_mib for d in self.counted_domains)

    @property
    def used_vcpus(self) -> int:
        return sum(d.vcpus for d in self.counted_domains)

    @property
    def free_memory_mib(self) -> int:
        """Memory left for new VMs (their own overhead not yet deducted); may be negative."""
        return self.usable_memory_mib - self.used_memory_mib

    def free_vcpus(self, overcommit_cpu: float = 1.0) -> float:
        """vCPUs left for new VMs: usable CPUs times the overcommit ratio, minus vCPUs in use."""
        _check_overcommit(overcommit_cpu)
        return self.usable_cpus * overcommit_cpu - self.used_vcpus

    # -- planning --------------------------------------------------------------------------
    def vm_cost_mib(self, memory_mib: int) -> int:
        """Host memory one new VM costs: its guest memory plus the QEMU overhead."""
        return memory_mib + self.qemu_overhead_mib

    def max_vms(self, memory_mib: int, vcpus: int, overcommit_cpu: float = 1.0) -> int:
        """How many more VMs of ``memory_mib`` / ``vcpus`` fit (0 when none does)."""
        _check_vm(memory_mib, vcpus)
        by_memory = self.free_memory_mib // self.vm_cost_mib(memory_mib)
        # a tiny epsilon so 1.5 * 2 / 1 is 3, not 2.9999999
        by_cpu = math.floor(self.free_vcpus(overcommit_cpu) / vcpus + 1e-9)
        return max(0, int(min(by_memory, by_cpu)))

    def check_plan(self, count: int, memory_mib: int, vcpus: int, overcommit_cpu: float = 1.0) -> PlanCheck:
        """Whether ``count`` more VMs of ``memory_mib`` / ``vcpus`` fit, and if not, why."""
        if count < 0:
            raise CapacityError(f"count must be 0 or more, got {count}", "count")
        _check_vm(memory_mib, vcpus)
        free_cpu = self.free_vcpus(overcommit_cpu)
        need_mem = count * self.vm_cost_mib(memory_mib)
        need_cpu = count * vcpus
        max_n = self.max_vms(memory_mib, vcpus, overcommit_cpu)
        reasons: List[str] = []
        if need_mem > self.free_memory_mib:
            reasons.append(
                "memory: %d VM(s) x (%d MiB + %d MiB QEMU overhead) = %d MiB, but only %d MiB are free "
                "(%d MiB host - %d MiB reserved for the host - %d MiB taken by %d existing domain(s))"
                % (
                    count,
                    memory_mib,
                    self.qemu_overhead_mib,
                    need_mem,
                    self.free_memory_mib,
                    self.memory_mib,
                    self.reserved_memory_mib,
                    self.used_memory_mib,
                    len(self.counted_domains),
                )
            )
        if need_cpu > free_cpu + 1e-9:
            reasons.append(
                "vCPUs: %d VM(s) x %d vCPU = %d, but only %s are free "
                "((%d host CPUs - %d reserved for the host) x overcommit %s - %d vCPUs of existing domains)"
                % (
                    count,
                    vcpus,
                    need_cpu,
                    _num(free_cpu),
                    self.cpus,
                    self.reserved_cpus,
                    _num(overcommit_cpu),
                    self.used_vcpus,
                )
            )
        if reasons:
            reasons.append("at most %d such VM(s) fit" % max_n)
        return PlanCheck(
            fits=not reasons,
            count=count,
            memory_mib=memory_mib,
            vcpus=vcpus,
            max_vms=max_n,
            memory_needed_mib=need_mem,
            memory_free_mib=self.free_memory_mib,
            vcpus_needed=need_cpu,
            vcpus_free=free_cpu,
            reasons=tuple(reasons),
        )

    def to_dict(self, overcommit_cpu: float = 1.0) -> Dict[str, Any]:
        """Plain data for ``hypervisor_info``'s ``capacity`` result."""
        return {
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "reserved_cpus": self.reserved_cpus,
            "reserved_memory_mib": self.reserved_memory_mib,
            "qemu_overhead_mib": self.qemu_overhead_mib,
            "usable_cpus": self.usable_cpus,
            "usable_memory_mib": self.usable_memory_mib,
            "used_memory_mib": self.used_memory_mib,
            "used_vcpus": self.used_vcpus,
            "counted_domains": len(self.counted_domains),
            "free_memory_mib": self.free_memory_mib,
            "free_vcpus": self.free_vcpus(overcommit_cpu),
            "overcommit_cpu": overcommit_cpu,
        }


def _check_vm(memory_mib: int, vcpus: int) -> None:
    if memory_mib <= 0:
        raise CapacityError(f"memory_mib must be a positive number of MiB, got {memory_mib}", "memory_mib")
    if vcpus <= 0:
        raise CapacityError(f"vcpus must be a positive number, got {vcpus}", "vcpus")


def _check_overcommit(overcommit_cpu: float) -> None:
    if overcommit_cpu <= 0:
        raise CapacityError(f"overcommit_cpu must be greater than 0, got {overcommit_cpu}", "overcommit_cpu")


def validate_reservation(cpus: int, memory_mib: int, reserved_cpus: int, reserved_memory_mib: int) -> None:
    """Refuse a reservation that leaves nothing for VMs; the message names the variable.

    The names are the hypervisor role's variables, which is where a reservation comes from.
    """
    if cpus <= 0 or memory_mib <= 0:
        raise CapacityError(f"host size unknown or zero: {cpus} CPUs, {memory_mib} MiB", "host")
    if reserved_memory_mib < 0:
        raise CapacityError(
            f"farm_hypervisor_reserved_memory_mib must be 0 or more, got {reserved_memory_mib}",
            "reserved_memory_mib",
        )
    if reserved_cpus < 0:
        raise CapacityError(f"farm_hypervisor_reserved_cpus must be 0 or more, got {reserved_cpus}", "reserved_cpus")
    if reserved_memory_mib >= memory_mib:
        raise CapacityError(
            "farm_hypervisor_reserved_memory_mib=%d is not less than the host's memory (%d MiB): "
            "nothing would be left for VMs; lower it" % (reserved_memory_mib, memory_mib),
            "reserved_memory_mib",
        )
    if reserved_cpus >= cpus:
        raise CapacityError(
            "farm_hypervisor_reserved_cpus=%d is not less than the host's CPUs (%d): "
            "nothing would be left for VMs; lower it" % (reserved_cpus, cpus),
            "reserved_cpus",
        )


def host_capacity(
    cpus: int,
    memory_mib: int,
    reserved_cpus: int = DEFAULT_RESERVED_CPUS,
    reserved_memory_mib: int = DEFAULT_RESERVED_MEMORY_MIB,
    qemu_overhead_mib: int = DEFAULT_QEMU_OVERHEAD_MIB,
    domains: Optional[Iterable[DomainUsage]] = None,
) -> HostCapacity:
    """Convenience constructor accepting any iterable of domains."""
    return HostCapacity(
        cpus=cpus,
        memory_mib=memory_mib,
        reserved_cpus=reserved_cpus,
        reserved_memory_mib=reserved_memory_mib,
        qemu_overhead_mib=qemu_overhead_mib,
        domains=tuple(domains or ()),
    )
