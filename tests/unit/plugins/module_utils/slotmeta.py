"""Slot metadata for the unit tests of the slot claim (drain owners) and slot health (failures):
one slot created at ``T0``, draining a day later, deadline two days after that."""

from __future__ import annotations

import datetime

from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_metadata as sm

T0 = datetime.datetime(2026, 12, 1, 6, 0, 0, tzinfo=datetime.timezone.utc)
NOW = T0 + datetime.timedelta(hours=5)


def make(**overrides):
    values = {
        "name": "hv1-slot-01",
        "hypervisor": "hv1",
        "image_identifier": "worker-el9",
        "image_version": "7",
        "created_at": T0,
        "drain_at": T0 + datetime.timedelta(days=1),
        "deadline": T0 + datetime.timedelta(days=3),
    }
    values.update(overrides)
    return sm.SlotMetadata(**values)


def driver_domain_xml(name, meta=""):
    """A libvirt test-driver domain (``test:///default``) carrying ``meta`` as its metadata."""
    return (
        f"<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><metadata>{meta}</metadata></domain>"
    )
