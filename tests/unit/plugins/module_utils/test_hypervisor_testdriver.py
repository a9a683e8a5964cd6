"""ensure_pool, ensure_network and gather_info against libvirt's in-process test driver.

The test driver is real libvirt (XML parsing, object lifecycle, errors) without a daemon,
so idempotence and check mode are checked here in milliseconds; the integration tests run
the same code against the real libvirtd.
"""

from __future__ import annotations

import datetime
import json

import pytest

libvirt = pytest.importorskip("libvirt")

from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import (  # noqa: E402
    HypervisorError,
    NetworkSpec,
    PoolSpec,
    ensure_network,
    ensure_pool,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor_info import gather_info  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (  # noqa: E402
    SlotMetadata,
    to_xml,
)

NOW = datetime.datetime(2026, 11, 21, 8, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def conn():
    # test:///default is private to each connection: every test starts from the same state
    c = connect("test:///default")
    yield c
    c.close()


def test_pool_define_then_unchanged(conn, tmp_path):
    spec = PoolSpec(name="bvt-unit-images", path=str(tmp_path / "batchvirt" / "images"))
    first = ensure_pool(conn, spec, min_free_mib=1)
    assert first.changed
    assert first.actions == [
        f"mkdir {tmp_path / 'batchvirt'}",
        f"mkdir {tmp_path / 'batchvirt' / 'images'}",
        "define",
        "start",
        "autostart",
    ]
    assert (tmp_path / "batchvirt" / "images").is_dir()
    assert first.info["state"] == "running"
    assert first.info["path"] == spec.path
    second = ensure_pool(conn, spec, min_free_mib=1)
    assert not second.changed, second.actions
    assert second.before == dict(spec.summary(), active=True, autostart=True)


def test_pool_check_mode_changes_nothing(conn, tmp_path):
    spec = PoolSpec(name="bvt-unit-check", path=str(tmp_path / "slots"))
    out = ensure_pool(conn, spec, check_mode=True)
    assert out.changed
    assert out.actions == [f"mkdir {tmp_path / 'slots'}", "define", "start", "autostart"]
    assert not (tmp_path / "slots").exists()
    assert "bvt-unit-check" not in [p.name() for p in conn.listAllStoragePools(0)]


def test_pool_moved_is_redefined(conn, tmp_path):
    ensure_pool(conn, PoolSpec(name="bvt-unit-move", path=str(tmp_path / "a")))
    moved = ensure_pool(conn, PoolSpec(name="bvt-unit-move", path=str(tmp_path / "b")))
    assert moved.actions == [f"mkdir {tmp_path / 'b'}", "redefine", "start"]
    assert moved.before["path"] == str(tmp_path / "a")
    assert moved.after["path"] == str(tmp_path / "b")
    assert conn.storagePoolLookupByName("bvt-unit-move").isActive()


def test_pool_stop_and_absent(conn, tmp_path):
    spec = PoolSpec(name="bvt-unit-gone", path=str(tmp_path))
    ensure_pool(conn, spec)
    stopped = ensure_pool(conn, spec, active=False, autostart=False)
    assert stopped.actions == ["stop", "no autostart"]
    gone = ensure_pool(conn, spec, state="absent")
    assert gone.actions == ["undefine"]
    assert not ensure_pool(conn, spec, state="absent").changed
    assert tmp_path.is_dir()  # removing a pool never removes its files


def test_pool_missing_filesystem_defines_nothing(conn, tmp_path):
    spec = PoolSpec(name="bvt-unit-nofs", path=str(tmp_path / "mnt" / "data" / "slots"))
    with pytest.raises(HypervisorError, match="is the filesystem meant to hold the pool mounted"):
        ensure_pool(conn, spec)
    assert "bvt-unit-nofs" not in [p.name() for p in conn.listAllStoragePools(0)]


def test_logical_pool_runs_the_lvm_commands_it_needs(conn):
    ran = []

    def run(command):
        ran.append(command)
        if command[0] == "vgs":
            return '{"report": [{"vg": [{"vg_name": "vg0"}]}]}'
        if command[0] == "pvs":
            return '{"report": [{"pv": []}]}'
        return ""

    spec = PoolSpec(name="bvt-unit-lvm", type="logical", source_name="batchvirt", source_devices=("/dev/sdb",))
    out = ensure_pool(conn, spec, check_mode=True, run_command=run)
    # read-only queries run in check mode; the changes are only announced
    assert ran == [
        ["vgs", "--reportformat", "json", "-o", "vg_name"],
        ["pvs", "--reportformat", "json", "-o", "pv_name"],
    ]
    assert out.actions == ["pvcreate --yes /dev/sdb", "vgcreate batchvirt /dev/sdb", "define", "start", "autostart"]


def test_nat_network_define_then_unchanged(conn):
    spec = NetworkSpec(name="bvt-unit-nat", mode="nat", bridge="bvt-unit0", address="192.168.150.1/24")
    first = ensure_network(conn, spec, spec.name, active=False)
    assert first.actions == ["define", "autostart"]
    again = ensure_network(conn, spec, spec.name, active=False)
    assert not again.changed, again.actions
    changed = NetworkSpec(name="bvt-unit-nat", mode="nat", bridge="bvt-unit0", address="192.168.151.1/24")
    third = ensure_network(conn, changed, spec.name, active=False)
    assert third.actions == ["redefine"]
    assert third.before["address"] == "192.168.150.1"
    assert ensure_network(conn, None, spec.name, state="absent").actions == ["undefine"]


def test_bridge_network_needs_the_host_bridge(conn):
    spec = NetworkSpec(name="bvt-unit-br", mode="bridge", bridge="br-missing")
    with pytest.raises(HypervisorError) as err:
        ensure_network(conn, spec, spec.name, bridge_exists=lambda _br: False)
    assert str(err.value).startswith("bridge: the host bridge 'br-missing' does not exist")
    out = ensure_network(conn, spec, spec.name, active=False, check_mode=True, bridge_exists=lambda _br: True)
    assert out.actions == ["define", "autostart"]


def _slot_xml(name, meta):
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>"
        f"<metadata>{to_xml(meta)}</metadata><os><type arch='i686'>hvm</type></os></domain>"
    )


def test_gather_info_on_the_test_driver(conn, tmp_path):
    meta = SlotMetadata(
        name="bvt-unit-slot",
        hypervisor="hv01",
        image_identifier="worker",
        image_version="1.0",
        created_at=NOW - datetime.timedelta(days=1),
        drain_at=NOW + datetime.timedelta(days=1),
        deadline=NOW + datetime.timedelta(days=2),
    )
    dom = conn.defineXML(_slot_xml("bvt-unit-slot", meta))
    dom.create()
    record = tmp_path / "hypervisor.json"
    record.write_text(json.dumps({"reserved_memory_mib": 512, "reserved_cpus": 2, "network_mode": "user"}))
    info = gather_info(conn, str(record), plan={"count": 1, "memory_mib": 256, "vcpus": 1}, now=NOW)
    assert info["cpus"] == 16
    assert info["memory_mib"] == 3072  # getInfo's figure: the test driver has no memory statistics
    assert info["reservation"] == {"memory_mib": 512, "cpus": 2, "source": "config"}
    assert info["network_mode"] == "user"
    assert info["default_domain_type"] == "qemu"  # no vmx/svm in the test driver's CPU
    assert {d["name"]: d["counted"] for d in info["domains"]} == {"test": True, "bvt-unit-slot": True}
    # the default "test" domain alone has 8 GiB on a 3 GiB host: overcommitted, nothing fits
    assert info["capacity"]["used_memory_mib"] == 8192 + 512 + 2 * info["capacity"]["qemu_overhead_mib"]
    assert info["capacity"]["free_memory_mib"] < 0
    assert info["plan"]["fits"] is False
    assert info["plan"]["max_vms"] == 0
    assert info["plan"]["reasons"][0].startswith("memory: 1 VM(s) x (256 MiB + 328 MiB QEMU overhead)")
    assert info["slots"] == [
        {
            "domain": "bvt-unit-slot",
            "state": "running",
            "name": "bvt-unit-slot",
            "lifecycle": "active",
            "image": "worker",
            "image_version": "1.0",
            "drain_at": "2026-11-22T08:00:00Z",
            "deadline": "2026-11-23T08:00:00Z",
        }
    ]
    assert info["slots_by_lifecycle"] == {"active": 1}
    assert [p["name"] for p in info["pools"]] == ["default-pool"]
    assert [n["name"] for n in info["networks"]] == ["default"]


def test_gather_info_options_override_the_record(conn, tmp_path):
    info = gather_info(conn, str(tmp_path / "absent.json"), reserved_memory_mib=1024, qemu_overhead_mib=0)
    assert info["reservation"] == {"memory_mib": 1024, "cpus": 1, "source": "option/default"}
    assert info["capacity"]["qemu_overhead_mib"] == 0
    assert info["config"] == {}
    assert "plan" not in info


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reserved_memory_mib": 4096}, "farm_hypervisor_reserved_memory_mib=4096 is not less than the host's memory"),
        ({"reserved_cpus": 16}, "farm_hypervisor_reserved_cpus=16 is not less than the host's CPUs (16)"),
        ({"plan": {"count": 1, "memory_mib": 0, "vcpus": 1}}, "plan.memory_mib: memory_mib must be a positive number"),
    ],
)
def test_gather_info_bad_input(conn, tmp_path, kwargs, message):
    with pytest.raises(HypervisorError) as err:
        gather_info(conn, str(tmp_path / "absent.json"), **kwargs)
    assert message in str(err.value)


