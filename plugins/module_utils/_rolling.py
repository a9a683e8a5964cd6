# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: rolling update planning (capacity bound -> batch size, batches, floor).

``playbooks/rolling_update.yml`` computes its ``serial`` with the same rule in Jinja (a play
keyword cannot call Python); ``tests/unit/plugins/module_utils/test_rolling_plan.py`` renders the
playbook's expression and checks it against :func:`batch_size` for a table of farms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

EPSILON = 1e-9


class RollingPlanError(ValueError):
    """A rolling update that cannot be planned; the message names the variable."""

    def __init__(self, message: str, variable: str = "") -> None:
        super().__init__(message)
        self.variable = variable


def check_share(min_capacity_share: float) -> float:
    share = float(min_capacity_share)
    if not 0.0 <= share < 1.0:
        raise RollingPlanError(
            f"farm_rolling_update_min_capacity_share must be at least 0 and below 1, got {min_capacity_share!r}",
            "farm_rolling_update_min_capacity_share",
        )
    return share


def batch_size(accepting: int, min_capacity_share: float, targets: Optional[int] = None) -> int:
    """How many slots one batch may take out of service at once.

    ``accepting`` slots take jobs now (``active`` + ``expiring``); at least
    ``min_capacity_share`` of them must keep taking jobs, so at most
    ``floor(accepting * (1 - share))`` are out at once. At least one (else nothing could ever be
    updated: with two slots and a share of 0.75 the update goes one by one and capacity dips to
    0.5 — :func:`capacity_kept` tells), at most ``targets`` (the slots to update). 0 when there is
    nothing to update.
    """
    share = check_share(min_capacity_share)
    if targets is not None and targets <= 0:
        return 0
    size = max(1, int(math.floor(accepting * (1.0 - share) + EPSILON)))
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


def plan(targets: Sequence[str], accepting: int, min_capacity_share: float) -> Plan:
    size = batch_size(accepting, min_capacity_share, len(targets))
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
