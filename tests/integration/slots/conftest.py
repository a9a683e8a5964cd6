"""Fixtures of the slot tests: the tiny guest (kernel + busybox initramfs + small qcow2 base)
and the slots pool (created here only when the hypervisor role has not created it)."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.slots import tinyguest
from tests.testbed.bed import libvirt
from tests.testbed.slotpool import SLOTS_DIR, ensure_slots_pool

HERE = os.path.dirname(os.path.abspath(__file__))
SLOT_PLAYBOOK = os.path.join(HERE, "playbooks", "slot.yml")


@pytest.fixture(scope="session")
def guest():
    return tinyguest.ensure()


@pytest.fixture(scope="session")
def slots_pool(libvirt_uri):
    conn = libvirt.open(libvirt_uri)
    try:
        return ensure_slots_pool(conn)
    finally:
        conn.close()


def slot_files(name: str) -> list:
    """What a slot leaves on disk, for the no-orphan checks."""
    return [
        p
        for p in (os.path.join(SLOTS_DIR, f"{name}.qcow2"), os.path.join(SLOTS_DIR, f"{name}-seed.iso"))
        if os.path.exists(p)
    ]


def register_slot(testbed, name: str) -> str:
    """Remove a slot's domain, volumes and console log after the test, whatever happened."""
    return testbed.slot(name)


def wait_for_console(name: str, marker: str, timeout: float = 90) -> str:
    path = f"/var/log/libvirt/qemu/{name}-console.log"
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as handle:
                text = handle.read()
            if marker in text:
                return text
        time.sleep(1)
    raise AssertionError(f"{marker!r} not on {name}'s console within {timeout} s; last lines:\n{text[-2000:]}")
