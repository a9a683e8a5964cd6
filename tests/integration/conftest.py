"""Shared integration fixtures: a real libvirtd set up by the collection's hypervisor role,
and a test bed that removes whatever a test created."""

from __future__ import annotations

import os
import subprocess
import warnings

import pytest

from tests.testbed.ansible import LOCALHOST, ROOT, run_playbook
from tests.testbed.bed import TestBed, libvirt, remove_leftover_domains

LIBVIRT_URI = os.environ.get("BVT_LIBVIRT_URI", "qemu:///system")


def _libvirtd_answers() -> bool:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """``qemu:///system`` with virtlogd and libvirtd running, set up by ``playbooks/hypervisors.yml``."""
    playbook = os.path.join(ROOT, "playbooks", "hypervisors.yml")
    if os.path.exists(playbook) and not os.environ.get("BVT_SKIP_HYPERVISOR_ROLE"):
        result = run_playbook(playbook, inventory=LOCALHOST, extravars=_hypervisor_vars())
        assert result.rc == 0, "playbooks/hypervisors.yml failed:\n" + result.stdout[-4000:]
    assert _libvirtd_answers(), f"libvirtd does not answer on {LIBVIRT_URI}"
    leftovers = remove_leftover_domains(LIBVIRT_URI)
    if leftovers:
        warnings.warn("removed test domains an interrupted earlier run left: " + ", ".join(leftovers), stacklevel=1)
    return LIBVIRT_URI


def _hypervisor_vars() -> dict:
    """The test hypervisor: user-mode networking (loopback port forwards), default pools."""
    return {"farm_hypervisor_network_mode": "user"}


@pytest.fixture
def libvirt_conn(libvirt_uri):
    conn = libvirt.open(libvirt_uri)
    yield conn
    conn.close()


@pytest.fixture
def testbed(libvirt_uri):
    bed = TestBed(libvirt_uri)
    yield bed
    errors = bed.close()
    assert not errors, f"test bed cleanup failed: {errors}"


@pytest.fixture
def hostbed():
    """A test bed for tests that need no libvirt (processes, paths, namespaces)."""
    bed = TestBed(None)
    yield bed
    errors = bed.close()
    assert not errors, f"test bed cleanup failed: {errors}"
