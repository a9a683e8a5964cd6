# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: drain ownership of slots (which operation owns a slot's drain).

A lifecycle play that drains a slot records in the slot's metadata who asked (``rolling_update``,
``recycle``, ``rebalance``, ``operator``), why, when, which run (``operation``: its operations
lock token) and until when that ownership holds if the run never comes back (``until``: the
lock's expiry). Another operation then leaves the slot alone: a claim is refused while a live
rolling update or rebalance owns the slot. The check reads the metadata from libvirt at the
moment of the claim, never an inventory snapshot.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils import _guest_agent, _mjf
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import load_slot, write_metadata
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    DRAIN_OWNERS,
    SlotMetadata,
    SlotMetadataError,
    to_xml,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time

UNCHANGED = "unchanged"  # shutdowntime does not move (no early drain, or nothing changed)
SKIPPED = "skipped"  # it would move, but check mode or machine_features_update=false


class SlotClaimError(FarmError):
    """A claim that cannot be made: unknown slot, bad input, owned by another live operation."""


@dataclass
class ClaimResult:
    name: str
    claimed: bool = False
    changed: bool = False
    drain: Dict[str, Any] = field(default_factory=dict)
    msg: str = ""
    diff: Optional[Dict[str, str]] = None
    meta: Optional[SlotMetadata] = None  # the metadata to write when changed
    # $MACHINEFEATURES/shutdowntime inside the VM: what happened to it and the time it should show
    machinefeatures: str = UNCHANGED
    shutdowntime: Optional[int] = None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "claimed": self.claimed,
            "changed": self.changed,
            "drain": self.drain,
            "msg": self.msg,
            "machinefeatures": self.machinefeatures,
            "shutdowntime": self.shutdowntime,
        }


def owner_text(meta: SlotMetadata) -> str:
    """Who owns a slot's drain, for a person."""
    text = meta.drain_owner or "operator"
    if meta.drain_operation:
        text += " (operation %s)" % meta.drain_operation
    if meta.drain_reason:
        text += ": %s" % meta.drain_reason
    if meta.drain_until:
        text += ", until %s" % format_time(meta.drain_until)
    return text


def plan_claim(
    meta: SlotMetadata,
    state: str,
    owner: str,
    operation: str,
    reason: str,
    until: Optional[datetime.datetime],
    now: datetime.datetime,
    force: bool = False,
) -> ClaimResult:
    """What a claim (``state=requested``) or a release (``state=cleared``) does to one slot's
    metadata; ``ClaimResult.drain`` is the drain record after it. Pure: no libvirt."""
    result = ClaimResult(meta.name)
    if state == "requested":
        if meta.drain_owned_by_other(operation, now) and not force:
            result.drain = meta.to_dict()["drain"]
            result.msg = "left alone: owned by " + owner_text(meta)
            return result
        new = meta.request_drain(reason, now, owner, operation, until)
        result.claimed = True
    else:
        if not meta.drain_requested:
            result.claimed = False
            result.drain = meta.to_dict()["drain"]
            result.msg = "no drain request to clear"
            return result
        if meta.drain_operation != operation and not force:
            raise SlotClaimError(
                f"slot {meta.name}: refusing to clear a drain this operation does not own: owned by "
                + owner_text(meta)
                + "; clear it with force=true if you know that drain is over",
                "operation",
            )
        new = meta.clear_drain()
    result.changed = new != meta
    result.drain = new.to_dict()["drain"]
    result.msg = "drain recorded" if state == "requested" else "drain cleared"
    if result.changed:
        result.diff = {
            "before_header": f"{meta.name} (slot metadata)",
            "after_header": f"{meta.name} (slot metadata)",
            "before": to_xml(meta) + "\n",
            "after": to_xml(new) + "\n",
        }
    result.meta = new
    return result


def shutdowntime_target(result: ClaimResult, state: str) -> Optional[SlotMetadata]:
    """The metadata whose shutdowntime the VM should show after this claim, or None when the file
    does not move: a claim that drains early moves it forward, a release moves it back."""
    if result.meta is None:
        return None
    meta = result.meta
    if state == "requested":
        if not result.claimed:
            return None
        when = _mjf.shutdowntime(meta.drain_at, meta.deadline, meta.drain_requested_at)
        return meta if when < meta.deadline else None
    return meta if result.changed else None


