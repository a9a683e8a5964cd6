"""The capacity model as tables: free capacity, max_vms and the verdict on planned layouts."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import (
    DEFAULT_QEMU_OVERHEAD_MIB,
    CapacityError,
    DomainUsage,
    HostCapacity,
    host_capacity,
    qemu_overhead_for,
    validate_reservation,
)

GIB = 1024


def test_sixteen_gib_host_cannot_run_eight_two_gib_vms():
    """The classic mistake: 8 x 2 GiB = 16 GiB looks like it fits a 16 GiB host. It does not."""
    host = HostCapacity(cpus=16, memory_mib=16 * GIB, reserved_cpus=1, reserved_memory_mib=2 * GIB)
    verdict = host.check_plan(count=8, memory_mib=2 * GIB, vcpus=1)
    assert not verdict.fits
    assert verdict.memory_needed_mib == 8 * (2048 + DEFAULT_QEMU_OVERHEAD_MIB) == 17984
    assert verdict.memory_free_mib == 14336
    assert verdict.max_vms == 6
    assert verdict.reasons[0] == (
        "memory: 8 VM(s) x (2048 MiB + 200 MiB QEMU overhead) = 17984 MiB, but only 14336 MiB are free "
        "(16384 MiB host - 2048 MiB reserved for the host - 0 MiB taken by 0 existing domain(s))"
    )
    assert verdict.reasons[-1] == "at most 6 such VM(s) fit"
    assert "at most 6" in verdict.message
    # six do fit
    six = host.check_plan(count=6, memory_mib=2 * GIB, vcpus=1)
    assert six.fits and six.reasons == ()
    assert six.message.startswith("6 VM(s) of 2048 MiB / 1 vCPU fit")


@pytest.mark.parametrize(
    ("cpus", "mem", "rcpu", "rmem", "overhead", "vm_mem", "vm_cpu", "overcommit", "expected"),
    [
        # memory-bound
        (16, 16 * GIB, 1, 2 * GIB, 200, 2 * GIB, 1, 1.0, 6),
        # no overhead: the naive answer, still minus the reservation
        (16, 16 * GIB, 1, 2 * GIB, 0, 2 * GIB, 1, 1.0, 7),
        # no reservation, no overhead: exactly 8
        (16, 16 * GIB, 0, 0, 0, 2 * GIB, 1, 1.0, 8),
        # CPU-bound: 4 CPUs - 1 reserved = 3 vCPUs of 2 each -> 1
        (4, 64 * GIB, 1, 2 * GIB, 200, 1 * GIB, 2, 1.0, 1),
        # overcommit 2.0 doubles the vCPUs: 6 / 2 = 3
        (4, 64 * GIB, 1, 2 * GIB, 200, 1 * GIB, 2, 2.0, 3),
        # overcommit 1.5 on 2 usable CPUs: 3 vCPUs, exactly 3 one-vCPU VMs (no float loss)
        (3, 64 * GIB, 1, 2 * GIB, 200, 1 * GIB, 1, 1.5, 3),
        # VM larger than the host's free memory: none
        (8, 4 * GIB, 1, 2 * GIB, 200, 4 * GIB, 1, 1.0, 0),
        # this test machine: 2 CPUs, 24 GiB, 512 MiB guests
        (2, 24 * GIB, 1, 2 * GIB, 200, 512, 1, 1.0, 1),
        (2, 24 * GIB, 1, 2 * GIB, 200, 512, 1, 4.0, 4),
    ],
)
def test_max_vms(cpus, mem, rcpu, rmem, overhead, vm_mem, vm_cpu, overcommit, expected):
    host = HostCapacity(cpus, mem, rcpu, rmem, overhead)
    assert host.max_vms(vm_mem, vm_cpu, overcommit_cpu=overcommit) == expected
    # max_vms is the boundary of check_plan
    assert host.check_plan(expected, vm_mem, vm_cpu, overcommit).fits
    assert not host.check_plan(expected + 1, vm_mem, vm_cpu, overcommit).fits


@pytest.mark.parametrize(
    ("domains", "used_mem", "used_cpu", "counted"),
    [
        ((), 0, 0, 0),
        ((DomainUsage("a", 1024, 2, active=True),), 1224, 2, 1),
        # stopped, not autostart, not a slot: does not count
        ((DomainUsage("b", 1024, 2, active=False),), 0, 0, 0),
        # stopped but autostart: counts (it comes back at boot)
        ((DomainUsage("c", 1024, 2, active=False, autostart=True),), 1224, 2, 1),
        # stopped slot: counts (defined to run)
        ((DomainUsage("d", 512, 1, active=False, slot=True),), 712, 1, 1),
        (
            (
                DomainUsage("a", 1024, 2, active=True),
                DomainUsage("b", 4096, 4, active=False),
                DomainUsage("d", 512, 1, active=False, slot=True),
            ),
            1936,
            3,
            2,
        ),
    ],
)
def test_existing_domains(domains, used_mem, used_cpu, counted):
    host = host_capacity(8, 16 * GIB, 1, 2 * GIB, 200, domains)
    assert host.used_memory_mib == used_mem
    assert host.used_vcpus == used_cpu
    assert len(host.counted_domains) == counted
    assert host.free_memory_mib == 14 * GIB - used_mem
    assert host.free_vcpus() == 7 - used_cpu
    data = host.to_dict()
    assert data["free_memory_mib"] == 14 * GIB - used_mem
    assert data["counted_domains"] == counted


def test_existing_domains_appear_in_the_reason():
    host = host_capacity(16, 16 * GIB, 1, 2 * GIB, 200, [DomainUsage("old", 4096, 2, active=True)])
    verdict = host.check_plan(5, 2 * GIB, 1)
    assert not verdict.fits
    assert "4296 MiB taken by 1 existing domain(s)" in verdict.reasons[0]
    assert verdict.max_vms == 4  # (14336 - 4296) // 2248


def test_cpu_reason():
    host = HostCapacity(cpus=4, memory_mib=64 * GIB, reserved_cpus=1)
    verdict = host.check_plan(2, 1024, 2)
    assert not verdict.fits
    assert verdict.reasons == (
        "vCPUs: 2 VM(s) x 2 vCPU = 4, but only 3 are free "
        "((4 host CPUs - 1 reserved for the host) x overcommit 1 - 0 vCPUs of existing domains)",
        "at most 1 such VM(s) fit",
    )


def test_overfull_host_reports_negative_free_memory_and_zero_vms():
    host = host_capacity(4, 4 * GIB, 1, 2 * GIB, 200, [DomainUsage("big", 4096, 1, active=True)])
    assert host.free_memory_mib == 2048 - 4296
    assert host.max_vms(512, 1) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (16, 16 * GIB, 1, 16 * GIB),
            "farm_hypervisor_reserved_memory_mib=16384 is not less than the host's memory (16384 MiB)",
        ),
        ((16, 16 * GIB, 1, 32 * GIB), "farm_hypervisor_reserved_memory_mib=32768 is not less"),
        ((2, 16 * GIB, 2, 1024), "farm_hypervisor_reserved_cpus=2 is not less than the host's CPUs (2)"),
        ((2, 16 * GIB, -1, 1024), "farm_hypervisor_reserved_cpus must be 0 or more, got -1"),
        ((2, 16 * GIB, 1, -5), "farm_hypervisor_reserved_memory_mib must be 0 or more, got -5"),
        ((0, 16 * GIB, 0, 0), "host size unknown or zero"),
    ],
)
def test_bad_reservation(args, message):
    with pytest.raises(CapacityError) as err:
        validate_reservation(*args)
    assert message in str(err.value)
    with pytest.raises(CapacityError, match="is not less|must be 0|host size"):
        HostCapacity(*args)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda h: h.max_vms(0, 1), "memory_mib must be a positive number of MiB, got 0"),
        (lambda h: h.max_vms(512, 0), "vcpus must be a positive number, got 0"),
        (lambda h: h.max_vms(512, 1, overcommit_cpu=0), "overcommit_cpu must be greater than 0, got 0"),
        (lambda h: h.check_plan(-1, 512, 1), "count must be 0 or more, got -1"),
    ],
)
def test_bad_plan_input(call, message):
    host = HostCapacity(cpus=4, memory_mib=8 * GIB)
    with pytest.raises(CapacityError) as err:
        call(host)
    assert str(err.value) == message


def test_negative_overhead_refused():
    with pytest.raises(CapacityError, match="qemu_overhead_mib must be 0 or more, got -1"):
        HostCapacity(cpus=4, memory_mib=8 * GIB, qemu_overhead_mib=-1)
    with pytest.raises(CapacityError, match="qemu_overhead_mib must be 0 or more, got -1"):
        qemu_overhead_for("kvm", -1)


@pytest.mark.parametrize(
    ("domain_type", "expected"),
    [("kvm", 200), ("qemu", 328), ("xen", 200)],
)
def test_overhead_by_domain_type(domain_type, expected):
    assert qemu_overhead_for(domain_type) == expected


def test_zero_count_always_fits():
    verdict = HostCapacity(cpus=2, memory_mib=4 * GIB).check_plan(0, 1024, 1)
    assert verdict.fits
    assert verdict.to_dict()["fits"] is True
