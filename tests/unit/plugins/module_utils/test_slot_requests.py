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