def test_unreadable_record(conn, tmp_path):
    bad = tmp_path / "hypervisor.json"
    bad.write_text("[1, 2]")
    with pytest.raises(HypervisorError, match=f"config_path: {bad} does not hold a JSON object"):
        gather_info(conn, str(bad))
    bad.write_text("{not json")
    with pytest.raises(HypervisorError, match=f"config_path: cannot read {bad}"):
        gather_info(conn, str(bad))


def test_slot_with_unreadable_metadata_is_reported_not_fatal(conn, tmp_path):
    broken = (
        "<domain type='test'><name>bvt-unit-broken</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<metadata><farm:slot xmlns:farm='http://batchvirt.farm/xmlns/slot/1' schema='1'>"
        "<farm:name>bvt-unit-broken</farm:name></farm:slot></metadata>"
        "<os><type arch='i686'>hvm</type></os></domain>"
    )
    conn.defineXML(broken)
    info = gather_info(conn, str(tmp_path / "absent.json"), now=NOW)
    (slot,) = info["slots"]
    assert slot["lifecycle"] is None
    assert slot["state"] == "shutoff"
    assert slot["error"].startswith("slot metadata: ")
    assert info["slots_by_lifecycle"] == {"unreadable": 1}
    # a stopped slot still counts against the host: it comes back
    (usage,) = [d for d in info["domains"] if d["name"] == "bvt-unit-broken"]
    assert usage["slot"] is True and usage["counted"] is True
