"""The slots inventory reports slots of the farm that share a static address (issue 14, item 4)."""

from __future__ import annotations

from dataclasses import replace

from tests.integration.inventory.farm_xml import slot
from tests.unit.plugins.inventory.test_inventory_slots_plugin import (  # pylint: disable=unused-import
    _plugin_config,  # noqa: F401 (the autouse fixture registers the plugin's options)
    farm_data,
    group_hosts,
    make_plugin,
    populate,
)


def with_address(name, hv, address):
    meta = replace(slot(name, hv), network_mode="bridge", address=address, ssh_host=address.split("/")[0])
    return {"domain": name, "state": 1, "slot": meta.to_dict(), "error": ""}


def test_duplicate_addresses_across_hypervisors_are_reported(monkeypatch):
    warnings = []
    plugin = make_plugin()
    monkeypatch.setattr(plugin.display, "warning", warnings.append)
    data = farm_data(
        (
            "hv1",
            "test:///x/hv1.xml",
            [with_address("a", "hv1", "192.0.2.10/24"), with_address("b", "hv1", "192.0.2.11/24")],
            "",
        ),
        ("hv2", "test:///x/hv2.xml", [with_address("c", "hv2", "192.0.2.10/25")], ""),
    )
    inv = populate(plugin, data)
    assert group_hosts(inv, "farm_address_conflict") == ["a", "c"]
    assert inv.groups["all"].vars["farm_address_conflicts"] == {"192.0.2.10": ["a", "c"]}
    assert warnings == ["batchvirt.farm.slots: the slots a, c share the address 192.0.2.10"]


def test_no_conflict_leaves_the_group_empty():
    plugin = make_plugin()
    data = farm_data(("hv1", "test:///x/hv1.xml", [with_address("a", "hv1", "192.0.2.10/24")], ""))
    inv = populate(plugin, data)
    assert group_hosts(inv, "farm_address_conflict") == []
    assert inv.groups["all"].vars["farm_address_conflicts"] == {}
