# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the failure record and back-off of slots (the ``slot_health`` module).

recycle.yml replaces a ``failed`` slot. Each failed life is counted in the slot's metadata
(``<failures consecutive= at= image= until=>``, schema 3): the count is carried to the slot that
replaces it and cleared once that slot is ``active`` (registered and resumed). From
``threshold`` consecutive failures on, the failed slot is not re-created at once: its VM is shut
down and the domain, its disk and its metadata are kept (stopped, for a post-mortem) until
``backoff_until`` (:func:`_lifecycle.backoff_seconds`); recycle.yml leaves it alone until then.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_THRESHOLD,
    backoff_seconds,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._logtail import last_lines, tail
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import (
    CONSOLE_LOG_DIR,
    load_slot,
    write_metadata,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    SlotMetadata,
    SlotMetadataError,
    parse_time,
    to_xml,
)

DEFAULT_CONSOLE_LINES = 15
STATES = ("failed", "recorded", "healthy")


class SlotHealthError(FarmError):
    """A failure record that cannot be written: unknown slot, bad input."""


@dataclass
class HealthResult:
    name: str
    changed: bool = False
    left_alone: bool = False
    backoff: bool = False
    failures: Dict[str, Any] = field(default_factory=dict)
    end: Optional[Dict[str, Any]] = None
    console_tail: List[str] = field(default_factory=list)
    msg: str = ""
    diff: Optional[Dict[str, str]] = None

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "name": self.name,
            "changed": self.changed,
            "left_alone": self.left_alone,
            "backoff": self.backoff,
            "backoff_until": self.failures.get("backoff_until") if self.backoff else None,
            "failures": self.failures,
            "console_tail": self.console_tail,
            "msg": self.msg,
        }
        if self.end is not None:
            out["end"] = self.end
        return out


def image_label(meta: SlotMetadata) -> str:
    """How a failure record names the image version a life ran: ``<identifier>/<version>``."""
    return f"{meta.image_identifier}/{meta.image_version}"


def record_failure(
    meta: SlotMetadata,
    now: datetime.datetime,
    reason: str,
    threshold: int = DEFAULT_BACKOFF_THRESHOLD,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_MAX,
) -> SlotMetadata:
    """One more failed life: the count goes up by one and, from ``threshold`` on, the slot is in
    back-off for :func:`backoff_seconds` from ``now``. Pure."""
    consecutive = meta.failures + 1
    delay = backoff_seconds(consecutive, threshold, base, cap)
    until = now + datetime.timedelta(seconds=delay) if delay > 0 else None
    return meta.with_failures(consecutive, now, image_label(meta), reason or "failed", until)


def carry_failures(meta: SlotMetadata, record: Dict[str, Any]) -> SlotMetadata:
    """The failure record of the life a slot replaces, on the new slot (no back-off: the new life
    is the next try). Pure; ``record`` is a ``failures`` result or metadata ``failures`` dict."""
    try:
        consecutive = int(record.get("consecutive") or 0)
    except (TypeError, ValueError):
        raise SlotHealthError(
            f"failures.consecutive must be a number, got {record.get('consecutive')!r}", "failures"
        ) from None
    if consecutive < 0:
        raise SlotHealthError(f"failures.consecutive must be 0 or more, got {consecutive}", "failures")
    last_at = record.get("last_at") or ""
    try:
        at = parse_time(str(last_at), "failures.last_at") if last_at else None
    except SlotMetadataError as exc:
        raise SlotHealthError(str(exc), "failures") from None
    return meta.with_failures(
        consecutive, at, str(record.get("image") or ""), str(record.get("reason") or ""), backoff_until=None
    )


def console_tail(name: str, lines: int = DEFAULT_CONSOLE_LINES, log_dir: str = CONSOLE_LOG_DIR) -> List[str]:
    """The last non-empty lines of the slot's console log ([] when this host has none)."""
    path = os.path.join(log_dir, f"{name}-console.log")
    if lines <= 0 or not os.path.exists(path):
        return []
    return last_lines(tail(path, 8192), lines)


