# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: draining and removing slots (``state=draining`` and ``absent``).

A drain request is recorded in the slot's metadata. Removal refuses a slot that may still
run jobs (unless ``force``), then removes the domain, its overlay and its seed ISO. The
volumes are found and deleted through libvirt's storage API, so a remote ``uri`` removes
them on the hypervisor, not on the machine running the module; the console log (outside the
pools) through a transient pool over its directory.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils import _guest_agent, _mjf
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import DRAINED, EXPIRED, FAILED, STOPPED
from ansible_collections.batchvirt.farm.plugins.module_utils._logtail import last_lines, tail
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_claim import UNCHANGED, move_shutdowntime
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import lvm_remove_commands
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_end import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    end_domains,
    end_reason,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import (
    CONSOLE_LOG_DIR,
    DEFAULT_POOL,
    SlotError,
    SlotHost,
    SlotResult,
    read_metadata,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata, format_time, to_xml


def drain(host: SlotHost, requests: Sequence[Dict[str, Any]], reason: str) -> List[SlotResult]:
    """Record an operator drain request (with ``reason``) in each slot's metadata, once."""
    if not reason:
        raise SlotError("state=draining needs drain_reason (why the slot is drained)", "drain_reason")
    results = []
    for req in requests:
        name = req["name"]
        dom = host.domains.get(name)
        if dom is None:
            raise SlotError(f"slot {name} does not exist on this hypervisor: nothing to drain", "name")
        current = read_metadata(dom)
        if current is None:
            raise SlotError(f"domain {name} is not a batchvirt slot (no slot metadata)", "name")
        active = bool(dom.isActive())
        result = SlotResult(name)
        meta = current
        if not current.drain_requested or current.drain_reason != reason:
            meta = current.request_drain(reason, host.now)
            result.actions.append("record drain request")
            result.changed = True
            if host.diff_mode:
                result.diff = {
                    "before_header": f"{name} (slot metadata)",
                    "after_header": f"{name} (slot metadata)",
                    "before": to_xml(current) + "\n",
                    "after": to_xml(meta) + "\n",
                }
            if not host.check_mode:
                host.set_metadata(dom, meta, active)
        result.result = host.describe_existing(name, meta, active)
        result.result.update(_publish_early_drain(dom, current, meta, active, req, host.check_mode))
        results.append(result)
    return results


def _publish_early_drain(
    dom: Any, before: SlotMetadata, meta: SlotMetadata, active: bool, req: Dict[str, Any], check_mode: bool
) -> Dict[str, Any]:
    """Move ``$MACHINEFEATURES/shutdowntime`` inside the running VM when this request drains it
    before its planned drain time (the same rule and report as ``slot_drain``)."""
    report: Dict[str, Any] = {"machinefeatures": UNCHANGED, "shutdowntime": None}
    when = _mjf.shutdowntime(meta.drain_at, meta.deadline, meta.drain_requested_at)
    moved = when != _mjf.shutdowntime(before.drain_at, before.deadline, before.drain_requested_at)
    if not active or not moved:
        return report
    options = req.get("machine_features") or {}
    status, seconds = move_shutdowntime(
        dom,
        meta,
        options.get("path") or _mjf.DEFAULT_PATH,
        _guest_agent.DEFAULT_TIMEOUT,
        options.get("enabled", True) is not False,
        check_mode,
    )
    report.update(machinefeatures=status, shutdowntime=seconds)
    return report


TAIL_BYTES = 4096


def console_tail(path: str, lines: int = 15) -> List[str]:
    """The last non-empty lines of a slot's console log (what the guest said as it ended)."""
    return last_lines(tail(path, TAIL_BYTES), lines)


def _slots_to_remove(host: SlotHost, requests: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], Any, Any]]:
    entries = []
    for req in requests:
        name = req["name"]
        dom = host.domains.get(name)
        meta = None
        if dom is not None:
            meta = read_metadata(dom)
            if meta is None:
                raise SlotError(f"domain {name} is not a batchvirt slot (no slot metadata): not removing it", "name")
        entries.append((req, dom, meta))
    return entries


def remove(
    host: SlotHost,
    requests: Sequence[Dict[str, Any]],
    force: bool,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    requested_reason: Optional[int] = None,
) -> List[SlotResult]:
    """Remove slots that no longer run jobs (or any, with ``force``), their volumes and logs.

    Every slot is checked before any is touched; running ones get an ACPI shutdown and
    ``shutdown_timeout`` seconds (all at once) before what still runs is destroyed.
    """
    entries = _slots_to_remove(host, requests)
    views = host.batch_views([m for _r, _d, m in entries if m is not None]) if not force else {}
    states = {}
    for req, dom, meta in entries:
        if dom is not None and meta is not None:
            states[req["name"]] = _removable_state(host, dom, meta, views.get(meta.node_name), force)
    running = [(req["name"], dom) for req, dom, meta in entries if req["name"] in states and bool(dom.isActive())]
    ends: Dict[str, Dict[str, Any]] = {}
    if running and not host.check_mode:
        for (name, _dom), how in zip(running, end_domains([d for _n, d in running], shutdown_timeout)):
            ends[name] = how
    elif running:
        ends = {name: {"how": "acpi" if shutdown_timeout > 0 else "destroyed", "seconds": 0} for name, _d in running}
    with contextlib.ExitStack() as stack:
        logs = None  # with a remote uri: one transient pool over the console logs for the call
        if not host.local and not host.check_mode and entries:
            logs = stack.enter_context(host.directory_pool(CONSOLE_LOG_DIR))
        return [_remove_one(host, entry, states, ends, requested_reason, logs) for entry in entries]


