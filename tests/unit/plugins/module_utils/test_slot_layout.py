"""Slot layout: counts from the capacity model, names, addresses and collisions (tables)."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import DomainUsage, host_capacity
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import (
    AddressPool,
    LayoutError,
    check_unique,
    layout,
    plan_count,
    slot_name,
    without_slots,
)

HOST = host_capacity(cpus=8, memory_mib=16384, reserved_cpus=1, reserved_memory_mib=2048, qemu_overhead_mib=200)


@pytest.mark.parametrize(
    ("count", "vcpus", "memory", "expected"),
    [
        ("auto", 1, 2048, 6),  # memory: 14336 // 2248 = 6 < 7 usable CPUs
        ("auto", 1, 1024, 7),  # CPUs: 7 usable
        ("auto", 2, 512, 3),  # CPUs: 7 // 2
        (None, 1, 2048, 6),
        ("6", 1, 2048, 6),
        (0, 1, 2048, 0),
    ],
)
def test_plan_count(count, vcpus, memory, expected):
    assert plan_count(HOST, count, vcpus, memory) == expected


@pytest.mark.parametrize(
    ("count", "vcpus", "memory", "overcommit", "message"),
    [
        (8, 1, 2048, 1.0, "count=8 does not fit on this hypervisor: memory: 8 VM(s) x (2048 MiB + 200 MiB"),
        (8, 1, 512, 1.0, "vCPUs: 8 VM(s) x 1 vCPU = 8, but only 7 are free"),
        ("lots", 1, 512, 1.0, "count must be 'auto' or a number, got 'lots'"),
        (-1, 1, 512, 1.0, "count must not be negative"),
        (1, 0, 512, 1.0, "vcpus must be a positive number"),
        (1, 1, 512, 0.0, "overcommit_cpu must be greater than 0"),
    ],
)
def test_plan_count_refuses(count, vcpus, memory, overcommit, message):
    with pytest.raises(LayoutError) as err:
        plan_count(HOST, count, vcpus, memory, overcommit)
    assert message in str(err.value)


def test_overcommit_allows_more_slots_than_cpus():
    assert plan_count(HOST, 14, 1, 512, 2.0) == 14


def test_rerun_does_not_count_own_slots():
    used = host_capacity(
        cpus=8,
        memory_mib=16384,
        qemu_overhead_mib=200,
        domains=[DomainUsage(f"hv1-slot-0{n}", 2048, 1, True, slot=True) for n in range(1, 7)]
        + [DomainUsage("other", 2048, 1, True)],
    )
    assert plan_count(used, "auto", 1, 2048) == 0
    # the layout's own six slots are not "used" when it is laid out again; the other domain is
    assert plan_count(without_slots(used, "hv1"), "auto", 1, 2048) == 5


def test_names_and_ports():
    table = layout("hv1", 0, 3, ssh_port_base=10022)
    assert [(s["name"], s["ssh_port"]) for s in table] == [
        ("hv1-slot-01", 10022),
        ("hv1-slot-02", 10023),
        ("hv1-slot-03", 10024),
    ]
    assert slot_name("hv9", 12) == "hv9-slot-12"


POOL = AddressPool.from_spec({"network": "192.0.2.0/24", "first": "192.0.2.10", "gateway": "192.0.2.12"})


def test_addresses_by_index_and_stride_skip_gateway():
    hv0 = layout("hv0", 0, 3, stride=4, pool=POOL)
    hv1 = layout("hv1", 1, 3, stride=4, pool=POOL)
    assert [s["address"] for s in hv0] == ["192.0.2.10/24", "192.0.2.11/24", "192.0.2.13/24"]
    assert [s["address"] for s in hv1] == ["192.0.2.15/24", "192.0.2.16/24", "192.0.2.17/24"]
    # deterministic: the same table every time, and no collision across hypervisors
    assert layout("hv1", 1, 3, stride=4, pool=POOL) == hv1
    check_unique(hv0 + hv1, keys=("address",))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"network": "not-a-net"}, "address_pool.network must be an IPv4 network"),
        (
            {"network": "192.0.2.0/24", "first": "198.51.100.1"},
            "address_pool.first 198.51.100.1 is not in 192.0.2.0/24",
        ),
        ({"network": "192.0.2.0/24", "first": "192.0.2.20", "last": "192.0.2.10"}, "is before address_pool.first"),
    ],
)
def test_bad_pool(spec, message):
    with pytest.raises(LayoutError) as err:
        AddressPool.from_spec(spec)
    assert message in str(err.value)


def test_pool_exhausted():
    small = AddressPool.from_spec({"network": "192.0.2.0/29"})  # 6 hosts
    layout("hv0", 0, 6, stride=6, pool=small)
    with pytest.raises(LayoutError) as err:
        layout("hv1", 1, 2, stride=6, pool=small)
    assert "address pool 192.0.2.0/29 (192.0.2.1-192.0.2.6) is exhausted" in str(err.value)
    assert err.value.option == "address_pool"


def test_count_beyond_stride_refused():
    with pytest.raises(LayoutError) as err:
        layout("hv0", 0, 5, stride=4, pool=POOL)
    assert "exceed the per-hypervisor address stride 4" in str(err.value)


def test_ssh_ports_must_fit():
    with pytest.raises(LayoutError) as err:
        layout("hv0", 0, 3, ssh_port_base=65534)
    assert "ssh_port_base 65534 leaves no room for 3 ports" in str(err.value)


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        ([{"name": "a"}, {"name": "a"}], "two slots share the name a: a and a"),
        (
            [{"name": "a", "address": "192.0.2.1/24"}, {"name": "b", "address": "192.0.2.1/25"}],
            "address 192.0.2.1: a and b",
        ),
        ([{"name": "a", "ssh_port": 22}, {"name": "b", "ssh_port": 22}], "ssh_port 22: a and b"),
        ([{"name": "a", "mac": "52:54:00:00:00:01"}, {"name": "b", "mac": "52:54:00:00:00:01"}], "mac"),
    ],
)
def test_duplicates_refused(slots, message):
    with pytest.raises(LayoutError) as err:
        check_unique(slots)
    assert message in str(err.value)