def publish_shutdowntime(
    dom: Any, result: ClaimResult, state: str, path: str, timeout: int, enabled: bool, check_mode: bool
) -> None:
    """Rewrite ``<path>/shutdowntime`` in the running VM when this claim moves it (best effort)."""
    meta = shutdowntime_target(result, state)
    if meta is None:
        return
    result.machinefeatures, result.shutdowntime = move_shutdowntime(dom, meta, path, timeout, enabled, check_mode)


def move_shutdowntime(
    dom: Any, meta: SlotMetadata, path: str, timeout: int, enabled: bool, check_mode: bool
) -> Tuple[str, int]:
    """Rewrite ``<path>/shutdowntime`` in the running VM with the time ``meta`` gives (its deadline,
    or earlier when its drain was requested early); returns (what happened, the time in Unix
    seconds). Best effort: a guest without the agent or the file is reported, never an error."""
    when = _mjf.shutdowntime(meta.drain_at, meta.deadline, meta.drain_requested_at)
    if check_mode or not enabled:
        return SKIPPED, int(when.timestamp())
    target = path.rstrip("/") + "/shutdowntime"
    return _guest_agent.replace_file(dom, target, _mjf.shutdowntime_content(when), timeout), int(when.timestamp())


def run_claims(
    conn: Any,
    names: Sequence[str],
    state: str,
    owner: str,
    operation: str,
    reason: str,
    until: str,
    now: datetime.datetime,
    force: bool = False,
    check_mode: bool = False,
    mjf_path: str = _mjf.DEFAULT_PATH,
    mjf_update: bool = True,
    agent_timeout: int = _guest_agent.DEFAULT_TIMEOUT,
) -> List[ClaimResult]:
    """Claim or clear the drain of each named slot on the hypervisor behind ``conn``, and move
    ``$MACHINEFEATURES/shutdowntime`` inside each VM whose drain starts early (or is cleared)."""
    if owner not in DRAIN_OWNERS:
        raise SlotClaimError("owner must be one of %s, got %r" % (", ".join(DRAIN_OWNERS), owner), "owner")
    if state == "requested" and not reason:
        raise SlotClaimError("state=requested needs a reason (why the slot is drained)", "reason")
    until_time = parse_time(until, "until", error=SlotClaimError) if until else None
    results = []
    for name in names:
        dom, meta = load_slot(conn, name, SlotClaimError)
        result = plan_claim(meta, state, owner, operation, reason, until_time, now, force)
        if result.changed and result.meta is not None and not check_mode:
            write_metadata(dom, result.meta)
        publish_shutdowntime(dom, result, state, mjf_path, agent_timeout, mjf_update, check_mode)
        results.append(result)
    return results


def run_module(connect: Any, params: Dict[str, Any], check_mode: bool, diff_mode: bool) -> Dict[str, Any]:
    """The ``slot_drain`` module's work; ``connect(uri)`` opens libvirt (the module passes it)."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_clock import farm_now

    try:
        now = farm_now()
    except SlotMetadataError as exc:
        raise SlotClaimError(str(exc), "BATCHVIRT_FARM_NOW") from None
    conn = connect(params["uri"])
    try:
        results = run_claims(
            conn,
            params["name"],
            params["state"],
            params["owner"],
            params.get("operation") or "",
            params.get("reason") or "",
            params.get("expires_at") or "",
            now,
            force=bool(params.get("force")),
            check_mode=check_mode,
            mjf_path=params.get("machine_features_path") or _mjf.DEFAULT_PATH,
            mjf_update=params.get("machine_features_update", True) is not False,
            agent_timeout=int(params.get("agent_timeout") or _guest_agent.DEFAULT_TIMEOUT),
        )
    finally:
        conn.close()
    owned = {r.name: r.drain for r in results if params["state"] == "requested" and not r.claimed}
    out: Dict[str, Any] = {
        "changed": any(r.changed for r in results),
        "slots": [r.as_dict() for r in results],
        "claimed": params["state"] == "requested" and not owned,
        "owned": owned,
        "msg": "; ".join(f"{r.name}: {r.msg}" for r in results),
    }
    diffs = [r.diff for r in results if r.diff]
    if diff_mode and diffs:
        out["diff"] = diffs[0] if len(diffs) == 1 else diffs
    if owned and params.get("on_owned") == "fail":
        out["failed"] = True
    return out
