"""batchvirt.farm.slots against the real libvirtd: tiny diskless QEMU domains carrying slot
metadata, one of them started (it sits in the firmware), read over libvirtd's socket."""

from __future__ import annotations

from tests.integration.inventory.conftest import run_inventory
from tests.integration.inventory.farm_xml import qemu_domain_xml, slot

NOW = "2026-11-21T12:00:00Z"


def test_real_libvirtd_slots(libvirt_uri, testbed, inventory_file):
    running = testbed.domain(testbed.name("inv-run"))
    stopped = testbed.domain(testbed.name("inv-off"))
    foreign = testbed.domain(testbed.name("inv-foreign"))
    conn = testbed.conn
    conn.defineXML(qemu_domain_xml(running, slot(running, "localhost", ssh_port=10122)))
    conn.defineXML(qemu_domain_xml(stopped, slot(stopped, "localhost", version="2026.11.2")))
    conn.defineXML(qemu_domain_xml(foreign, None))
    conn.lookupByName(running).create()

    run = run_inventory(inventory_file(hypervisors=[libvirt_uri], include_foreign=True, now=NOW))
    # other areas' domains may live on the same libvirtd: look at ours only
    assert running in run.hosts("farm_lifecycle_active")
    assert stopped in run.hosts("farm_lifecycle_stopped")
    assert foreign in run.hosts("farm_foreign")
    assert running in run.hosts("farm_image_outdated")
    assert running in run.hosts("farm_hypervisor_localhost")
    hostvars = run.hostvars(running)
    assert hostvars["farm_domain_state"] == "running"
    assert hostvars["farm_enabled"] is True
    assert hostvars["farm_slot"]["name"] == running
    assert (hostvars["ansible_host"], hostvars["ansible_port"]) == ("127.0.0.1", 10122)
    assert run.hostvars(stopped)["farm_domain_state"] == "shutoff"
    assert run.hostvars(stopped)["farm_enabled"] is False

    run = run_inventory(inventory_file(hypervisors=[libvirt_uri], now=NOW))
    assert foreign not in run.data["_meta"]["hostvars"]
    assert running in run.data["_meta"]["hostvars"]
