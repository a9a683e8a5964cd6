"""The slot module against the real libvirtd, called in-process (main() under
patch_module_args): the injected clock moves a slot through its lifecycle, draining is
recorded, absent refuses an active slot, and bad input fails with nothing half-created."""

from __future__ import annotations

import datetime
import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import format_time, parse_time
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module
from tests.integration.slots.conftest import SLOTS_DIR, register_slot, slot_files

T0 = datetime.datetime(2026, 11, 21, 6, 0, 0, tzinfo=datetime.timezone.utc)


def call(capsys, monkeypatch, now=None, **args):
    if now is not None:
        monkeypatch.setenv("BATCHVIRT_FARM_NOW", format_time(now))
    else:
        monkeypatch.delenv("BATCHVIRT_FARM_NOW", raising=False)
    base = {"hypervisor": "bvt", "memory_mib": 128, "domain_type": "qemu"}
    base.update(args)
    with patch_module_args(base), pytest.raises(SystemExit):
        slot_module.main()
    return json.loads(capsys.readouterr().out)


def tiny(guest, **extra):
    args = {
        "image": {"path": guest["base"]},
        "boot": {"mode": "kernel", "kernel": guest["kernel"], "initrd": guest["initrd"], "cmdline": guest["cmdline"]},
    }
    args.update(extra)
    return args


def test_lifecycle_with_injected_clock(testbed, libvirt_conn, guest, slots_pool, capsys, monkeypatch):
    name = register_slot(testbed, testbed.name("life"))
    args = tiny(guest, name=name, lifetime=4 * 3600, max_job_walltime=600, network={"ssh_port": 12690})
    created = call(capsys, monkeypatch, now=T0, **args)
    assert created["changed"], created
    assert created["lifecycle"] == "provisioning"
    assert created["metadata"]["created_at"] == "2026-11-21T06:00:00Z"
    assert created["metadata"]["drain_at"] == "2026-11-21T10:00:00Z"
    assert created["metadata"]["deadline"] == "2026-11-21T10:10:00Z"
    assert created["ssh"] == {"host": "127.0.0.1", "port": 12690, "user": "root"}

    # past the boot grace: active; absent refuses it without force
    active = call(capsys, monkeypatch, now=T0 + datetime.timedelta(minutes=20), **args)
    assert not active["changed"] and active["lifecycle"] == "active"
    refused = call(capsys, monkeypatch, now=T0 + datetime.timedelta(minutes=20), name=name, state="absent")
    assert refused["failed"]
    assert f"slot {name} is active" in refused["msg"] and "pass force=true" in refused["msg"]
    assert libvirt_conn.lookupByName(name).isActive()

    # within 2 h of drain_at: expiring; then the clock passes drain_at: draining, times unchanged
    soon = call(capsys, monkeypatch, now=T0 + datetime.timedelta(hours=2, minutes=30), **args)
    assert not soon["changed"] and soon["lifecycle"] == "expiring"
    later = call(capsys, monkeypatch, now=T0 + datetime.timedelta(hours=4, minutes=1), **args)
    assert not later["changed"] and later["lifecycle"] == "draining"
    assert later["metadata"]["created_at"] == "2026-11-21T06:00:00Z"
    assert read_metadata(libvirt_conn.lookupByName(name)).created_at == parse_time("2026-11-21T06:00:00Z")

    # an operator drain request is recorded once (idempotent)
    drain = {"name": name, "state": "draining", "drain_reason": "kernel update"}
    drained = call(capsys, monkeypatch, now=T0 + datetime.timedelta(minutes=30), **drain)
    assert drained["changed"] and drained["lifecycle"] == "draining"
    meta = read_metadata(libvirt_conn.lookupByName(name))
    assert (meta.drain_requested, meta.drain_reason) == (True, "kernel update")
    assert meta.drain_requested_at == T0 + datetime.timedelta(minutes=30)
    again = call(capsys, monkeypatch, now=T0 + datetime.timedelta(minutes=31), **drain)
    assert not again["changed"]

    # still draining (no batch system to say drained): absent refuses; past the deadline: expired, removed
    assert call(capsys, monkeypatch, now=T0 + datetime.timedelta(hours=4, minutes=5), name=name, state="absent")[
        "failed"
    ]
    # past the deadline: the busybox guest has no ACPI handler, so it is destroyed after the grace
    gone = call(
        capsys,
        monkeypatch,
        now=T0 + datetime.timedelta(hours=4, minutes=11),
        name=name,
        state="absent",
        shutdown_timeout=3,
    )
    assert gone["changed"], gone
    assert gone["lifecycle_before"] == "expired"
    assert gone["end"]["how"] == "destroyed" and gone["end"]["seconds"] >= 3, gone["end"]
    assert gone["end"]["reason_code"] == 600 and gone["end"]["reason"] == "600 Deadline reached"
    assert name not in {d.name() for d in libvirt_conn.listAllDomains(0)}
    assert not slot_files(name)
    assert not call(capsys, monkeypatch, name=name, state="absent")["changed"]


