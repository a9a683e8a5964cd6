"""Addresses never move (issue 14, item 4): each hypervisor's address block is recorded on it
the first time, so inserting a hypervisor in the middle of the group and rerunning
playbooks/slots.yml leaves every existing slot's address alone; a request that gives an
existing slot another address is refused instead of rewriting its metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module
from tests.integration.slots.conftest import register_slot
from tests.testbed.ansible import run_playbook

PLAYBOOK = "playbooks/slots.yml"
POOL = {"network": "192.0.2.0/24", "first": "192.0.2.10", "exclude": ["192.0.2.12"], "gateway": "192.0.2.1"}


@pytest.fixture
def bridge(testbed):
    name = "bvtbr" + os.urandom(3).hex()
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    testbed.cleanup(lambda: subprocess.run(["ip", "link", "del", name], check=False))
    return name


def inventory(hosts, records):
    entries = {
        host: {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "farm_vm_slots_hypervisor_name": host,
            "farm_vm_slots_block_record": records[host],
        }
        for host in hosts
    }
    return {"all": {"children": {"hypervisors": {"hosts": entries}}}}


def addresses(libvirt_conn, names):
    return {n: read_metadata(libvirt_conn.lookupByName(n)).address for n in names}


def test_inserting_a_hypervisor_moves_no_address(testbed, libvirt_conn, guest, slots_pool, bridge):
    stem = testbed.name("").replace("-", "")  # bvt<6 hex>: a name the test bed sweeps if left
    hva, hvb, hvc = (f"{stem}{x}" for x in "abc")
    records = {h: os.path.join(testbed.tmp, f"{h}-block.json") for h in (hva, hvb, hvc)}
    slots = {h: [register_slot(testbed, f"{h}-slot-0{n}") for n in (1, 2)] for h in (hva, hvb, hvc)}
    variables = {
        "farm_vm_slots_state": "present",  # defined, not booted: the addresses are what matters
        "farm_vm_slots_profile": {"vcpus": 1, "memory_mib": 128, "count": 2},
        "farm_vm_slots_image": {"path": guest["base"]},
        "farm_vm_slots_network": {"mode": "bridge", "bridge": bridge},
        "farm_vm_slots_address_pool": POOL,
        "farm_vm_slots_address_stride": 4,
        "farm_vm_slots_overcommit_cpu": 32.0,
        "farm_vm_slots_domain_type": "qemu",
    }
    first = run_playbook(PLAYBOOK, extravars=variables, inventory=inventory([hva, hvc], records))
    assert first.rc == 0, first.stdout[-3000:]
    before = addresses(libvirt_conn, slots[hva] + slots[hvc])
    assert before == {
        slots[hva][0]: "192.0.2.10/24",
        slots[hva][1]: "192.0.2.11/24",  # .12 is excluded
        slots[hvc][0]: "192.0.2.15/24",
        slots[hvc][1]: "192.0.2.16/24",
    }
    with open(records[hvc]) as handle:
        assert json.load(handle)["index"] == 1

    # hvb joins in the middle of the group: it takes a free block, nobody else moves
    second = run_playbook(PLAYBOOK, extravars=variables, inventory=inventory([hva, hvb, hvc], records))
    assert second.rc == 0, second.stdout[-3000:]
    assert addresses(libvirt_conn, slots[hva] + slots[hvc]) == before
    assert addresses(libvirt_conn, slots[hvb]) == {slots[hvb][0]: "192.0.2.19/24", slots[hvb][1]: "192.0.2.20/24"}
    unchanged = [
        r
        for r in second.results("Lay out, create and start this hypervisor's slots")
        if r["slots"][0]["name"].startswith(hva)
    ]
    assert unchanged and not unchanged[0]["changed"]


def test_changing_an_existing_slots_address_is_refused(
    testbed, libvirt_conn, guest, slots_pool, bridge, capsys, monkeypatch
):
    monkeypatch.delenv("BATCHVIRT_FARM_NOW", raising=False)
    name = register_slot(testbed, testbed.name("addr"))
    args = {
        "name": name,
        "hypervisor": "bvt",
        "memory_mib": 128,
        "domain_type": "qemu",
        "state": "present",
        "image": {"path": guest["base"]},
        "network": {"mode": "bridge", "bridge": bridge, "address": "192.0.2.40/24"},
    }

    def call(**extra):
        with patch_module_args(dict(args, **extra)), pytest.raises(SystemExit):
            slot_module.main()
        return json.loads(capsys.readouterr().out)

    assert call()["changed"]
    moved = call(network=dict(args["network"], address="192.0.2.41/24"))
    assert moved["failed"]
    assert f"slot {name} has the address 192.0.2.40/24; this request gives it 192.0.2.41/24" in moved["msg"]
    assert "recreate the slot" in moved["msg"]
    assert moved["option"] == "network.address"
    new_mac = call(network=dict(args["network"], mac="52:54:00:00:00:99"))
    assert new_mac["failed"] and "has the mac" in new_mac["msg"]
    assert read_metadata(libvirt_conn.lookupByName(name)).address == "192.0.2.40/24"
    assert not call()["changed"]