def plan_health(
    meta: SlotMetadata,
    state: str,
    now: datetime.datetime,
    reason: str = "",
    record: Optional[Dict[str, Any]] = None,
    operation: str = "",
    threshold: int = DEFAULT_BACKOFF_THRESHOLD,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_MAX,
) -> Tuple[HealthResult, SlotMetadata]:
    """What ``state`` does to one slot's metadata: the result and the metadata after. Pure."""
    result = HealthResult(meta.name)
    if state == "failed":
        if meta.drain_owned_by_other(operation, now):
            result.left_alone = True
            result.failures = meta.failures_dict()
            result.msg = "left alone: its drain is owned by %s (operation %s)" % (
                meta.drain_owner,
                meta.drain_operation,
            )
            return result, meta
        new = record_failure(meta, now, reason, threshold, base, cap)
        result.msg = "failure %d recorded" % new.failures
    elif state == "recorded":
        new = carry_failures(meta, record or {})
        result.msg = "failure record carried (%d)" % new.failures if new.failures else "no failure record"
    elif state == "healthy":
        new = meta.clear_failures()
        result.msg = "failure record cleared" if meta.failures else "no failure record"
    else:
        raise SlotHealthError("state must be one of %s, got %r" % (", ".join(STATES), state), "state")
    result.backoff = new.in_backoff(now)
    result.failures = new.failures_dict()
    result.changed = new != meta
    if result.changed:
        result.diff = {
            "before_header": f"{meta.name} (slot metadata)",
            "after_header": f"{meta.name} (slot metadata)",
            "before": to_xml(meta) + "\n",
            "after": to_xml(new) + "\n",
        }
    return result, new


def run_module(
    connect: Any, params: Dict[str, Any], check_mode: bool, diff_mode: bool, log_dir: str = CONSOLE_LOG_DIR
) -> Dict[str, Any]:
    """The ``slot_health`` module's work; ``connect(uri)`` opens libvirt (the module passes it)."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_clock import farm_now
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_end import end_domains

    try:
        now = farm_now()
    except SlotMetadataError as exc:
        raise SlotHealthError(str(exc), "BATCHVIRT_FARM_NOW") from None
    backoff = params.get("backoff") or {}

    def setting(key: str, default: float) -> float:
        value = backoff.get(key)
        return float(default if value is None else value)

    threshold = int(setting("threshold", DEFAULT_BACKOFF_THRESHOLD))
    base = setting("base", DEFAULT_BACKOFF_BASE)
    cap = setting("max", DEFAULT_BACKOFF_MAX)
    try:
        backoff_seconds(threshold, threshold, base, cap)
    except ValueError as exc:
        raise SlotHealthError(str(exc), "backoff") from None
    name = params["name"]
    conn = connect(params["uri"])
    try:
        dom, meta = load_slot(conn, name, SlotHealthError)
        result, new = plan_health(
            meta,
            params["state"],
            now,
            reason=params.get("reason") or "",
            record=params.get("failures"),
            operation=params.get("operation") or "",
            threshold=threshold,
            base=base,
            cap=cap,
        )
        if result.changed and not check_mode:
            write_metadata(dom, new)
        if params["state"] == "failed" and not result.left_alone:
            if result.backoff and params.get("stop_in_backoff", True):
                if check_mode:
                    result.end = {"how": "stopped" if not dom.isActive() else "acpi", "seconds": 0}
                else:
                    result.end = end_domains([dom], float(params.get("shutdown_timeout") or 0))[0]
                result.changed = result.changed or result.end["how"] != "stopped"
            result.console_tail = console_tail(name, int(params.get("console_lines") or 0), log_dir)
    finally:
        conn.close()
    out = result.as_dict()
    if diff_mode and result.diff:
        out["diff"] = result.diff
    return out
