"""Three hypervisors reached over SSH (tests/testbed/hypervisors.py): the hypervisor role
configures them, the inventory plugin reads them over qemu+ssh:// and copes with one going away."""

from __future__ import annotations

import json
import time
from typing import Dict, Iterator

import pytest
import yaml

from tests.integration.inventory.conftest import run_inventory
from tests.integration.inventory.farm_xml import qemu_domain_xml, slot
from tests.integration.multi.conftest import TIMINGS, run_hypervisors_play
from tests.testbed.bed import libvirt
from tests.testbed.hypervisors import HypervisorBed

NOW = "2026-11-21T12:00:00Z"
pytestmark = pytest.mark.multihv


def test_role_configures_each_hypervisor_over_ssh(hvbed: HypervisorBed, configured) -> None:
    names = [hv.name for hv in hvbed.hypervisors]
    assert configured.rc == 0, configured.stdout[-4000:]
    for name in names:
        assert configured.stats["ok"].get(name), f"{name} did not run: {configured.stats}"
        assert name not in configured.stats.get("failures", {})
        assert name not in configured.stats.get("dark", {})
        assert configured.stats["changed"].get(name), f"the role changed nothing on bare {name}"

    start = time.monotonic()
    again = run_hypervisors_play(hvbed)
    TIMINGS["hypervisor role, rerun"] = round(time.monotonic() - start, 1)
    assert again.rc == 0, again.stdout[-4000:]
    assert not again.changed, f"the rerun changed: {again.changed_tasks()}"

    for hv in hvbed.hypervisors:
        conn = libvirt.open(hvbed.uri(hv))
        try:
            # the libvirtd that answers is the hypervisor's own (its UTS namespace, its pools)
            assert conn.getHostname() == hv.name
            pools = {p.name(): p.isActive() for p in conn.listAllStoragePools()}
            assert pools.get("batchvirt-images") and pools.get("batchvirt-slots"), pools
        finally:
            conn.close()
        # its own /etc/batchvirt, written over SSH into its own root filesystem
        with open(hv.path("/etc/batchvirt/hypervisor.json"), encoding="utf-8") as fh:
            record = json.load(fh)
        assert record, f"{hv.name}: empty hypervisor record"


@pytest.fixture
def slots_on_each(hvbed: HypervisorBed) -> Iterator[Dict[str, str]]:
    """One slot domain (defined, not booted) with the collection's metadata on each hypervisor."""
    defined: Dict[str, str] = {}
    try:
        for hv in hvbed.hypervisors:
            name = f"bvt-mslot-{hv.name}"
            conn = libvirt.open(hvbed.uri(hv))
            try:
                conn.defineXML(qemu_domain_xml(name, slot(name, hv.name, ssh_port=10022)))
            finally:
                conn.close()
            defined[hv.name] = name
        yield defined
    finally:
        for hv in hvbed.hypervisors:
            if hv.name not in defined:
                continue
            conn = libvirt.open(hvbed.uri(hv))
            try:
                conn.lookupByName(defined[hv.name]).undefine()
            finally:
                conn.close()


def _plugin_config(tmp_path, hvbed: HypervisorBed, **options) -> str:
    path = tmp_path / "farm.farm.slots.yml"
    config = {
        "plugin": "batchvirt.farm.slots",
        "hypervisor_group": "hypervisors",
        "uri_template": hvbed.uri_template(),
        "timeout": 20,
        "now": NOW,
        **options,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_inventory_reads_the_group_over_qemu_ssh(hvbed, configured, hv_inventory, slots_on_each, tmp_path) -> None:
    start = time.monotonic()
    run = run_inventory(hv_inventory, _plugin_config(tmp_path, hvbed))
    TIMINGS["inventory refresh, three hypervisors"] = round(time.monotonic() - start, 1)
    assert run.rc == 0, run.stderr[-3000:]
    # without --export, ansible-inventory gives the group all's variables to every host
    assert run.hostvars(slots_on_each["hv1"])["farm_unreachable_hypervisors"] == [], run.stderr[-3000:]
    for hv in hvbed.hypervisors:
        name = slots_on_each[hv.name]
        # grouped by the hypervisor it lives on, and only there
        assert run.hosts(f"farm_hypervisor_{hv.name}") == [name], run.stderr[-2000:]
        hostvars = run.hostvars(name)
        assert hostvars["farm_hypervisor"] == hv.name
        assert hostvars["farm_slot"]["hypervisor"] == hv.name
        assert hostvars["farm_domain_state"] == "shutoff"
        assert name in run.hosts("farm_lifecycle_stopped")


def test_a_hypervisor_going_away(hvbed, configured, hv_inventory, slots_on_each, tmp_path) -> None:
    gone = hvbed.hypervisors[1]
    others = [hv for hv in hvbed.hypervisors if hv is not gone]
    gone.stop_daemons()
    try:
        run = run_inventory(hv_inventory, _plugin_config(tmp_path, hvbed))
        unreachable = run.hostvars(slots_on_each[others[0].name])["farm_unreachable_hypervisors"]
        assert [u["name"] for u in unreachable] == [gone.name]
        assert f"hypervisor {gone.name} left out" in run.stderr
        assert slots_on_each[gone.name] not in run.data["_meta"]["hostvars"]
        for hv in others:
            assert run.hosts(f"farm_hypervisor_{hv.name}") == [slots_on_each[hv.name]]

        # fail_on_errors: the refresh fails, naming the hypervisor; with several sources (the
        # hypervisors' inventory first) ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED makes it fatal
        strict = _plugin_config(tmp_path, hvbed, fail_on_errors=True)
        message = f"refresh failed (fail_on_errors is true): {gone.name}: cannot connect to libvirt"
        run = run_inventory(hv_inventory, strict, env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1"})
        assert run.rc != 0
        assert message in run.stderr
        # otherwise the source is dropped as a whole, with the reason: no slot is listed
        run = run_inventory(hv_inventory, strict)
        assert message in run.stderr
        assert not any(name in run.data["_meta"]["hostvars"] for name in slots_on_each.values())
    finally:
        gone.start_daemons()
        gone.wait_ready()
    # back: read again with the others
    run = run_inventory(hv_inventory, _plugin_config(tmp_path, hvbed))
    assert run.hostvars(slots_on_each[gone.name])["farm_unreachable_hypervisors"] == []
    assert run.hosts(f"farm_hypervisor_{gone.name}") == [slots_on_each[gone.name]]
