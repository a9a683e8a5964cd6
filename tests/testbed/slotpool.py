"""The slots storage pool that slot tests and bench/slots.py use: created here (a dir pool on
/var/lib/batchvirt/slots) only when the hypervisor role has not created it."""

from __future__ import annotations

import os
from typing import Any

SLOTS_POOL = "batchvirt-slots"
SLOTS_DIR = "/var/lib/batchvirt/slots"


def ensure_slots_pool(conn: Any) -> str:
    """The active slots pool on ``conn`` (an open libvirt connection); returns its name."""
    import libvirt

    try:
        pool = conn.storagePoolLookupByName(SLOTS_POOL)
    except libvirt.libvirtError:
        os.makedirs(SLOTS_DIR, exist_ok=True)
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{SLOTS_POOL}</name><target><path>{SLOTS_DIR}</path></target></pool>"
        )
    if not pool.isActive():
        pool.create(0)
    return SLOTS_POOL
