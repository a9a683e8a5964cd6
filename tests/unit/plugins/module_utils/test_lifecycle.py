"""The lifecycle model as a table: every state, every boundary, priority order."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _lifecycle as lc
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView, LifecycleTimes

T0 = datetime.datetime(2026, 11, 1, 0, 0, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
SEC = datetime.timedelta(seconds=1)
# created at T0, drains after 24 h, deadline 48 h after drain_at.
TIMES = LifecycleTimes(created_at=T0, drain_at=T0 + 24 * HOUR, deadline=T0 + 72 * HOUR)
REQUESTED = LifecycleTimes(T0, T0 + 24 * HOUR, T0 + 72 * HOUR, drain_requested=True)
UP = BatchView(registered=True)
UP_BUSY = BatchView(registered=True, jobs=3)
DOWN = BatchView(registered=False)
BATCH_DRAIN_IDLE = BatchView(registered=True, drain=True, jobs=0)
BATCH_DRAIN_BUSY = BatchView(registered=True, drain=True, jobs=1)
REPORTED_DOWN = BatchView(registered=False, state="down")
DOWN_400S = BatchView(registered=False, state="down", state_since=T0 + 2 * HOUR - 400 * SEC)
DOWN_100S = BatchView(registered=False, state="down", state_since=T0 + 2 * HOUR - 100 * SEC)
# Slurm's NOT_RESPONDING flag after one missed ping: no reason of its own, so a reason time read with
# it (sinfo's reason_changed_at) belongs to an older event, here a drain cleared 400 s before
NOT_RESPONDING_OLD_REASON = BatchView(registered=False, state="not_responding", state_since=T0 + 2 * HOUR - 400 * SEC)
NOT_RESPONDING = BatchView(registered=False, state="not_responding")

CASES = [
    # id, times, now, running, batch, expected
    ("not-running-wins-over-everything", TIMES, T0 + 100 * HOUR, False, UP_BUSY, lc.STOPPED),
    ("not-running-fresh", TIMES, T0, False, None, lc.STOPPED),
    ("deadline-exact-is-expired", TIMES, T0 + 72 * HOUR, True, UP_BUSY, lc.EXPIRED),
    ("past-deadline-even-with-jobs", TIMES, T0 + 80 * HOUR, True, UP_BUSY, lc.EXPIRED),
    ("one-second-before-deadline-draining", TIMES, T0 + 72 * HOUR - SEC, True, UP_BUSY, lc.DRAINING),
    ("drain-at-exact-idle-is-drained", TIMES, T0 + 24 * HOUR, True, UP, lc.DRAINED),
    ("drain-at-exact-busy-is-draining", TIMES, T0 + 24 * HOUR, True, UP_BUSY, lc.DRAINING),
    ("after-drain-unknown-batch-is-draining", TIMES, T0 + 30 * HOUR, True, None, lc.DRAINING),
    ("drain-request-idle-is-drained", REQUESTED, T0 + 2 * HOUR, True, UP, lc.DRAINED),
    ("drain-request-busy-is-draining", REQUESTED, T0 + 2 * HOUR, True, UP_BUSY, lc.DRAINING),
    ("drain-request-unregistered-is-drained", REQUESTED, T0 + 2 * HOUR, True, DOWN, lc.DRAINED),
    ("drain-request-unknown-batch-is-draining", REQUESTED, T0 + 2 * HOUR, True, None, lc.DRAINING),
    ("batch-side-drain-idle", TIMES, T0 + 2 * HOUR, True, BATCH_DRAIN_IDLE, lc.DRAINED),
    ("batch-side-drain-busy", TIMES, T0 + 2 * HOUR, True, BATCH_DRAIN_BUSY, lc.DRAINING),
    ("not-registered-within-boot-grace-is-provisioning", TIMES, T0 + 899 * SEC, True, DOWN, lc.PROVISIONING),
    ("not-registered-after-boot-grace-is-failed", TIMES, T0 + 900 * SEC, True, DOWN, lc.FAILED),
    ("reported-down-is-failed", TIMES, T0 + 2 * HOUR, True, REPORTED_DOWN, lc.FAILED),
    ("down-past-health-grace-is-failed", TIMES, T0 + 2 * HOUR, True, DOWN_400S, lc.FAILED),
    ("down-within-health-grace", TIMES, T0 + 2 * HOUR, True, DOWN_100S, lc.PROVISIONING),
    # Slurm judges a node that misses pings first (down after SlurmdTimeout): until then it keeps its state
    ("not-responding-waits-for-the-batch-verdict", TIMES, T0 + 2 * HOUR, True, NOT_RESPONDING_OLD_REASON, lc.ACTIVE),
    ("not-responding-without-time-is-not-failed", TIMES, T0 + 2 * HOUR, True, NOT_RESPONDING, lc.ACTIVE),
    ("not-responding-after-boot-grace-is-not-failed", TIMES, T0 + 900 * SEC, True, NOT_RESPONDING, lc.ACTIVE),
    ("not-responding-near-drain-is-expiring", TIMES, T0 + 23 * HOUR, True, NOT_RESPONDING, lc.EXPIRING),
    ("not-responding-while-draining", TIMES, T0 + 30 * HOUR, True, NOT_RESPONDING, lc.DRAINED),
    ("down-while-draining-is-failed", TIMES, T0 + 30 * HOUR, True, REPORTED_DOWN, lc.FAILED),
    ("crashed-domain-is-failed", TIMES, T0 + 2 * HOUR, False, None, lc.FAILED),
    ("crashed-domain-past-deadline-is-expired", TIMES, T0 + 72 * HOUR, False, None, lc.EXPIRED),
    ("no-batch-view-is-never-failed", TIMES, T0 + 30 * 60 * SEC, True, None, lc.ACTIVE),
    ("no-batch-within-boot-grace", TIMES, T0 + 899 * SEC, True, None, lc.PROVISIONING),
    ("no-batch-boot-grace-boundary-is-active", TIMES, T0 + 900 * SEC, True, None, lc.ACTIVE),
    ("registered-at-once-is-active", TIMES, T0 + 10 * SEC, True, UP, lc.ACTIVE),
    ("expiring-window-boundary", TIMES, T0 + 22 * HOUR, True, UP, lc.EXPIRING),
    ("just-outside-expiring-window", TIMES, T0 + 22 * HOUR - SEC, True, UP, lc.ACTIVE),
    ("expiring-one-second-before-drain", TIMES, T0 + 24 * HOUR - SEC, True, UP_BUSY, lc.EXPIRING),
    ("expiring-without-batch-view", TIMES, T0 + 23 * HOUR, True, None, lc.EXPIRING),
    ("unregistered-near-drain-is-failed", TIMES, T0 + 23 * HOUR, True, DOWN, lc.FAILED),
]


CRASHED = {"crashed-domain-is-failed", "crashed-domain-past-deadline-is-expired"}


@pytest.mark.parametrize(("name", "times", "now", "running", "batch", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lifecycle_table(name, times, now, running, batch, expected):
    assert lc.compute_lifecycle(times, now, running, batch, domain_error=name in CRASHED) == expected


def test_failed_slots_are_not_enabled_for_awx():
    assert lc.FAILED not in lc.ENABLED_STATES
    assert lc.FAILED not in lc.ACCEPTING_STATES


def test_health_grace_is_a_parameter():
    now = T0 + 2 * HOUR
    assert lc.compute_lifecycle(TIMES, now, True, DOWN_400S, health_grace=600) == lc.PROVISIONING
    assert lc.compute_lifecycle(TIMES, now, True, DOWN_100S, health_grace=60) == lc.FAILED


def test_every_state_is_reachable_in_the_table():
    assert {c[-1] for c in CASES} == set(lc.STATES)


def test_expiring_window_and_boot_grace_are_parameters():
    now = T0 + 20 * HOUR
    assert lc.compute_lifecycle(TIMES, now, True, UP) == lc.ACTIVE
    assert lc.compute_lifecycle(TIMES, now, True, UP, expiring_window=5 * 3600) == lc.EXPIRING
    assert lc.compute_lifecycle(TIMES, T0 + HOUR, True, None, boot_grace=7200) == lc.PROVISIONING


def test_naive_clock_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        lc.compute_lifecycle(TIMES, datetime.datetime(2026, 11, 1), True)


@pytest.mark.parametrize(
    ("times", "now", "expected"),
    [
        (TIMES, T0, 24 * 3600),
        (TIMES, T0 + 24 * HOUR + SEC, 0),
        (REQUESTED, T0, 0),
        (TIMES, T0 + 23 * HOUR + 0.5 * SEC, 3599),
    ],
)
def test_seconds_to_drain(times, now, expected):
    assert lc.seconds_to_drain(times, now) == expected


@pytest.mark.parametrize(
    ("state", "reason", "error"),
    [
        (6, 0, True),  # crashed
        (3, 5, True),  # paused on an I/O error
        (3, 6, True),  # paused by the watchdog
        (3, 10, True),  # paused because the guest crashed
        (3, 13, True),  # paused after a failed post-copy migration
        (3, 1, False),  # paused by a user
        (3, 9, False),  # paused for a snapshot: a healthy guest, for a moment
        (1, 0, False),  # running
    ],
)
def test_libvirt_reports_a_domain_error_only_for_crashes_and_error_pauses(state, reason, error):
    from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import DomainRecord

    assert DomainRecord(domain="hv1-slot-01", state=state, reason=reason).domain_error is error
