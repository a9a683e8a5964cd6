"""The multi-hypervisor test bed, built and started once for this package (tests/testbed/hypervisors.py):
three hypervisor hosts on this machine, each with its own root filesystem, address, sshd and
libvirtd, which Ansible and libvirt reach over SSH like real ones. The bed and the guests booted
in it go when the package ends: idle TCG guests left running would slow every package after it
(the slot tests took 5-10 times longer beside them)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, Iterator

import pytest
import yaml

from tests.integration.multi.multifarm import MultiFarm, build
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


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def multifarm(hvbed: HypervisorBed) -> Iterator[MultiFarm]:
    """The real farm on the bed (multifarm.py): site.yml run against the three hypervisors, one
    booted slot each, registered with a slurmctld on this machine. Built once for the package;
    its slots go with the bed (the hypervisors' PID namespaces and root filesystems)."""
    start = time.monotonic()
    farm = None
    try:
        farm = build(hvbed)
        for step, seconds in farm.timings.items():
            TIMINGS[f"farm: {step}"] = round(seconds, 1)
        TIMINGS["farm: total build"] = round(time.monotonic() - start, 1)
        yield farm
    finally:
        if farm is not None:
            farm.stop()


def pytest_collection_modifyitems(items) -> None:  # type: ignore[no-untyped-def]
    """The booted farm (test_multi_farm.py) comes last in this package: the bed's other tests
    count the slots of each hypervisor and expect only their own."""
    here = os.path.dirname(os.path.abspath(__file__))
    places = [i for i, item in enumerate(items) if str(item.fspath).startswith(here + os.sep)]
    ours = [items[i] for i in places]
    ordered = sorted(ours, key=lambda item: os.path.basename(str(item.fspath)) == "test_multi_farm.py")
    for i, item in zip(places, ordered):
        items[i] = item
