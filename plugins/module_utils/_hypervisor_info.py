# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: what ``hypervisor_info`` reports (host facts, capacity, pools,
networks, slots) and the host record the hypervisor role writes."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import (
    DEFAULT_RESERVED_CPUS,
    DEFAULT_RESERVED_MEMORY_MIB,
    CapacityError,
    DomainUsage,
    HostCapacity,
    qemu_overhead_for,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import (
    DEFAULT_CONFIG_PATH,
    HypervisorError,
    libvirt,
    network_summary_from_xml,
    pool_info,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    DOMAIN_STATE_NAMES,
    default_domain_type,
    host_domain_types,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow

_DOMAIN_STATES = DOMAIN_STATE_NAMES


def network_info(net: Any) -> Dict[str, Any]:
    summary = network_summary_from_xml(net.XMLDesc(0))
    summary.update(active=bool(net.isActive()), autostart=bool(net.autostart()))
    return summary


def read_host_config(path: str) -> Dict[str, Any]:
    """The hypervisor role's record (reservation, network mode, pools); {} when absent."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise HypervisorError(f"config_path: cannot read {path}: {exc}", "config_path") from None
    if not isinstance(data, dict):
        raise HypervisorError(f"config_path: {path} does not hold a JSON object", "config_path")
    return data


def host_memory_mib(conn: Any) -> int:
    """Host memory in MiB as the kernel counts it (``/proc/meminfo`` MemTotal).

    ``getInfo()`` sums NUMA node memory, which some virtualised hosts report short of the
    real total; the all-cells memory statistics match ``free`` and Ansible's facts.
    """
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        if stats.get("total"):
            return int(stats["total"]) // 1024
    except libvirt.libvirtError:
        pass
    return int(conn.getInfo()[1])


def domain_usages(conn: Any, now: datetime.datetime) -> Tuple[List[DomainUsage], List[Dict[str, Any]]]:
    """Every domain's usage, and the collection's slots with their lifecycle state."""
    # read_metadata puts back the namespace virDomain.metadata() strips
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import read_metadata
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadataError

    usages: List[DomainUsage] = []
    slots: List[Dict[str, Any]] = []
    for dom in conn.listAllDomains(0):
        state, max_kib, _mem, vcpus, _cpu_time = dom.info()
        active = bool(dom.isActive())
        meta: Any = None
        error = ""
        try:
            meta = read_metadata(dom)
        except SlotMetadataError as exc:
            error = str(exc)
        is_slot = meta is not None or bool(error)
        usages.append(
            DomainUsage(
                name=dom.name(),
                memory_mib=int(max_kib) // 1024,
                vcpus=int(vcpus),
                active=active,
                autostart=bool(dom.autostart()),
                slot=is_slot,
            )
        )
        if not is_slot:
            continue
        slot: Dict[str, Any] = {"domain": dom.name(), "state": _DOMAIN_STATES.get(state, str(state))}
        if meta is None:
            slot.update(name=dom.name(), lifecycle=None, error=error)
        else:
            slot.update(
                name=meta.name,
                lifecycle=meta.lifecycle(now, active),
                image=meta.image_identifier,
                image_version=meta.image_version,
                drain_at=meta.to_dict()["drain_at"],
                deadline=meta.to_dict()["deadline"],
            )
        slots.append(slot)
    return usages, slots


def _count_by(items: List[Dict[str, Any]], key: str) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for item in items:
        value = str(item.get(key) or "unreadable")
        counts[value] = counts.get(value, 0) + 1
    return counts


def _int_setting(option: Optional[int], config: Dict[str, Any], key: str, default: int) -> Tuple[int, str]:
    if option is not None:
        return int(option), "option"
    if key in config:
        return int(config[key]), "config"
    return default, "default"


def gather_info(
    conn: Any,
    config_path: str = DEFAULT_CONFIG_PATH,
    reserved_memory_mib: Optional[int] = None,
    reserved_cpus: Optional[int] = None,
    qemu_overhead_mib: Optional[int] = None,
    overcommit_cpu: float = 1.0,
    plan: Optional[Dict[str, Any]] = None,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """Everything ``hypervisor_info`` returns."""
    now = now or utcnow()
    config = read_host_config(config_path)
    caps = conn.getCapabilities()
    domain_type = default_domain_type(caps)
    info = conn.getInfo()
    cpus = int(info[2])
    memory = host_memory_mib(conn)
    res_mem, res_mem_src = _int_setting(reserved_memory_mib, config, "reserved_memory_mib", DEFAULT_RESERVED_MEMORY_MIB)
    res_cpu, res_cpu_src = _int_setting(reserved_cpus, config, "reserved_cpus", DEFAULT_RESERVED_CPUS)
    overhead_default = qemu_overhead_for(domain_type, int(config.get("qemu_overhead_mib", 200)))
    overhead, _src = _int_setting(qemu_overhead_mib, {}, "", overhead_default)
    usages, slots = domain_usages(conn, now)
    try:
        capacity = HostCapacity(cpus, memory, res_cpu, res_mem, overhead, tuple(usages))
    except CapacityError as exc:
        raise HypervisorError(str(exc), exc.option) from None
    result: Dict[str, Any] = {
        "hostname": conn.getHostname(),
        "cpu_model": info[0],
        "cpus": cpus,
        "memory_mib": memory,
        "reservation": {
            "memory_mib": res_mem,
            "cpus": res_cpu,
            "source": res_mem_src if res_mem_src == res_cpu_src else f"{res_mem_src}/{res_cpu_src}",
        },
        "domain_types": host_domain_types(caps),
        "default_domain_type": domain_type,
        "capacity": capacity.to_dict(overcommit_cpu),
        "domains": [u.to_dict() for u in usages],
        "pools": [pool_info(p) for p in conn.listAllStoragePools(0)],
        "networks": [network_info(n) for n in conn.listAllNetworks(0)],
        "network_mode": config.get("network_mode", ""),
        "slots": slots,
        "slots_by_lifecycle": _count_by(slots, "lifecycle"),
        "config": config,
    }
    if plan:
        try:
            verdict = capacity.check_plan(
                int(plan["count"]), int(plan["memory_mib"]), int(plan["vcpus"]), overcommit_cpu
            )
        except CapacityError as exc:
            raise HypervisorError(f"plan.{exc.option}: {exc}", "plan") from None
        result["plan"] = verdict.to_dict()
    return result


def run_info_module(module: Any) -> Dict[str, Any]:
    """The ``hypervisor_info`` module: read-only, never changes anything."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    p = module.params
    conn = connect(p["uri"], readonly=True)
    try:
        result = gather_info(
            conn,
            config_path=p["config_path"],
            reserved_memory_mib=p["reserved_memory_mib"],
            reserved_cpus=p["reserved_cpus"],
            qemu_overhead_mib=p["qemu_overhead_mib"],
            overcommit_cpu=p["overcommit_cpu"],
            plan=p["plan"],
        )
    finally:
        conn.close()
    return dict(result, changed=False)
