# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: rolling update planning (capacity bound -> batch size, batches, floor).

``playbooks/rolling_update.yml`` gets its ``serial`` and its plan from here, through the filters
``batchvirt.farm.rolling_batch_size`` and ``batchvirt.farm.rolling_plan`` (``plugins/filter/rolling.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

EPSILON = 1e-9
SERIAL_VARIABLE = "farm_rolling_update_serial"


class RollingPlanError(FarmError):
    """A rolling update that cannot be planned; ``option`` names the play variable."""

    @property
    def variable(self) -> str:
        return self.option


def check_share(min_capacity_share: float) -> float:
    share = float(min_capacity_share)
    if not 0.0 <= share < 1.0:
        raise RollingPlanError(
            f"farm_rolling_update_min_capacity_share must be at least 0 and below 1, got {min_capacity_share!r}",
            "farm_rolling_update_min_capacity_share",
        )
    return share


def check_serial(serial: Any) -> Tuple[str, float]:
    """``("", 0)`` for no request, ``("%", share)`` for a percentage, ``("n", count)`` for a count."""
    text = "" if serial is None else str(serial).strip()
    if not text:
        return "", 0.0
    percent = text.endswith("%")
    number = text[:-1].strip() if percent else text
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or (not percent and value != int(value)):
        raise RollingPlanError(
            f"{SERIAL_VARIABLE} must be a count of slots (5) or a percentage of the targets (10%), got {serial!r}",
            SERIAL_VARIABLE,
        )
    return ("%" if percent else "n"), value


def batch_size(accepting: int, min_capacity_share: float, targets: Optional[int] = None, serial: Any = "") -> int:
    """How many slots one batch may take out of service at once.

    ``accepting`` slots take jobs now (``active`` + ``expiring``); at least
    ``min_capacity_share`` of them must keep taking jobs, so at most
    ``floor(accepting * (1 - share))`` are out at once. At least one (else nothing could ever be
    updated: with two slots and a share of 0.75 the update goes one by one and capacity dips to
    0.5 — :func:`capacity_kept` tells), at most ``targets`` (the slots to update). 0 when there is
    nothing to update.

    ``serial`` (``farm_rolling_update_serial``) asks for smaller batches: a count, or a percentage
    of ``targets`` (rounded down, at least one); it never raises the batch above the bound.
    """
    share = check_share(min_capacity_share)
    kind, asked = check_serial(serial)
    if targets is not None and targets <= 0:
        return 0
    size = max(1, int(math.floor(accepting * (1.0 - share) + EPSILON)))
    if kind == "%":
        size = min(size, max(1, int(math.floor(asked / 100.0 * (targets or 0) + EPSILON))))
    elif kind == "n":
        size = min(size, max(1, int(asked)))
    if targets is not None:
        size = min(size, targets)
    return size


def capacity_kept(accepting: int, size: int) -> float:
    """The share of accepting slots still taking jobs while one batch of ``size`` is out."""
    if accepting <= 0:
        return 1.0
    return max(0, accepting - size) / accepting


def batches(names: Sequence[str], size: int) -> List[List[str]]:
    """The batches in play order (Ansible's ``serial`` with a fixed count)."""
    if size <= 0:
        return []
    return [list(names[i : i + size]) for i in range(0, len(names), size)]


@dataclass(frozen=True)
class Plan:
    """What a rolling update will do; the playbook's check mode shows the same."""

    accepting: int
    targets: List[str]
    size: int
    batches: List[List[str]]
    capacity_share_kept: float
    below_floor: bool

    def as_dict(self) -> Dict[str, object]:
        return {
            "accepting": self.accepting,
            "targets": list(self.targets),
            "batch_size": self.size,
            "batches": [list(b) for b in self.batches],
            "capacity_share_kept": self.capacity_share_kept,
            "below_floor": self.below_floor,
        }


def plan(targets: Sequence[str], accepting: int, min_capacity_share: float, serial: Any = "") -> Plan:
    size = batch_size(accepting, min_capacity_share, len(targets), serial)
    kept = capacity_kept(accepting, size) if targets else 1.0
    return Plan(
        accepting=accepting,
        targets=list(targets),
        size=size,
        batches=batches(targets, size),
        capacity_share_kept=kept,
        below_floor=bool(targets) and kept + EPSILON < check_share(min_capacity_share),
    )


def floor_schedule(remaining: Sequence[float], size: int, replace_seconds: float) -> Tuple[float, List[List[int]]]:
    """The shortest time a rolling update can take under the capacity bound.

    ``remaining[i]`` is how long the job(s) on slot ``i`` still run when the update starts (jobs run
    on while earlier batches are replaced); ``size`` slots at most are out at once; replacing a
    drained slot (remove, re-create, boot, register) takes ``replace_seconds``, and the slots of one
    batch are replaced in parallel, so each batch costs one replacement after its last job ends.

    With batches run one after another, batch ``k`` (1-based, of ``K``) ends at
    ``t_k = max(t_{k-1}, m_k) + R`` where ``m_k`` is the longest remaining job of the batch; unrolled,
    the update ends at ``max(K * R, max_k(m_k + (K - k + 1) * R))``, smallest when the slots are taken
    in ascending order of remaining job time (the longest jobs get the fewest replacements after
    them). Returns that end time and the batches (indices into ``remaining``).
    """
    if size <= 0:
        raise RollingPlanError("batch size must be positive", "farm_rolling_update_min_capacity_share")
    order = sorted(range(len(remaining)), key=lambda i: remaining[i])
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    end = 0.0
    for group in groups:
        end = max(end, *(max(0.0, float(remaining[i])) for i in group)) + replace_seconds
    return end, groups


def min_share(samples: Sequence[Tuple[float, int]], total: int) -> float:
    """The smallest share of ``total`` slots accepting jobs over ``(time, accepting)`` samples."""
    if total <= 0 or not samples:
        return 1.0
    return min(count for _t, count in samples) / total
