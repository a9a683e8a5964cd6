# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: bringing an existing slot up to date on a rerun.

A rerun redefines a domain whose managed fields differ, updates the metadata fields a rerun
may change (never the times, the image, the address or the MAC), recreates a missing overlay
or seed ISO, and starts a stopped slot when ``state=running``.
"""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_create import SlotCreator, describe
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import differences, domain_xml
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError, SlotResult, read_metadata
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata, to_xml
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_plan import SlotPlan, check_identity


def update_existing(creator: SlotCreator, plan: SlotPlan, dom: Any, state: str) -> SlotResult:
    """Redefine, update the metadata of, repair and start an existing slot as needed."""
    host = creator.host
    name = plan.name
    result = SlotResult(name)
    current = read_metadata(dom)
    if current is None:
        raise SlotError(
            f"a libvirt domain named {name} exists and is not a batchvirt slot (no slot metadata): "
            "rename or remove it, or choose another slot name",
            "name",
        )
    check_identity(plan, current)
    wanted_meta = plan.updated_metadata(current)
    plan.spec.metadata = wanted_meta
    desired = domain_xml(plan.spec)
    existing = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    changed_fields = differences(desired, existing)
    active = bool(dom.isActive())
    if changed_fields:
        result.actions.append("redefine (%s)" % ", ".join(changed_fields))
        if host.diff_mode:
            result.diff = {
                "before_header": f"{name} (domain XML)",
                "after_header": f"{name} (domain XML)",
                "before": existing,
                "after": desired,
            }
        if not host.check_mode:
            host.conn.defineXML(desired)
    if to_xml(wanted_meta) != to_xml(current):
        result.actions.append("update metadata")
        if not host.check_mode:
            host.set_metadata(dom, wanted_meta, active)
    repair_disks(creator, plan, wanted_meta, result)
    if state == "running" and not active:
        result.actions.append("start")
        if not host.check_mode:
            creator.queue_start(plan, dom)
        active = True
    result.changed = bool(result.actions)
    result.result = describe(host, plan, wanted_meta, active)
    return result


def _missing(creator: SlotCreator, plan: SlotPlan, path: str) -> bool:
    host = creator.host
    if host.local:
        return not os.path.exists(path)
    return host.volume(plan.pool, os.path.basename(path)) is None


def repair_disks(creator: SlotCreator, plan: SlotPlan, meta: SlotMetadata, result: SlotResult) -> None:
    """Recreate a missing overlay or seed ISO (a slot must be startable)."""
    host = creator.host
    if not host.local:
        host.refresh(plan.pool)
    if not plan.overlay.is_lvm and _missing(creator, plan, plan.spec.overlay_path):
        result.actions.append("recreate overlay")
        if not host.check_mode:
            host.refresh(plan.pool)
            creator.create_overlay(plan)
    if _missing(creator, plan, plan.spec.seed_path):
        result.actions.append("recreate seed ISO")
        if not host.check_mode:
            host.refresh(plan.pool)
            creator.create_seed(plan, meta)
