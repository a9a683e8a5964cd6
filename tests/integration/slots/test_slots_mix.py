"""A mix of worker types on one hypervisor through playbooks/slots.yml (the vm_slots role's
farm_vm_slots_mix) against the real libvirtd: each type's slots get its size, its image from
the image cache and its type in their metadata, in slot-number order; a rerun changes
nothing; a mix that does not fit names the part and the variable and creates nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import types

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, qcow2_backing_file
from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
from tests.integration.slots.conftest import SLOTS_DIR, register_slot
from tests.integration.slots.test_slots_playbook import PLAYBOOK, TASK, slots_vars
from tests.testbed.ansible import run_playbook


def _stage(root: str, identifier: str, source: str) -> None:
    with open(source, "rb") as handle:
        data = handle.read()

    def fetch(_uri, partial, size, sha512, **_options):
        shutil.copyfile(source, partial)
        return types.SimpleNamespace(transferred=size, resumed_from=0)

    cache = ImageCache(root)
    try:
        with cache.lock(60, purpose="test"):
            cache.stage(
                identifier, "1", "file://" + source, len(data), hashlib.sha512(data).hexdigest(), "qcow2", fetch
            )
    finally:
        cache.close()


def _mix_vars(guest, hv, root, mix):
    worker_types = [
        {"name": "small", "image": "bvt-mix-small", "vcpus": 1, "memory_mib": 128, "disk_gib": 1},
        {"name": "large", "image": "bvt-mix-large", "vcpus": 2, "memory_mib": 192, "disk_gib": 1},
    ]
    return slots_vars(
        guest,
        hv,
        farm_vm_slots_state="present",  # defined, not booted: the layout is what is tested here
        farm_vm_slots_image={"identifier": "bvt-mix-small", "version": "latest", "cache_root": root},
        farm_worker_types=worker_types,
        farm_vm_slots_mix=mix,
        farm_vm_slots_ssh_port_base=12640,
    )


def test_a_mix_of_worker_types_on_one_hypervisor(testbed, libvirt_conn, guest, slots_pool):
    hv = testbed.name("hv").replace("-", "")
    root = os.path.join(testbed.tmp, "images")
    for identifier in ("bvt-mix-small", "bvt-mix-large"):
        _stage(root, identifier, guest["base"])
    names = [register_slot(testbed, f"{hv}-slot-0{n}") for n in (1, 2, 3, 4)]
    mix = [{"worker_type": "large", "count": 1}, {"worker_type": "small", "count": 2}]

    first = run_playbook(PLAYBOOK, extravars=_mix_vars(guest, hv, root, mix))
    assert first.rc == 0, first.stdout[-3000:]
    (result,) = first.results(TASK)
    assert [s["name"] for s in result["slots"]] == names[:3]
    seen = []
    for name in names[:3]:
        dom = libvirt_conn.lookupByName(name)
        meta = read_metadata(dom)
        backing = qcow2_backing_file(os.path.join(SLOTS_DIR, f"{name}.qcow2"))
        seen.append((meta.worker_type, dom.maxMemory() // 1024, dom.info()[3], meta.image_identifier))
        assert backing and backing.startswith(root) and meta.image_identifier in backing
    assert seen == [
        ("large", 192, 2, "bvt-mix-large"),
        ("small", 128, 1, "bvt-mix-small"),
        ("small", 128, 1, "bvt-mix-small"),
    ]
    assert names[3] not in {d.name() for d in libvirt_conn.listAllDomains(0)}

    again = run_playbook(PLAYBOOK, extravars=_mix_vars(guest, hv, root, mix))
    assert again.rc == 0 and not again.changed, again.changed_tasks()

    # a part that does not fit: named, with the variable to change, and nothing more is created
    huge = [{"worker_type": "large", "count": 1}, {"worker_type": "small", "count": 100000}]
    failed = run_playbook(PLAYBOOK, extravars=_mix_vars(guest, hv, root, huge))
    assert failed.rc != 0
    said = " ".join(failed.stdout.split())
    assert "farm_vm_slots_mix: layout: mix[1] (small): count=100000 does not fit on this hypervisor" in said, said[
        -3000:
    ]
    assert names[3] not in {d.name() for d in libvirt_conn.listAllDomains(0)}
