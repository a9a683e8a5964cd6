"""The multi-hypervisor test bed, built and started once per session (tests/testbed/hypervisors.py):
three hypervisor hosts on this machine, each with its own root filesystem, address, sshd and
libvirtd, which Ansible and libvirt reach over SSH like real ones."""

from __future__ import annotations

import tempfile
import time
from typing import Dict, Iterator

import pytest
import yaml

from tests.testbed.ansible import PlaybookResult, run_playbook
from tests.testbed.hypervisors import HypervisorBed, build_rootfs

# step -> seconds, printed at the end of the session (docs/performance.md)
TIMINGS: Dict[str, float] = {}


def _timed(step: str, start: float) -> None:
    TIMINGS[step] = round(time.monotonic() - start, 1)


def run_hypervisors_play(bed: HypervisorBed) -> PlaybookResult:
    """playbooks/hypervisors.yml against the bed's ``hypervisors`` group, over SSH."""
    return run_playbook(
        "playbooks/hypervisors.yml",
        inventory=bed.inventory(),
        extravars={"farm_hypervisor_network_mode": "user", "farm_hypervisor_reserved_memory_mib": 512},
        timeout=900,
    )


@pytest.fixture(scope="session")
def hvbed() -> Iterator[HypervisorBed]:
    start = time.monotonic()
    rootfs = build_rootfs()
    _timed("root filesystem (cached or built)", start)
    start = time.monotonic()
    bed = HypervisorBed(tempfile.mkdtemp(prefix="bvt-mhv-", dir="/var/tmp"), count=3, rootfs=rootfs)
    try:
        bed.start()
        _timed("start three hypervisors", start)
        yield bed
    finally:
        start = time.monotonic()
        bed.remove()
        _timed("tear down", start)


@pytest.fixture(scope="session")
def configured(hvbed: HypervisorBed) -> PlaybookResult:
    """The first run of the hypervisor role on the three (asserted by test_role_over_ssh)."""
    start = time.monotonic()
    result = run_hypervisors_play(hvbed)
    _timed("hypervisor role, first run", start)
    return result


@pytest.fixture
def hv_inventory(hvbed: HypervisorBed, tmp_path) -> str:
    """The hypervisors as an inventory file (group ``hypervisors``, SSH user and port as group variables)."""
    path = tmp_path / "hypervisors.yml"
    path.write_text(yaml.safe_dump(hvbed.inventory()))
    return str(path)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if TIMINGS:
        terminalreporter.write_sep("-", "multi-hypervisor test bed step times (s)")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {step}")
