"""playbooks/slots.yml on localhost with two tiny guests: create and boot, idempotent rerun,
restart of a slot destroyed by hand, replacement of a missing one, check mode, diff."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
from tests.integration.slots.conftest import register_slot, slot_files, wait_for_console
from tests.testbed.ansible import run_playbook

PLAYBOOK = "playbooks/slots.yml"
TASK = "Lay out, create and start this hypervisor's slots"


def slots_vars(guest, hv, **extra):
    values = {
        "farm_slots_hosts": "localhost",
        "farm_vm_slots_hypervisor_name": hv,
        "farm_vm_slots_profile": {"vcpus": 1, "memory_mib": 128, "count": 2},
        "farm_vm_slots_image": {"path": guest["base"]},
        "farm_vm_slots_boot": {
            "mode": "kernel",
            "kernel": guest["kernel"],
            "initrd": guest["initrd"],
            "cmdline": guest["cmdline"],
        },
        "farm_vm_slots_ssh_port_base": 12600,
        "farm_vm_slots_overcommit_cpu": 32.0,  # other tests' domains may run on this host
        "farm_vm_slots_domain_type": "qemu",
        "farm_vm_slots_cloud_init": {"ssh_genkeytypes": ["ed25519"]},
    }
    values.update(extra)
    return values


@pytest.mark.slow
def test_slots_playbook(testbed, libvirt_conn, guest, slots_pool):
    hv = testbed.name("hv").replace("-", "")
    names = [register_slot(testbed, f"{hv}-slot-0{n}") for n in (1, 2, 3)]
    variables = slots_vars(guest, hv)

    # check mode creates nothing
    checked = run_playbook(PLAYBOOK, extravars=variables, check=True)
    assert checked.rc == 0, checked.stdout[-3000:]
    assert checked.changed
    assert not set(names) & {d.name() for d in libvirt_conn.listAllDomains(0)}
    assert not slot_files(names[0])

    first = run_playbook(PLAYBOOK, extravars=variables)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    (result,) = first.results(TASK)
    assert [s["name"] for s in result["slots"]] == names[:2]
    assert [s["ssh"]["port"] for s in result["slots"]] == [12600, 12601]
    for entry in result["slots"]:
        dom = libvirt_conn.lookupByName(entry["name"])
        assert dom.isActive()
        # metadata round-trips through libvirt
        assert read_metadata(dom).to_dict() == entry["metadata"]
        assert entry["lifecycle"] == "provisioning"
    assert "BATCHVIRT-TINYGUEST-UP" in wait_for_console(names[0], "BATCHVIRT-TINYGUEST-UP")

    second = run_playbook(PLAYBOOK, extravars=variables)
    assert second.rc == 0, second.stdout[-3000:]
    assert not second.changed, second.changed_tasks()
    (again,) = second.results(TASK)
    assert [s["metadata"]["created_at"] for s in again["slots"]] == [
        s["metadata"]["created_at"] for s in result["slots"]
    ]

    # destroyed by hand: restarted; missing: recreated
    libvirt_conn.lookupByName(names[0]).destroy()
    doomed = libvirt_conn.lookupByName(names[1])
    doomed.destroy()
    doomed.undefine()
    third = run_playbook(PLAYBOOK, extravars=variables)
    assert third.rc == 0, third.stdout[-3000:]
    (repaired,) = third.results(TASK)
    assert repaired["slots"][0]["actions"] == ["start"]
    assert repaired["slots"][1]["actions"] == [
        f"remove stale {names[1]}.qcow2 and {names[1]}-seed.iso",
        "create overlay",
        "create seed ISO",
        "define",
        "start",
    ]
    assert all(libvirt_conn.lookupByName(n).isActive() for n in names[:2])

    # a changed profile in check + diff mode: the XML diff, nothing changed
    bigger = slots_vars(guest, hv, farm_vm_slots_profile={"vcpus": 1, "memory_mib": 192, "count": 2})
    diffed = run_playbook(PLAYBOOK, extravars=bigger, check=True, diff=True)
    assert diffed.rc == 0, diffed.stdout[-3000:]
    assert '<memory unit="KiB">196608</memory>' in diffed.stdout or "196608" in diffed.stdout
    assert libvirt_conn.lookupByName(names[0]).maxMemory() == 128 * 1024


def test_slots_count_beyond_memory_names_the_variable(testbed, libvirt_conn, guest, slots_pool):
    hv = testbed.name("hv").replace("-", "")
    register_slot(testbed, f"{hv}-slot-01")
    variables = slots_vars(guest, hv, farm_vm_slots_profile={"vcpus": 1, "memory_mib": 65536, "count": 100})
    failed = run_playbook(PLAYBOOK, extravars=variables)
    assert failed.rc != 0
    assert "farm_vm_slots_profile.count: layout: count=100 does not fit on this hypervisor: memory:" in failed.stdout
    assert f"{hv}-slot-01" not in {d.name() for d in libvirt_conn.listAllDomains(0)}
