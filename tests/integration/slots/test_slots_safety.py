"""Slots against the real libvirtd where things go wrong (issue 14, items 5 and 7):
prune racing slot creation never leaves a slot without its backing file; state=absent over a
remote URI deletes the overlay and the seed ISO on the hypervisor, not on the module's host;
a start that fails in a multi-slot call still reports the slots made."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import types

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, qcow2_backing_file
from ansible_collections.batchvirt.farm.plugins.module_utils._slot import SlotError, SlotManager
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module
from tests.integration.slots.conftest import SLOTS_DIR, register_slot, slot_files
from tests.testbed.ansible import COLLECTIONS

ROUNDS = 20
PRUNE = """
import json, sys
import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._image_module import run_image
conn = libvirt.open("qemu:///system")
print("ready", flush=True)
sys.stdin.readline()  # the test says go: both sides start from warm interpreters
params = {"root": sys.argv[1], "pool": "bvt-none", "state": "pruned", "lock_timeout": 120, "force": False,
          "refresh_pool": False}
print(json.dumps(run_image(params, False, conn=conn)))
"""


def call(capsys, **args):
    base = {"hypervisor": "bvt", "memory_mib": 128, "domain_type": "qemu"}
    base.update(args)
    with patch_module_args(base), pytest.raises(SystemExit):
        slot_module.main()
    return json.loads(capsys.readouterr().out)


def tiny(guest, **extra):
    args = {
        "image": {"path": guest["base"]},
        "boot": {"mode": "kernel", "kernel": guest["kernel"], "initrd": guest["initrd"], "cmdline": guest["cmdline"]},
    }
    args.update(extra)
    return args


def stage(cache: ImageCache, version: str, source: str) -> None:
    """A ready image staged from a list that no longer endorses it: the next prune removes it."""
    with open(source, "rb") as handle:
        data = handle.read()

    def fetch(_uri, partial, size, sha512, **_options):
        shutil.copyfile(source, partial)
        return types.SimpleNamespace(transferred=size, resumed_from=0)

    with cache.lock(60, purpose="test"):
        cache.stage(
            "racer",
            version,
            "file://" + source,
            len(data),
            hashlib.sha512(data).hexdigest(),
            "qcow2",
            fetch,
            "bvt-list",
        )


def test_prune_racing_slot_creation_never_leaves_a_missing_backing_file(testbed, libvirt_conn, guest, slots_pool):
    root = os.path.join(testbed.tmp, "images")
    cache = ImageCache(root)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outcomes = {"created": 0, "refused": 0}
    rng = random.Random(14)
    for round_ in range(ROUNDS):
        version = f"1.{round_}"
        stage(cache, version, guest["base"])
        name = register_slot(testbed, testbed.name("race"))
        prune = subprocess.Popen(
            [sys.executable, "-c", PRUNE, root], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        testbed.process(prune)
        assert prune.stdout.readline().strip() == "ready"
        manager = SlotManager(libvirt_conn, utcnow())
        request = {
            "name": name,
            "hypervisor": "bvt",
            "image": {"identifier": "racer", "version": version, "cache_root": root},
            "pool": slots_pool,
            "vcpus": 1,
            "memory_mib": 64,
            "lifetime": 3600,
            "max_job_walltime": 60,
            "network": {"mode": "user"},
            "domain_type": "qemu",
        }
        prune.stdin.write("go\n")
        prune.stdin.flush()
        # a prune takes some 10-50 ms to reach the unlink: start the creation anywhere in that window
        time.sleep(rng.uniform(0.0, 0.06))
        try:
            manager.ensure([request], "present")
            outcomes["created"] += 1
        except SlotError as exc:
            assert "is not staged on this hypervisor" in str(exc), exc
            outcomes["refused"] += 1
        out, _err = prune.communicate(timeout=180)
        assert prune.returncode == 0, out
        domains = {d.name() for d in libvirt_conn.listAllDomains(0)}
        if name in domains:
            backing = qcow2_backing_file(os.path.join(SLOTS_DIR, f"{name}.qcow2"))
            assert backing and os.path.exists(backing), f"round {round_}: {name} lost its backing file {backing}"
            dom = libvirt_conn.lookupByName(name)
            dom.undefine()
        else:
            assert not slot_files(name), f"round {round_}: a refused creation left files behind"
    assert outcomes["created"] + outcomes["refused"] == ROUNDS
    cache.close()


def test_absent_over_a_remote_uri_deletes_volumes_on_the_hypervisor(testbed, libvirt_conn, guest, slots_pool, capsys):
    """The module runs where the pool directory is empty (a mount namespace with a tmpfs over it,
    as on a machine that is not the hypervisor) and reaches libvirtd as a remote URI."""
    name = register_slot(testbed, testbed.name("remote"))
    assert call(capsys, **tiny(guest, name=name, state="present", network={"ssh_port": 12694}))["changed"]
    assert len(slot_files(name)) == 2
    args = os.path.join(testbed.tmp, "args.json")
    with open(args, "w") as handle:
        params = {"name": name, "state": "absent", "force": True, "uri": "qemu+unix:///system", "hypervisor": "bvt"}
        json.dump({"ANSIBLE_MODULE_ARGS": params}, handle)
    script = (
        f"mount -t tmpfs bvt-empty {SLOTS_DIR} && exec {sys.executable} "
        f"-m ansible_collections.batchvirt.farm.plugins.modules.slot {args}"
    )
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], check=False, env=env, capture_output=True, text=True
    )
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    assert result["changed"], result
    assert "delete overlay" in result["actions"] and "delete seed ISO" in result["actions"]
    assert not slot_files(name)
    assert name not in {d.name() for d in libvirt_conn.listAllDomains(0)}


def test_failed_start_in_a_multi_slot_call_reports_the_slots_made(testbed, libvirt_conn, guest, slots_pool, capsys):
    good = register_slot(testbed, testbed.name("start"))
    bad = register_slot(testbed, testbed.name("start"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        result = call(
            capsys,
            **tiny(
                guest,
                slots=[{"name": good, "network": {"ssh_port": 12695}}, {"name": bad, "network": {"ssh_port": port}}],
            ),
        )
    finally:
        busy.close()
    assert result["failed"]
    assert f"slot {bad}: start failed" in result["msg"]
    by_name = {s["name"]: s for s in result["slots"]}
    assert by_name[good]["changed"] and by_name[good]["running"] and not by_name[good].get("failed")
    assert by_name[bad]["failed"] and "start failed" in by_name[bad]["msg"]
    assert libvirt_conn.lookupByName(good).isActive()
    assert bad not in {d.name() for d in libvirt_conn.listAllDomains(0)}
    assert not slot_files(bad)
