"""The hypervisor role and hypervisor_info on this machine, through ansible-runner as AWX runs them.

Each test uses its own pool names, paths and record file, so the shared pools the session
fixture set up (batchvirt-images, batchvirt-slots) are never touched.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import default_domain_type
from tests.testbed.ansible import run_playbook

PLAYBOOK = "playbooks/hypervisors.yml"
INFO = os.path.join(os.path.dirname(__file__), "info.yml")
OTHER_OS = os.path.join(os.path.dirname(__file__), "other_os.yml")
INVENTORY = {
    "all": {
        "children": {
            "hypervisors": {
                "hosts": {
                    "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                }
            }
        }
    }
}


@pytest.fixture
def hv(testbed):
    """Extra vars for a private set of pools and record, removed afterwards."""
    images, slots = testbed.pool(testbed.name("hv-images")), testbed.pool(testbed.name("hv-slots"))
    return {
        "farm_hypervisor_network_mode": "user",
        "farm_hypervisor_images_pool_name": images,
        "farm_hypervisor_images_pool_path": os.path.join(testbed.tmp, "batchvirt", "images"),
        "farm_hypervisor_slots_pool_name": slots,
        "farm_hypervisor_slots_pool_path": os.path.join(testbed.tmp, "batchvirt", "slots"),
        "farm_hypervisor_config_path": os.path.join(testbed.tmp, "etc", "hypervisor.json"),
        "farm_hypervisor_reserved_memory_mib": 1024,
    }


def failure_messages(result):
    return [
        e["event_data"]["res"].get("msg", "")
        for e in result.events
        if e.get("event") in ("runner_on_failed", "runner_item_on_failed")
    ]


def test_role_twice_then_info(hv, libvirt_conn):
    first = run_playbook(PLAYBOOK, inventory=INVENTORY, extravars=hv)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    assert set(first.changed_tasks()) >= {
        "Define, start and autostart the storage pools",
        "Write the record hypervisor_info reads",
    }
    second = run_playbook(PLAYBOOK, inventory=INVENTORY, extravars=hv)
    assert second.rc == 0, second.stdout[-3000:]
    assert not second.changed, second.changed_tasks()

    # libvirtd answers, the pools are active at the right paths and start at boot
    for name, path in (
        (hv["farm_hypervisor_images_pool_name"], hv["farm_hypervisor_images_pool_path"]),
        (hv["farm_hypervisor_slots_pool_name"], hv["farm_hypervisor_slots_pool_path"]),
    ):
        pool = libvirt_conn.storagePoolLookupByName(name)
        assert pool.isActive() and pool.autostart()
        assert f"<path>{path}</path>" in pool.XMLDesc(0)
        assert os.path.isdir(path)
    with open(hv["farm_hypervisor_config_path"], encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["reserved_memory_mib"] == 1024
    assert record["network_mode"] == "user"
    assert record["pools"]["slots"]["path"] == hv["farm_hypervisor_slots_pool_path"]

    info_run = run_playbook(INFO, inventory=INVENTORY, extravars={"bvt_config_path": hv["farm_hypervisor_config_path"]})
    assert info_run.rc == 0, info_run.stdout[-3000:]
    (info,) = info_run.results("Read what the hypervisor can hold")
    assert info["changed"] is False
    pools = {p["name"]: p for p in info["pools"]}
    images = pools[hv["farm_hypervisor_images_pool_name"]]
    assert images["state"] == "running"
    assert images["path"] == hv["farm_hypervisor_images_pool_path"]
    assert images["available_mib"] > 0
    assert info["reservation"] == {"memory_mib": 1024, "cpus": 1, "source": "config"}
    expected_type = default_domain_type(libvirt_conn.getCapabilities())
    assert info["default_domain_type"] == expected_type
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        flags = handle.read()
    if " vmx" not in flags and " svm" not in flags:
        assert expected_type == "qemu"  # this machine: KVM exists but cannot boot guests
    assert info["capacity"]["reserved_memory_mib"] == 1024
    assert info["plan"]["count"] == 8
    # other tests' domains may run meanwhile: free capacity can be negative, max_vms never is
    assert info["plan"]["max_vms"] == max(
        0,
        min(
            info["capacity"]["free_memory_mib"] // (2048 + info["capacity"]["qemu_overhead_mib"]),
            int(info["capacity"]["free_vcpus"]),
        ),
    )


def test_nat_network_in_check_mode_defines_nothing(hv, libvirt_conn, testbed):
    name = testbed.name("hv-nat")
    extravars = dict(
        hv,
        farm_hypervisor_network_mode="nat",
        farm_hypervisor_network_name=name,
        farm_hypervisor_install_packages=False,
    )
    result = run_playbook(PLAYBOOK, inventory=INVENTORY, extravars=extravars, check=True)
    assert result.rc == 0, result.stdout[-3000:]
    (net,) = result.results("Define, start and autostart the slot network")
    assert net["changed"] is True
    assert net["actions"] == ["define", "start", "autostart"]
    assert '<ip address="192.168.150.1" netmask="255.255.255.0">' in net["xml"]
    assert name not in [n.name() for n in libvirt_conn.listAllNetworks(0)]
    assert hv["farm_hypervisor_images_pool_name"] not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"farm_hypervisor_network_mode": "bridge", "farm_hypervisor_bridge_interface": "bvt-nonic0"},
            [
                'farm_hypervisor_bridge_interface="bvt-nonic0": no such network interface on localhost (bridge mode '
                "needs the physical NIC the bridge enslaves; the host has: ",
                "lo",
            ],
        ),
        (
            {
                "farm_hypervisor_network_mode": "bridge",
                "farm_hypervisor_bridge_interface": "lo",
                "farm_hypervisor_bridge_name": "bvt-nobr0",
            },
            ["farm_hypervisor_bridge_name=bvt-nobr0: no such bridge on localhost", "Create it in the host's network"],
        ),
        (
            {"farm_hypervisor_reserved_memory_mib": 64 * 1024 * 1024},
            ["farm_hypervisor_reserved_memory_mib=67108864 is not less than the host's memory"],
        ),
    ],
    ids=["no-such-nic", "no-such-bridge", "reservation-larger-than-host"],
)
def test_bad_input_fails_early_naming_the_variable(hv, libvirt_conn, override, expected):
    result = run_playbook(PLAYBOOK, inventory=INVENTORY, extravars=dict(hv, **override))
    assert result.rc != 0
    messages = failure_messages(result)
    assert any(all(part in m for part in expected) for m in messages), messages
    # it failed before anything was installed or defined
    assert "Define, start and autostart the storage pools" not in [
        e["event_data"].get("task") for e in result.events if e.get("event") == "playbook_on_task_start"
    ]
    assert hv["farm_hypervisor_images_pool_name"] not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]


def test_pool_paths_on_missing_or_full_filesystem_name_the_variable(hv, libvirt_conn):
    """One run, two bad pools: the slot pool on a filesystem that is not there, and every
    dir pool on a filesystem "full" for an absurd minimum of free space."""
    missing = "/bvt-no-such-fs/data/batchvirt/slots"
    extravars = dict(hv, farm_hypervisor_slots_pool_path=missing, farm_hypervisor_pool_min_free_mib=1024**3)
    result = run_playbook(PLAYBOOK, inventory=INVENTORY, extravars=extravars)
    assert result.rc != 0
    (final,) = [m for m in failure_messages(result) if m.startswith("farm_hypervisor_")]
    images_msg, slots_msg = final.split("; farm_hypervisor_")
    slots_msg = "farm_hypervisor_" + slots_msg
    assert images_msg.startswith(f"farm_hypervisor_images_pool_path={hv['farm_hypervisor_images_pool_path']}: pool ")
    assert "MiB available, less than the 1073741824 MiB required" in images_msg
    assert slots_msg.startswith(f"farm_hypervisor_slots_pool_path={missing}: pool ")
    assert "is the filesystem meant to hold the pool mounted?" in slots_msg
    assert not os.path.exists("/bvt-no-such-fs")
    names = [p.name() for p in libvirt_conn.listAllStoragePools(0)]
    assert hv["farm_hypervisor_images_pool_name"] not in names
    assert hv["farm_hypervisor_slots_pool_name"] not in names


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"os_family": "Gentoo", "distribution_major_version": "2"},
            "ansible_os_family=Gentoo (ansible_distribution_major_version=2)",
        ),
        (
            {"os_family": "RedHat", "distribution_major_version": "8"},
            "ansible_os_family=RedHat (ansible_distribution_major_version=8)",
        ),
    ],
    ids=["gentoo", "el8"],
)
def test_unsupported_os_family_fails_early(hv, facts, expected):
    facts = dict(facts, service_mgr="systemd", memtotal_mb=16384, processor_vcpus=8)
    result = run_playbook(OTHER_OS, inventory=INVENTORY, extravars=dict(hv, bvt_facts=facts))
    assert result.rc != 0
    messages = failure_messages(result)
    assert any(
        m.startswith("The hypervisor role supports the Debian/Ubuntu and EL 9 (RHEL, AlmaLinux, Rocky) families")
        and expected in m
        for m in messages
    ), messages
    started = [e["event_data"].get("task") for e in result.events if e.get("event") == "playbook_on_task_start"]
    assert "Gather the facts the role needs" in started  # evaluated, skipped: the facts were there
    assert not any(t.startswith(("Install", "Find which packages")) for t in started), started
