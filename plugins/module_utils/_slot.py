# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the engine of the ``slot`` module (one slot or many in one call).

For each slot: read what exists (domain, metadata, overlay, seed ISO), compute the
difference with what is wanted, act only outside check mode, and report the difference as
a diff. Everything is validated before anything is created. The steps live in their own
files: ``_slot_plan`` (parameters to typed plans), ``_slot_create`` (new slots and starts),
``_slot_repair`` (existing slots on a rerun), ``_slot_remove`` (drain and removal).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_create import SlotCreator
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_end import DEFAULT_SHUTDOWN_TIMEOUT
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import (
    RunCommand,
    SlotError,
    SlotHost,
    SlotResult,
    is_local,
    metadata_for_libvirt,
    read_metadata,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_image import (
    ImageSource,
    image_guard,
    image_virtual_size,
    resolve_image,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import (
    DEFAULT_BLOCK_RECORD,
    BlockRecord,
    LayoutError,
    choose_block,
    read_block_record,
    write_block_record,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_plan import (
    Planner,
    SlotPlan,
    check_foreign,
    check_unique_plans,
    expand_requests,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_remove import drain, remove
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_repair import update_existing

__all__ = [
    "ImageSource",
    "SlotError",
    "SlotManager",
    "SlotRunError",
    "expand_requests",
    "image_virtual_size",
    "is_local",
    "metadata_for_libvirt",
    "read_metadata",
    "resolve_image",
    "run",
    "run_slot_module",
]
_is_local = is_local  # the former name


class SlotRunError(SlotError):
    """Some slots of a call failed after others were made: ``result`` is the module result
    with every slot (the ones made, and the failed ones with their ``msg``)."""

    def __init__(self, message: str, option: str = "", result: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message, option)
        self.result: Dict[str, Any] = result or {}


class SlotManager:
    """Carries out slot requests on one libvirt connection (one module call)."""

    def __init__(
        self,
        conn: Any,
        now: datetime.datetime,
        check_mode: bool = False,
        diff_mode: bool = False,
        run_command: Optional[RunCommand] = None,
        batch_adapter: Optional[Callable[[str], Any]] = None,
        local: bool = True,
        start_concurrency: int = 4,
    ) -> None:
        self.host = SlotHost(conn, now, check_mode, diff_mode, run_command, batch_adapter, local)
        self.planner = Planner(self.host)
        self.creator = SlotCreator(self.host, start_concurrency)
        self.failures: Dict[str, str] = {}

    @property
    def warnings(self) -> List[str]:
        return self.host.warnings

    def plan(self, req: Dict[str, Any]) -> SlotPlan:
        return self.planner.plan(req)

    def ensure(self, requests: Sequence[Dict[str, Any]], state: str) -> List[SlotResult]:
        """``state=present|running``: create, update, repair and start; failures per slot go to
        :attr:`failures` once other slots were made (else SlotError, nothing made)."""
        plans = [self.planner.plan(r) for r in requests]
        check_unique_plans(plans)
        check_foreign(self.host, plans)
        results: List[SlotResult] = []
        try:
            with self._guard(plans):
                for plan in plans:
                    dom = self.host.domains.get(plan.name)
                    if dom is None:
                        results.append(self.creator.create(plan, state))
                    else:
                        results.append(update_existing(self.creator, plan, dom, state))
        except SlotError as exc:
            if not any(r.changed for r in results) or self.host.check_mode:
                raise
            name = plans[len(results)].name
            self.failures[name] = str(exc)
            results.append(SlotResult(name, result={"name": name, "running": False}))
        self.failures.update(self.creator.start_pending())
        for result in results:
            if result.name in self.failures:
                result.error = self.failures[result.name]
                result.result["running"] = False
        return results

    def _guard(self, plans: Sequence[SlotPlan]) -> ContextManager[None]:
        """The image cache lock, held while overlays are made on cached images."""
        if self.host.check_mode:
            return contextlib.nullcontext()
        making = [p.image for p in plans if self._makes_overlay(p)]
        return image_guard(making) if making else contextlib.nullcontext()

    def _makes_overlay(self, plan: SlotPlan) -> bool:
        if plan.overlay.is_lvm or not plan.image.cache_root:
            return False
        if plan.name not in self.host.domains:
            return True
        return self.host.local and not os.path.exists(plan.spec.overlay_path)

    def drain(self, requests: Sequence[Dict[str, Any]], reason: str) -> List[SlotResult]:
        return drain(self.host, requests, reason)

    def remove(
        self,
        requests: Sequence[Dict[str, Any]],
        force: bool,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        end_reason: Optional[int] = None,
    ) -> List[SlotResult]:
        return remove(self.host, requests, force, shutdown_timeout, end_reason)


def host_capacity_from_libvirt(conn: Any, layout_spec: Dict[str, Any], domain_type: str, now: datetime.datetime) -> Any:
    """The host's capacity (``_capacity.HostCapacity``) exactly as ``hypervisor_info`` reports it.

    Host memory, the existing domains and the reservation recorded by the hypervisor role
    (``/etc/batchvirt/hypervisor.json``) come from ``_hypervisor``; the layout's own options
    override the reservation and the QEMU overhead.
    """
    from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import (
        DEFAULT_QEMU_OVERHEAD_MIB,
        DEFAULT_RESERVED_CPUS,
        DEFAULT_RESERVED_MEMORY_MIB,
        CapacityError,
        HostCapacity,
        qemu_overhead_for,
    )
    from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import DEFAULT_CONFIG_PATH, HypervisorError
    from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor_info import (
        domain_usages,
        host_memory_mib,
        read_host_config,
    )

    try:
        config = read_host_config(DEFAULT_CONFIG_PATH)
    except HypervisorError as exc:
        raise SlotError(f"layout: {exc}", "layout") from None

    def setting(key: str, default: int) -> int:
        if layout_spec.get(key) is not None:
            return int(layout_spec[key])
        return int(config.get(key, default))

    usages, _slots = domain_usages(conn, now)
    overhead = qemu_overhead_for(domain_type, setting("qemu_overhead_mib", DEFAULT_QEMU_OVERHEAD_MIB))
    try:
        return HostCapacity(
            cpus=int(conn.getInfo()[2]),
            memory_mib=host_memory_mib(conn),
            reserved_cpus=setting("reserved_cpus", DEFAULT_RESERVED_CPUS),
            reserved_memory_mib=setting("reserved_memory_mib", DEFAULT_RESERVED_MEMORY_MIB),
            qemu_overhead_mib=overhead,
            domains=tuple(usages),
        )
    except CapacityError as exc:
        raise SlotError(f"layout: {exc}", "layout." + exc.option) from None


def _address_block(params: Dict[str, Any]) -> Optional[BlockRecord]:
    """The hypervisor's address block: the recorded one, else ``layout.index`` (to record)."""
    spec = params.get("layout") or {}
    if not spec.get("address_pool"):
        return None
    path = spec.get("block_record") or DEFAULT_BLOCK_RECORD
    try:
        return choose_block(
            read_block_record(path), params["hypervisor"], spec.get("index") or 0, spec.get("stride") or 32
        )
    except LayoutError as exc:
        raise SlotError(f"layout: {exc}", "layout." + exc.option) from None


def run(module: Any, conn: Any, now: datetime.datetime) -> Dict[str, Any]:
    """The ``slot`` module's work: returns the result dict (raises SlotError)."""
    params = dict(module.params)
    if not params.get("hypervisor"):
        params["hypervisor"] = conn.getHostname().split(".")[0]

    def adapter(system: str) -> Any:
        from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter, module_runner

        return get_adapter(system, runner=module_runner(module))

    manager = SlotManager(
        conn,
        now,
        check_mode=module.check_mode,
        diff_mode=module._diff,
        run_command=module.run_command,
        batch_adapter=adapter if (params.get("batch") or {}).get("system") else None,
        local=is_local(params.get("uri") or ""),
        start_concurrency=params.get("start_concurrency") or 4,
    )
    host = block = None
    if params.get("layout") is not None:
        host = host_capacity_from_libvirt(
            conn, params["layout"], manager.host.domain_type(params.get("domain_type")), now
        )
        block = _address_block(params)
    try:
        requests = expand_requests(params, host, block.index if block else None)
    except LayoutError as exc:
        raise SlotError(f"layout: {exc}", "layout." + exc.option) from None
    if block is not None and block.warning:
        manager.warnings.append(block.warning)
    state = params["state"]
    if state == "resolved":  # read-only: the image a new slot would get, nothing else
        return _resolved(manager, requests, bool(params.get("name")))
    if state in ("present", "running"):
        results = manager.ensure(requests, state)
        if block is not None and not block.recorded and not module.check_mode and not manager.failures:
            write_block_record(params["layout"].get("block_record") or DEFAULT_BLOCK_RECORD, block, now)
    elif state == "draining":
        results = manager.drain(requests, params.get("drain_reason") or "")
    else:
        timeout = params.get("shutdown_timeout")
        if timeout is None:
            timeout = DEFAULT_SHUTDOWN_TIMEOUT
        if timeout < 0:
            raise SlotError(f"shutdown_timeout must be zero or more seconds, got {timeout}", "shutdown_timeout")
        results = manager.remove(requests, bool(params.get("force")), timeout, params.get("end_reason"))
    out = _result(params, results, manager.warnings)
    if manager.failures:
        raise SlotRunError("; ".join(manager.failures.values()), "name", out)
    return out


def _resolved(manager: SlotManager, requests: Sequence[Dict[str, Any]], one: bool) -> Dict[str, Any]:
    """``state=resolved``: the image each slot would be created on (``latest`` with ``image.avoid``
    resolved by the same rule as a creation); changes nothing, raises SlotError as a creation would."""
    slots = []
    for req in requests:
        image = manager.planner.image(req.get("image") or {})
        described = {"identifier": image.identifier, "version": image.version, "path": image.path}
        slots.append({"name": req["name"], "changed": False, "actions": [], "image": described})
    out: Dict[str, Any] = {"changed": False, "slots": slots}
    if one and slots:
        out.update(name=slots[0]["name"], image=slots[0]["image"])
    return out


def _result(params: Dict[str, Any], results: List[SlotResult], warnings: List[str]) -> Dict[str, Any]:
    slots = []
    for r in results:
        entry = dict(r.result, changed=r.changed, actions=r.actions)
        if r.error:
            entry.update(failed=True, msg=r.error)
        slots.append(entry)
    out: Dict[str, Any] = {"changed": any(r.changed for r in results), "slots": slots}
    diffs = [r.diff for r in results if r.diff]
    if diffs:
        out["diff"] = diffs[0] if len(diffs) == 1 else diffs
    if params.get("name") and results:
        out.update({k: v for k, v in results[0].result.items() if k != "changed"})
        out["actions"] = results[0].actions
    if warnings:
        out["warnings"] = warnings
    return out


def run_slot_module(module: Any) -> Dict[str, Any]:
    """The ``slot`` module: its clock (``BATCHVIRT_FARM_NOW``), its connection, its work."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_clock import farm_now

    now = farm_now()
    conn = connect(module.params["uri"])
    try:
        return run(module, conn, now)
    finally:
        conn.close()
