# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the slot lifecycle model (one source of truth).

The lifecycle state of a slot is *derived*, never stored: from the slot metadata, the
clock, the domain's run state and, when known, the batch system's view of the node.
Modules, the inventory plugin and plays all call :func:`compute_lifecycle`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Optional

STOPPED = "stopped"
EXPIRED = "expired"
FAILED = "failed"
DRAINED = "drained"
DRAINING = "draining"
PROVISIONING = "provisioning"
EXPIRING = "expiring"
ACTIVE = "active"

# In priority order: the first state whose condition holds wins.
STATES = (STOPPED, EXPIRED, FAILED, DRAINED, DRAINING, PROVISIONING, EXPIRING, ACTIVE)

# States in which a slot accepts new jobs (AWX's enabled_var is true only for these
# and for provisioning, which will accept jobs once registered; never for failed).
ACCEPTING_STATES = frozenset((ACTIVE, EXPIRING))
ENABLED_STATES = frozenset((ACTIVE, EXPIRING, PROVISIONING))

DEFAULT_EXPIRING_WINDOW = 7200  # seconds: drain_at within 2 h makes a slot "expiring"
DEFAULT_BOOT_GRACE = 900  # seconds after created_at a slot may take to register
DEFAULT_HEALTH_GRACE = 300  # seconds a registered node may be reported down before it is failed

# Batch-system node states (normalised by the adapters) that mean "registered once, now broken".
NOT_RESPONDING = "not_responding"  # the adapters' normalised state for a node that misses pings
UNHEALTHY_BATCH_STATES = frozenset(("down", NOT_RESPONDING, "fail", "failing", "error"))


@dataclass(frozen=True)
class BatchView:
    """What the batch system says of one node (from one bulk query per refresh).

    ``registered``: the node is known to the batch system and up (not down/unknown/future).
    ``drain``: the batch system has the node draining or drained (whoever asked for it).
    ``jobs``: number of jobs running on the node.
    ``state``: the adapter's normalised node state (``idle``, ``down``, ``not_responding``...).
    ``state_since``: when the batch system entered that state, when it says (Slurm's reason
    time); without it an unhealthy state counts as failed at once, since the batch system has
    already waited its own timeout (Slurm's ``SlurmdTimeout``) before reporting a node down.
    ``not_responding`` alone is the exception: Slurm sets it after one missed ping, without a
    reason (so a reason time read with it belongs to an older event), and turns it into ``down``
    with a reason of its own after ``SlurmdTimeout``; until then the node keeps its place.
    """

    registered: bool
    drain: bool = False
    jobs: int = 0
    state: str = ""
    state_since: Optional[datetime.datetime] = field(default=None, compare=False)

    @property
    def unhealthy(self) -> bool:
        """The batch system reports the node down, not responding or failed."""
        return self.state.lower() in UNHEALTHY_BATCH_STATES

    @property
    def awaiting_verdict(self) -> bool:
        """Not responding to the batch system's pings, which has not given up on the node yet."""
        return self.state.lower() == NOT_RESPONDING


@dataclass(frozen=True)
class LifecycleTimes:
    """The parts of a slot's metadata the lifecycle depends on."""

    created_at: datetime.datetime
    drain_at: datetime.datetime
    deadline: datetime.datetime
    drain_requested: bool = False


def compute_lifecycle(
    times: LifecycleTimes,
    now: datetime.datetime,
    running: bool,
    batch: Optional[BatchView] = None,
    expiring_window: float = DEFAULT_EXPIRING_WINDOW,
    boot_grace: float = DEFAULT_BOOT_GRACE,
    domain_error: bool = False,
    health_grace: float = DEFAULT_HEALTH_GRACE,
) -> str:
    """Derive a slot's lifecycle state (see the table in docs/slots.md).

    ``domain_error`` is true when libvirt reports the domain crashed or paused on an error.
    Without a batch view the model is conservative: a slot whose drain has started is
    ``draining`` (never ``drained``, since nobody has seen that no job runs there), a running
    slot is ``provisioning`` within ``boot_grace`` seconds of its creation, and it is never
    ``failed`` for a reason only the batch system could tell.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if domain_error:
        return EXPIRED if now >= times.deadline else FAILED
    if not running:
        return STOPPED
    if now >= times.deadline:
        return EXPIRED
    drain_started = times.drain_requested or now >= times.drain_at or (batch is not None and batch.drain)
    if batch is not None and _batch_failed(times, now, batch, drain_started, boot_grace, health_grace):
        return FAILED
    if drain_started:
        if batch is not None and batch.jobs == 0:
            return DRAINED
        return DRAINING
    if batch is not None:
        if not batch.registered and not batch.awaiting_verdict:
            return PROVISIONING
    elif (now - times.created_at).total_seconds() < boot_grace:
        return PROVISIONING
    if (times.drain_at - now).total_seconds() <= expiring_window:
        return EXPIRING
    return ACTIVE


def _batch_failed(
    times: LifecycleTimes,
    now: datetime.datetime,
    batch: BatchView,
    drain_started: bool,
    boot_grace: float,
    health_grace: float,
) -> bool:
    """Whether the batch system's view makes a running slot ``failed``.

    Reported down, not responding or failed for ``health_grace`` seconds; or never registered
    ``boot_grace`` seconds after creation. A node that is not registered after its drain
    started was taken out on purpose (a rolling update removes it): that is not a failure.
    Not responding (without down) is not judged here: the batch system judges it first.
    """
    if batch.awaiting_verdict:
        return False
    if batch.unhealthy:
        since = batch.state_since
        return since is None or (now - since).total_seconds() >= health_grace
    if batch.registered or drain_started:
        return False
    return (now - times.created_at).total_seconds() >= boot_grace


def seconds_to_drain(times: LifecycleTimes, now: datetime.datetime) -> int:
    """Whole seconds until ``drain_at`` (0 once it has passed or a drain was requested)."""
    if times.drain_requested:
        return 0
    return max(0, int((times.drain_at - now).total_seconds()))


# -- back-off of slots that keep failing ---------------------------------------------------------
DEFAULT_BACKOFF_THRESHOLD = 3  # consecutive failures before recycle.yml waits
DEFAULT_BACKOFF_BASE = 600  # seconds of the first wait
DEFAULT_BACKOFF_MAX = 86400  # seconds: the wait never grows beyond this


def backoff_seconds(
    consecutive: int,
    threshold: int = DEFAULT_BACKOFF_THRESHOLD,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_MAX,
) -> float:
    """Seconds recycle.yml waits before it re-creates a slot after ``consecutive`` failed lives.

    0 below ``threshold`` (re-created at once), then ``base * 2 ** (consecutive - threshold)``,
    never more than ``cap``: 600, 1200, 2400 ... seconds with the defaults (3, 600, 86400).
    """
    if threshold < 1:
        raise ValueError(f"the back-off threshold must be 1 or more, got {threshold}")
    if base < 0 or cap < 0:
        raise ValueError("the back-off base and maximum must be 0 or more seconds")
    if consecutive < threshold:
        return 0.0
    exponent = consecutive - threshold
    if exponent >= 64:  # 2**64 times any base is past any cap
        return float(cap)
    return float(min(cap, base * 2**exponent))
