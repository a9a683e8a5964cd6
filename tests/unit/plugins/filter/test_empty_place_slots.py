"""The batchvirt.farm.empty_place_slots filter: an empty place becomes the first free
``<hypervisor>-slot-NN`` of its hypervisor, with that slot number's SSH port or pool address in the
hypervisor's recorded block, as the vm_slots role lays slots out; existing slots are never moved."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.batchvirt.farm.plugins.filter.empty_place_slots import empty_place_slots


def test_the_first_free_number_and_its_ssh_port():
    out = empty_place_slots(
        [{"hypervisor": "hv01", "type": "gpu"}, {"hypervisor": "hv01", "type": "el9"}],
        ["hv01-slot-01", "hv01-slot-03", "hv02-slot-02"],
        {},
        10022,
    )
    assert out == [
        {"name": "hv01-slot-02", "number": 2, "hypervisor": "hv01", "type": "gpu", "network": {"ssh_port": 10023}},
        {"name": "hv01-slot-04", "number": 4, "hypervisor": "hv01", "type": "el9", "network": {"ssh_port": 10025}},
    ]


def test_the_pool_address_of_the_slot_number_in_the_recorded_block():
    pool = {"network": "192.0.2.0/24", "first": "192.0.2.10", "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}
    out = empty_place_slots([{"hypervisor": "hv02", "type": "el9"}], ["hv02-slot-01"], {"hv02": 1}, None, pool, 8)
    assert out[0]["name"] == "hv02-slot-02"
    # block 1, stride 8, slot 2: the pool's address number 1 * 8 + 2 (the tenth from .10)
    assert out[0]["network"] == {"address": "192.0.2.19/24", "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}


def test_a_pool_without_a_recorded_block_is_refused():
    with pytest.raises(AnsibleFilterError, match="no recorded address block"):
        empty_place_slots([{"hypervisor": "hv03", "type": "el9"}], [], {}, None, {"network": "192.0.2.0/24"})


def test_a_full_hypervisor_is_refused():
    with pytest.raises(AnsibleFilterError, match="no free slot number"):
        empty_place_slots([{"hypervisor": "hv01", "type": "el9"}], ["hv01-slot-01", "hv01-slot-02"], {}, 10022, None, 2)
