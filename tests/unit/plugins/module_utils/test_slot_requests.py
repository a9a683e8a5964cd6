"""Slot requests: expanding name/slots/layout into per-slot parameters, the injected clock,
local URIs, and the qcow2 header reading behind the disk size check."""

from __future__ import annotations

import datetime
import struct

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import host_capacity
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_clock import NOW_ENV, farm_now
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import is_local as _is_local
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_image import image_virtual_size
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import LayoutError
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadataError
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_plan import expand_requests

BASE = {
    "name": None,
    "slots": None,
    "layout": None,
    "hypervisor": "hv1",
    "vcpus": 1,
    "memory_mib": 2048,
    "network": {"mode": "bridge", "bridge": "br0", "gateway": "192.0.2.1"},
    "batch": {"system": "slurm", "controller": "ctl"},
}


def test_slots_entries_override_and_merge():
    params = dict(
        BASE, slots=[{"name": "a", "memory_mib": 512, "network": {"address": "192.0.2.5/24"}, "batch_node": "wn-a"}]
    )
    (req,) = expand_requests(params)
    assert req["memory_mib"] == 512
    assert req["network"] == {"mode": "bridge", "bridge": "br0", "gateway": "192.0.2.1", "address": "192.0.2.5/24"}
    assert req["batch"] == {"system": "slurm", "controller": "ctl", "node_name": "wn-a"}
    assert "slots" not in req


def test_layout_entries():
    host = host_capacity(cpus=8, memory_mib=16384, qemu_overhead_mib=200)
    params = dict(
        BASE,
        layout={
            "count": "auto",
            "index": 1,
            "stride": 8,
            "address_pool": {"network": "192.0.2.0/24", "first": "192.0.2.10", "gateway": "192.0.2.1"},
        },
    )
    reqs = expand_requests(params, host)
    assert [r["name"] for r in reqs] == ["hv1-slot-0%d" % n for n in range(1, 7)]
    assert reqs[0]["network"]["address"] == "192.0.2.18/24"
    assert reqs[0]["network"]["gateway"] == "192.0.2.1"
    with pytest.raises(LayoutError) as err:
        expand_requests(dict(params, layout=dict(params["layout"], count="7")), host)
    assert "count=7 does not fit" in str(err.value)


def test_clock_injection():
    assert farm_now({NOW_ENV: "2026-11-21T06:00:00Z"}) == datetime.datetime(
        2026, 11, 21, 6, tzinfo=datetime.timezone.utc
    )
    assert abs((farm_now({}) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 5
    with pytest.raises(SlotMetadataError) as err:
        farm_now({NOW_ENV: "tomorrow"})
    assert "BATCHVIRT_FARM_NOW: 'tomorrow' is not an ISO-8601 time" in str(err.value)


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu+ssh://root@hv1/system", False),
        ("qemu://hv1/system", False),
    ],
)
def test_is_local(uri, local):
    assert _is_local(uri) is local


def test_image_virtual_size(tmp_path):
    qcow = tmp_path / "a.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 20 + struct.pack(">Q", 20 << 30))
    assert image_virtual_size(str(qcow), "qcow2") == 20 << 30
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\0" * 4096)
    assert image_virtual_size(str(raw), "raw") == 4096
    with pytest.raises(SlotError) as err:
        image_virtual_size(str(raw), "qcow2")
    assert "is not a qcow2 file (bad header): give image.format" in str(err.value)


def _mix_params(mix, **layout):
    return dict(
        BASE,
        image={"identifier": "worker-el9", "version": "latest", "cache_root": "/var/lib/batchvirt/images"},
        layout=dict({"count": "auto", "index": 0, "stride": 8, "ssh_port_base": 10022, "mix": mix}, **layout),
    )


def test_layout_mix_lays_out_each_type_in_order_within_what_is_left():
    # 8 CPUs and 16 GiB, 1 CPU and 2 GiB kept for the host, 200 MiB QEMU overhead per VM
    host = host_capacity(cpus=8, memory_mib=16384, qemu_overhead_mib=200)
    mix = [
        {
            "worker_type": "gpu",
            "count": "1",
            "vcpus": 4,
            "memory_mib": 8192,
            "image": {"identifier": "worker-gpu"},
            "features": ["gpu", "cuda"],
        },
        {"worker_type": "el9", "count": "auto", "vcpus": 1, "memory_mib": 1024, "features": ["el9"]},
    ]
    reqs = expand_requests(_mix_params(mix), host)
    # the gpu slot leaves 3 CPUs and 5,944 MiB: three 1-CPU el9 slots fit (by CPU)
    assert [(r["name"], r["worker_type"], r["vcpus"], r["memory_mib"]) for r in reqs] == [
        ("hv1-slot-01", "gpu", 4, 8192),
        ("hv1-slot-02", "el9", 1, 1024),
        ("hv1-slot-03", "el9", 1, 1024),
        ("hv1-slot-04", "el9", 1, 1024),
    ]
    assert reqs[0]["image"] == {
        "identifier": "worker-gpu",
        "version": "latest",
        "cache_root": "/var/lib/batchvirt/images",
    }
    assert reqs[1]["image"]["identifier"] == "worker-el9"
    assert reqs[0]["batch"] == {"system": "slurm", "controller": "ctl", "features": ["gpu", "cuda"]}
    assert reqs[3]["network"]["ssh_port"] == 10025


def test_layout_mix_part_without_a_size_takes_the_module_size():
    host = host_capacity(cpus=8, memory_mib=16384, qemu_overhead_mib=200)
    reqs = expand_requests(_mix_params([{"worker_type": "el9", "count": "2"}]), host)
    assert [(r["vcpus"], r["memory_mib"], r["worker_type"]) for r in reqs] == [(1, 2048, "el9")] * 2


@pytest.mark.parametrize(
    ("mix", "layout", "option", "message"),
    [
        (
            [
                {"worker_type": "gpu", "count": "1", "vcpus": 4, "memory_mib": 8192},
                {"worker_type": "el9", "count": "4", "vcpus": 1, "memory_mib": 1024},
            ],
            {},
            "mix[1].count",
            "mix[1] (el9): count=4 does not fit",
        ),
        (
            [{"worker_type": "el9", "count": "1"}, {"worker_type": "el9", "count": "1"}],
            {},
            "mix[1].worker_type",
            "'el9' is already mix[0]",
        ),
        ([{"worker_type": "", "count": "1"}], {}, "mix[0].worker_type", "give the worker type"),
        ([{"worker_type": "el9", "count": "1"}], {"count": "3"}, "count", "not both"),
    ],
)
def test_layout_mix_that_cannot_be_laid_out_names_the_part(mix, layout, option, message):
    host = host_capacity(cpus=8, memory_mib=16384, qemu_overhead_mib=200)
    with pytest.raises(LayoutError) as err:
        expand_requests(_mix_params(mix, **layout), host)
    assert err.value.option == option
    assert message in str(err.value)