def test_absent_force_and_present(testbed, libvirt_conn, guest, slots_pool, capsys, monkeypatch):
    name = register_slot(testbed, testbed.name("force"))
    args = tiny(guest, name=name, state="present", network={"ssh_port": 12691})
    assert call(capsys, monkeypatch, **args)["changed"]
    dom = libvirt_conn.lookupByName(name)
    assert not dom.isActive()  # present = defined, not started
    assert not call(capsys, monkeypatch, **args)["changed"]
    running = call(capsys, monkeypatch, **dict(args, state="running"))
    assert running["actions"] == ["start"]
    assert call(capsys, monkeypatch, name=name, state="absent")["failed"]  # provisioning
    forced = call(capsys, monkeypatch, name=name, state="absent", force=True, shutdown_timeout=0, end_reason=400)
    assert forced["changed"] and not slot_files(name)
    end = dict(forced["end"])
    assert isinstance(end.pop("console_tail", []), list)  # present when the console log could be read
    assert end == {"how": "destroyed", "seconds": 0, "reason_code": 400, "reason": "400 Failed to start"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"image": {"identifier": "worker-el9", "version": "20990101.1", "cache_root": "/var/lib/bvt-nocache"}},
            "image worker-el9 version 20990101.1 is not staged on this hypervisor",
        ),
        (
            {"network": {"mode": "bridge", "bridge": "bvtnobr0", "address": "192.0.2.10/24"}},
            "network.bridge bvtnobr0 does not exist",
        ),
        ({"lifetime": 0}, "lifetime must be a positive number of seconds, got 0"),
        ({"max_job_walltime": -1}, "max_job_walltime must be zero or more seconds"),
    ],
)
def test_bad_input_creates_nothing(testbed, libvirt_conn, guest, slots_pool, capsys, monkeypatch, extra, message):
    name = register_slot(testbed, testbed.name("bad"))
    result = call(capsys, monkeypatch, **tiny(guest, name=name, **extra))
    assert result["failed"]
    assert message in result["msg"]
    assert name not in {d.name() for d in libvirt_conn.listAllDomains(0)}
    assert not slot_files(name)


def test_duplicates_and_taken_address(testbed, libvirt_conn, guest, slots_pool, capsys, monkeypatch):
    first = register_slot(testbed, testbed.name("dup"))
    other = register_slot(testbed, testbed.name("dup"))
    both = call(capsys, monkeypatch, **tiny(guest, slots=[{"name": first}, {"name": first}], state="present"))
    assert f"two slots share the name {first}" in both["msg"]
    assert call(capsys, monkeypatch, **tiny(guest, name=first, state="present", network={"ssh_port": 12692}))["changed"]
    taken = call(capsys, monkeypatch, **tiny(guest, name=other, state="present", network={"ssh_port": 12692}))
    assert taken["failed"]
    assert f"ssh_port 127.0.0.1:12692 is already used by slot {first}" in taken["msg"]
    assert not slot_files(other)


def test_failed_define_leaves_no_orphans(testbed, libvirt_conn, guest, slots_pool, capsys, monkeypatch):
    """A foreign domain holding the slot's UUID makes define fail after the overlay and seed exist."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import slot_uuid

    name = register_slot(testbed, testbed.name("orphan"))
    squatter = testbed.domain(testbed.name("squat"))
    libvirt_conn.defineXML(
        f"<domain type='qemu'><name>{squatter}</name><uuid>{slot_uuid('bvt', name)}</uuid>"
        "<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    )
    before = set(os.listdir(SLOTS_DIR))
    result = call(capsys, monkeypatch, **tiny(guest, name=name, network={"ssh_port": 12693}))
    assert result["failed"]
    assert f"slot {name}: define failed" in result["msg"]
    assert "nothing of this slot was left behind" in result["msg"]
    assert set(os.listdir(SLOTS_DIR)) == before
    assert name not in {d.name() for d in libvirt_conn.listAllDomains(0)}
    pool = libvirt_conn.storagePoolLookupByName(slots_pool)
    assert not {f"{name}.qcow2", f"{name}-seed.iso"} & set(pool.listVolumes())
