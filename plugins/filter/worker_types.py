# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slot's own worker type as the options it is re-created with, as a Jinja filter.

``worker_slot_profile`` is what keeps a mixed farm mixed: ``recycle.yml`` and
``rolling_update.yml`` re-create each slot from the declaration of the worker type its metadata
records (``plugins/module_utils/_worker_type.py`` validates the declarations), not from one
farm-wide profile. Documentation: ``worker_slot_profile.yml`` next to this file.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import (
    NEWEST,
    WorkerTypeError,
    parse_worker_types,
)


def worker_slot_profile(
    profile: Mapping[str, Any],
    worker_types: Any,
    worker_type: Optional[str],
    image: Optional[Mapping[str, Any]] = None,
    batch: Optional[Mapping[str, Any]] = None,
    version: str = "latest",
) -> Dict[str, Any]:
    """``profile`` (the farm-wide slot options) with the fields of the slot's worker type.

    Returns the profile's keys plus ``image_identifier``, ``image_version``, ``batch`` and
    ``worker_type``. A slot without a type, or a farm that declares none, keeps the farm-wide
    profile and its own image; a slot whose type is not declared is an error (re-creating it
    with another type's size and image would change it silently).
    """
    if not isinstance(profile, Mapping):
        raise AnsibleFilterError(f"worker_slot_profile: the slot profile must be a mapping, got {profile!r}")
    image = image or {}
    out: Dict[str, Any] = dict(profile)
    out["image_identifier"] = image.get("identifier", "")
    out["image_version"] = version
    out["batch"] = dict(batch or {})
    out["worker_type"] = worker_type or ""
    if not worker_type or not worker_types:
        return out
    try:
        types = parse_worker_types(worker_types, "farm_worker_types")
    except WorkerTypeError as exc:
        raise AnsibleFilterError(str(exc)) from None
    declared = {wt.name: wt for wt in types}
    wt = declared.get(str(worker_type))
    if wt is None:
        raise AnsibleFilterError(
            f"farm_worker_types: the slot's worker type {worker_type!r} is not declared (declared: "
            f"{', '.join(sorted(declared))}); declare it again, or remove the slot to retire the type"
        )
    out.update(
        vcpus=wt.vcpus,
        memory_mib=wt.memory_mib,
        disk_size_gib=wt.disk_gib,
        lifetime=wt.lifetime,
        lifetime_spread=wt.lifetime_spread,
        max_job_walltime=wt.max_job_walltime or out.get("max_job_walltime", 0),
        image_identifier=wt.image,
        image_version=version if wt.image_version == NEWEST else wt.image_version,
    )
    features = [f for f in (out["batch"].get("features") or []) if f not in {t.name for t in types}]
    out["batch"]["features"] = list(wt.features) + [f for f in features if f not in wt.features]
    return out


def worker_layout_mix(mix: Any, worker_types: Any) -> List[Dict[str, Any]]:
    """``[{worker_type, count}]`` as the slot module's ``layout.mix``, sizes and images from the declarations."""
    if not mix:
        return []
    if isinstance(mix, (str, bytes)) or not isinstance(mix, Sequence):
        raise AnsibleFilterError(f"farm_vm_slots_mix: a list of {{worker_type, count}}, got {mix!r}")
    try:
        types = {wt.name: wt for wt in parse_worker_types(worker_types, "farm_worker_types")}
    except WorkerTypeError as exc:
        raise AnsibleFilterError(f"farm_vm_slots_mix needs the declared worker types: {exc}") from None
    out = []
    for i, part in enumerate(mix):
        name = part.get("worker_type") if isinstance(part, Mapping) else None
        if name not in types:
            raise AnsibleFilterError(
                f"farm_vm_slots_mix[{i}].worker_type: {name!r} is not declared in farm_worker_types "
                f"({', '.join(sorted(types))})"
            )
        wt = types[name]
        out.append(
            {
                "worker_type": wt.name,
                "count": str(part.get("count", "auto")),
                "vcpus": wt.vcpus,
                "memory_mib": wt.memory_mib,
                "disk_size_gib": wt.disk_gib,
                "image": {
                    "identifier": wt.image,
                    "version": "latest" if wt.image_version == NEWEST else wt.image_version,
                },
                "features": list(wt.features),
            }
        )
    return out


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"worker_slot_profile": worker_slot_profile, "worker_layout_mix": worker_layout_mix}