def _remove_one(
    host: SlotHost,
    entry: Tuple[Dict[str, Any], Any, Optional[SlotMetadata]],
    states: Dict[str, str],
    ends: Dict[str, Dict[str, Any]],
    requested_reason: Optional[int],
    logs: Any,
) -> SlotResult:
    """Remove one slot checked by :func:`remove`: its domain, volumes and console log."""
    req, dom, meta = entry
    name = req["name"]
    result = SlotResult(name)
    before_xml = dom.XMLDesc(0) if dom is not None and host.diff_mode else ""
    if dom is not None and meta is not None:
        _remove_domain(host, dom, meta, states[name], result)
        end = dict(ends.get(name) or {"how": "stopped", "seconds": 0})
        end.update(end_reason(states[name], requested_reason))
        result.result["end"] = end
    log = os.path.join(CONSOLE_LOG_DIR, f"{name}-console.log")
    if name in ends and host.local and not host.check_mode:
        result.result["end"]["console_tail"] = console_tail(log)
    _remove_volumes(host, req, name, result, lvm=dom is not None)
    if host.check_mode:
        pass
    elif host.local:
        if os.path.exists(log):
            os.unlink(log)
    else:  # the console log is on the hypervisor: read its tail and delete it through libvirt
        data = host.remove_pool_file(logs, os.path.basename(log), TAIL_BYTES if name in ends else 0)
        if name in ends:
            result.result["end"]["console_tail"] = last_lines(data.decode("utf-8", "replace"))
    result.changed = bool(result.actions)
    if result.changed and host.diff_mode and dom is not None:
        result.diff = {"before_header": name, "after_header": f"{name} (absent)", "before": before_xml, "after": ""}
    result.result.setdefault("name", name)
    return result


def _domain_error(dom: Any) -> bool:
    """libvirt reports the domain crashed, or paused on an error (the lifecycle's ``failed``)."""
    try:
        state, reason = dom.state()
    except libvirt.libvirtError:
        return False
    return state == libvirt.VIR_DOMAIN_CRASHED or (
        state == libvirt.VIR_DOMAIN_PAUSED
        and reason in (libvirt.VIR_DOMAIN_PAUSED_IOERROR, libvirt.VIR_DOMAIN_PAUSED_CRASHED)
    )


def _removable_state(host: SlotHost, dom: Any, meta: SlotMetadata, view: Any, force: bool) -> str:
    """The slot's lifecycle state, or SlotError when it may still run jobs and not ``force``.

    Removable without ``force``: stopped, drained and expired slots, and a ``failed`` slot on
    whose node the batch system shows no job (a crashed domain, or a node that is down, not
    responding or never registered: nothing the batch system knows of runs there). The
    failure is judged without the inventory's graces (``boot_grace`` and ``health_grace`` decide
    when recycle.yml acts, not whether a job can be lost): a node that is unhealthy right now and
    runs no job is removable.
    """
    active = bool(dom.isActive())
    domain_error = active and _domain_error(dom)
    state = meta.lifecycle(host.now, active, view, domain_error=domain_error)
    if force or state in (STOPPED, DRAINED, EXPIRED):
        return state
    failed = meta.lifecycle(host.now, active, view, domain_error=domain_error, boot_grace=0, health_grace=0)
    if failed == FAILED and (domain_error or (view is not None and view.jobs == 0)):
        return FAILED
    raise SlotError(
        "slot %s is %s (drain_at %s, deadline %s): it may run jobs; drain it (state=draining) and "
        "wait until it is drained, stop it, or pass force=true"
        % (dom.name(), state, format_time(meta.drain_at), format_time(meta.deadline)),
        "force",
    )


def _remove_domain(host: SlotHost, dom: Any, meta: SlotMetadata, state: str, result: SlotResult) -> None:
    name = result.name
    result.actions.append(f"remove domain (was {state})")
    if not host.check_mode:
        if dom.isActive():  # ended by end_domains; a guest that restarted itself meanwhile
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        host.domains.pop(name, None)
    result.result = host.describe_existing(name, meta, False)
    result.result["lifecycle_before"] = state


def _remove_volumes(host: SlotHost, req: Dict[str, Any], name: str, result: SlotResult, lvm: bool) -> None:
    """The overlay and the seed ISO, as libvirt sees the pool on the hypervisor."""
    pool, pool_dir = host.pool(req.get("pool") or DEFAULT_POOL)
    host.refresh(pool)  # files made or removed behind libvirt's back
    for volume, what in ((f"{name}.qcow2", "overlay"), (f"{name}-seed.iso", "seed ISO")):
        vol: Optional[Any] = host.volume(pool, volume)
        path = os.path.join(pool_dir, volume)
        if vol is None and not (host.local and os.path.exists(path)):
            continue
        result.actions.append(f"delete {what}")
        if not host.check_mode:
            host.delete_volume(pool, path)
    overlay = req.get("overlay") or {}
    if overlay.get("type") == "lvm" and lvm:
        result.actions.append("remove LVM snapshot")
        if not host.check_mode:
            for argv in lvm_remove_commands(overlay["volume_group"], name):
                host.run(argv)
