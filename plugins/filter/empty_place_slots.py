# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The empty places a demand plan fills, as new slots laid out like the vm_slots role lays them out.

``empty_place_slots`` gives each empty place (``{hypervisor, type}``, a ``fill`` entry of
``batchvirt.farm.demand_plan`` without a slot) the first free ``<hypervisor>-slot-NN`` name of its
hypervisor and the network of that slot number in the layout (``plugins/module_utils/_slot_layout.py``,
the slot module's ``layout``): its SSH port (user-mode networking) or its pool address in the
hypervisor's recorded address block. Existing slots are never renamed or moved. Documentation:
``empty_place_slots.yml`` next to this file.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import (
    AddressPool,
    LayoutError,
    layout,
    slot_name,
)


def empty_place_slots(
    places: Sequence[Mapping[str, Any]],
    taken: Sequence[str],
    blocks: Optional[Mapping[str, Any]] = None,
    ssh_port_base: Optional[int] = None,
    address_pool: Optional[Mapping[str, Any]] = None,
    stride: int = 32,
) -> List[Dict[str, Any]]:
    """One new slot per place: the place's keys with ``name``, ``number`` and ``network``.

    ``taken`` are the names of the slots that exist (any hypervisor); ``blocks`` maps a hypervisor
    to its recorded address block (needed with ``address_pool``); ``ssh_port_base`` is given for
    user-mode networking.
    """
    if not isinstance(places, Sequence) or isinstance(places, (str, bytes)):
        raise AnsibleFilterError(f"empty_place_slots: the places must be a list, got {places!r}")
    used = {str(name) for name in taken or ()}
    blocks = blocks or {}
    try:
        pool = AddressPool.from_spec(dict(address_pool)) if address_pool else None
    except LayoutError as exc:
        raise AnsibleFilterError(f"empty_place_slots: {exc}") from None
    out: List[Dict[str, Any]] = []
    for place in places:
        hypervisor = str(place.get("hypervisor") or "")
        if not hypervisor:
            raise AnsibleFilterError(f"empty_place_slots: a place names no hypervisor: {dict(place)!r}")
        number = next((n for n in range(1, stride + 1) if slot_name(hypervisor, n) not in used), 0)
        if not number:
            raise AnsibleFilterError(
                f"empty_place_slots: {hypervisor} has no free slot number up to the stride {stride}: "
                "lower its places or raise the stride"
            )
        block = blocks.get(hypervisor)
        if pool is not None and block is None:
            raise AnsibleFilterError(
                f"empty_place_slots: {hypervisor} has no recorded address block: lay out its slots once "
                "with playbooks/slots.yml (the vm_slots role records it)"
            )
        try:
            row = layout(hypervisor, int(block or 0), number, stride, pool, ssh_port_base)[-1]
        except LayoutError as exc:
            raise AnsibleFilterError(f"empty_place_slots: {hypervisor}: {exc}") from None
        network: Dict[str, Any] = {}
        if "address" in row:
            network["address"] = row["address"]
            if pool is not None and pool.gateway is not None:
                network["gateway"] = pool.gateway
            if pool is not None and pool.dns:
                network["dns"] = list(pool.dns)
        if "ssh_port" in row:
            network["ssh_port"] = row["ssh_port"]
        used.add(row["name"])
        out.append(
            dict(
                place,
                name=row["name"],
                number=number,
                hypervisor=hypervisor,
                type=str(place.get("type") or ""),
                network=network,
            )
        )
    return out


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"empty_place_slots": empty_place_slots}
