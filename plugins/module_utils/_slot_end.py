# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: how a slot's life ends (ACPI shutdown, grace, destroy) and why.

The reason codes follow Vac's shutdown messages (hundreds: the class of the reason), so a
pilot framework or an operator reading a result sees the same vocabulary as on a Vac site.
The reason is derived from the slot's lifecycle state when it is removed, unless the caller
gives one (the ``slot`` module's ``end_reason``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import (
    DRAINED,
    DRAINING,
    EXPIRED,
    FAILED,
    STOPPED,
)

# The one table of end reasons (documented in docs/slots.md, "The end of a life").
END_REASONS: Dict[int, str] = {
    100: "Shutdown as requested by the VM's host/hypervisor",
    200: "Intended work completed ('nothing to do')",
    300: "No more work",
    400: "Failed to start",
    500: "Lost heartbeat / failed",
    600: "Deadline reached",
}
REQUESTED, COMPLETED, NO_MORE_WORK, FAILED_TO_START, LOST_HEARTBEAT, DEADLINE = 100, 200, 300, 400, 500, 600

# Lifecycle state at removal -> reason; any other state (removed with force) is REQUESTED.
_REASON_BY_STATE = {
    EXPIRED: DEADLINE,
    FAILED: LOST_HEARTBEAT,
    DRAINED: NO_MORE_WORK,
    DRAINING: NO_MORE_WORK,
    STOPPED: COMPLETED,
}

DEFAULT_SHUTDOWN_TIMEOUT = 60  # seconds the guest has to power off after the ACPI request
POLL_INTERVAL = 0.5


def end_reason(state: str, requested: Optional[int] = None) -> Dict[str, Any]:
    """The reason code and text of a slot removed in lifecycle ``state`` (or the caller's)."""
    code = requested if requested is not None else _REASON_BY_STATE.get(state, REQUESTED)
    if code not in END_REASONS:
        raise ValueError(f"end_reason must be one of {', '.join(str(c) for c in END_REASONS)}, got {code}")
    return {"reason_code": code, "reason": f"{code} {END_REASONS[code]}"}


def _request_shutdown(dom: Any) -> bool:
    """Press the guest's ACPI power button; False when the hypervisor cannot."""
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        return True
    except libvirt.libvirtError:
        pass
    try:
        dom.shutdown()
        return True
    except libvirt.libvirtError:
        return False


def _active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:  # gone behind our back
        return False


def _destroy(dom: Any) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if _active(dom):  # not the race with the guest's own power-off
            raise


def end_domains(
    doms: Sequence[Any],
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> List[Dict[str, Any]]:
    """End running domains: ACPI shutdown to all at once, wait up to ``timeout`` seconds for
    each to stop, destroy what still runs. Per domain: ``how`` (``acpi``, ``destroyed`` or
    ``stopped`` when it was not running) and ``seconds`` waited."""
    start = clock()
    outcome: List[Dict[str, Any]] = []
    waiting = []
    for dom in doms:
        if not _active(dom):
            outcome.append({"how": "stopped", "seconds": 0})
            continue
        entry: Dict[str, Any] = {"how": "destroyed", "seconds": 0}
        outcome.append(entry)
        if timeout > 0 and _request_shutdown(dom):
            waiting.append((dom, entry))
        else:
            _destroy(dom)
    while waiting:
        still = []
        for dom, entry in waiting:
            if _active(dom):
                still.append((dom, entry))
            else:
                entry.update(how="acpi", seconds=round(clock() - start, 1))
        waiting = still
        if not waiting:
            break
        if clock() - start >= timeout:
            for dom, entry in waiting:
                entry["seconds"] = round(clock() - start, 1)
                _destroy(dom)
            break
        sleep(POLL_INTERVAL)
    return outcome
