"""The REAL test farm as a package fixture (built once, reused by every test of this package, and
taken down when the package ends so its idle guests do not load the tests after it):
hypervisor role via ``libvirt_uri``, the worker image with slurmd + munge (base_image role, the one
recipe in ``worker_image.yml``), slurmctld on 127.0.0.1 (batch_controller role), the image staged
in an image cache, and two slots whose VMs boot and register with slurmctld by themselves.
See ``farmbed.py``."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.farm import farmbed


@pytest.fixture(scope="package")
def farm(libvirt_uri):
    """A :class:`farmbed.Farm` with ``farm.count`` slots running and accepting jobs."""
    start = time.monotonic()
    built = None
    try:
        built = farmbed.build(count=2, memory_mib=512)
        built.timings["build_total"] = time.monotonic() - start
        yield built
    finally:
        errors = farmbed.destroy(built)
        assert not errors, f"farm cleanup failed: {errors}"


# Removes one of the farm's two slots for good: whatever needs both runs before it.
LAST = "test_removing_a_slot_shuts_its_guest_down_by_acpi_first"


def pytest_collection_modifyitems(items) -> None:  # type: ignore[no-untyped-def]
    """The slot-removal test comes last among this package's tests, whatever file a later test is
    in (they need both slots); the order of the others and of other packages stays."""
    here = os.path.dirname(os.path.abspath(__file__))
    places = [i for i, item in enumerate(items) if str(item.fspath).startswith(here + os.sep)]
    ordered = sorted((items[i] for i in places), key=lambda item: item.name == LAST)
    for i, item in zip(places, ordered):
        items[i] = item
