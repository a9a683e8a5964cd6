"""The end of a slot's life: the reason table, the reason derived from the lifecycle state,
and the decision ACPI shutdown / wait / destroy (fake domains and a fake clock)."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import STATES
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_end import END_REASONS, end_domains, end_reason

libvirt = pytest.importorskip("libvirt")


def test_reason_table_is_vac_like():
    assert sorted(END_REASONS) == [100, 200, 300, 400, 500, 600]
    assert END_REASONS[100] == "Shutdown as requested by the VM's host/hypervisor"
    assert all(code % 100 == 0 for code in END_REASONS)


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("expired", 600),
        ("failed", 500),
        ("drained", 300),
        ("draining", 300),
        ("stopped", 200),
        ("active", 100),
        ("provisioning", 100),
        ("expiring", 100),
    ],
)
def test_reason_from_lifecycle(state, code):
    assert state in STATES
    got = end_reason(state)
    assert got["reason_code"] == code
    assert got["reason"] == f"{code} {END_REASONS[code]}"


def test_reason_given_by_caller_wins_and_is_checked():
    assert end_reason("expired", 400)["reason"] == "400 Failed to start"
    with pytest.raises(ValueError, match="end_reason must be one of 100, 200"):
        end_reason("expired", 250)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


class Dom:
    """Powers off ``stops_after`` seconds after the ACPI request (None: ignores it)."""

    def __init__(self, clock, stops_after=None, running=True, acpi=True):
        self.clock, self.stops_after, self.running, self.acpi = clock, stops_after, running, acpi
        self.pressed_at = None
        self.destroyed = False
        self.calls = []

    def isActive(self):
        pressed = self.pressed_at is not None and self.stops_after is not None
        if self.running and pressed and self.clock() - self.pressed_at >= self.stops_after:
            self.running = False
        return self.running

    def shutdownFlags(self, flags):
        self.calls.append(("shutdownFlags", flags))
        if not self.acpi:
            raise libvirt.libvirtError("unsupported flags")
        self.pressed_at = self.clock()

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.pressed_at = self.clock()

    def destroy(self):
        if not self.running:
            raise libvirt.libvirtError("domain is not running")
        self.running = False
        self.destroyed = True


def test_acpi_then_destroy_after_grace():
    clock = Clock()
    polite = Dom(clock, stops_after=3)
    deaf = Dom(clock, stops_after=None)
    off = Dom(clock, running=False)
    out = end_domains([polite, deaf, off], 10, sleep=clock.sleep, clock=clock)
    assert out[0] == {"how": "acpi", "seconds": 3.0}
    assert out[1]["how"] == "destroyed" and out[1]["seconds"] == 10.0
    assert out[2] == {"how": "stopped", "seconds": 0}
    assert not polite.destroyed and deaf.destroyed and not off.calls
    assert polite.calls == [("shutdownFlags", libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)]
    assert clock.t == pytest.approx(10.0)  # one shared grace, not one per domain


def test_zero_timeout_destroys_at_once():
    clock = Clock()
    dom = Dom(clock, stops_after=1)
    assert end_domains([dom], 0, sleep=clock.sleep, clock=clock) == [{"how": "destroyed", "seconds": 0}]
    assert dom.destroyed and not dom.calls and clock.t == 0


def test_plain_shutdown_when_acpi_flag_refused():
    clock = Clock()
    dom = Dom(clock, stops_after=1, acpi=False)
    assert end_domains([dom], 5, sleep=clock.sleep, clock=clock)[0]["how"] == "acpi"
    assert dom.calls[-1] == ("shutdown",)


def test_guest_powering_off_while_destroyed_is_no_error():
    clock = Clock()
    dom = Dom(clock, stops_after=None)
    real_destroy = dom.destroy

    def racing_destroy():
        dom.running = False  # the guest got there first
        real_destroy()

    dom.destroy = racing_destroy
    out = end_domains([dom], 1, sleep=clock.sleep, clock=clock)
    assert out[0]["how"] == "destroyed"
