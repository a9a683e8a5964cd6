"""Slots against the real libvirtd where things go wrong (issue 14, items 5 and 7):
prune racing slot creation never leaves a slot without its backing file; state=absent over a
remote URI deletes the overlay and the seed ISO on the hypervisor, not on the module's host;
a start that fails in a multi-slot call still reports the slots made."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import types
from typing import Any, Callable, Dict, Optional

import libvirt
import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, qcow2_backing_file
from ansible_collections.batchvirt.farm.plugins.module_utils._image_module import run_image
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import CacheLockTimeout
from ansible_collections.batchvirt.farm.plugins.module_utils._slot import SlotManager
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module
from tests.integration.slots.conftest import SLOTS_DIR, register_slot, slot_files
from tests.testbed.ansible import COLLECTIONS

# how long the overlay-to-define window stays open for the prune: an unguarded prune of one small
# image takes some 10-50 ms, a guarded one waits for the slot creation's lock
PRUNE_WINDOW = 5.0
LIST_ID = "bvt-list"
PRUNE_MODES = {"waits": 120.0, "finds_the_cache_busy": 0.5}  # the prune's lock_timeout


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
    """A ready image staged from the accepted list ``LIST_ID`` (version 1) that endorses it."""
    with open(source, "rb") as handle:
        data = handle.read()
    entry = {
        "identifier": "racer",
        "version": version,
        "uri": "file://" + source,
        "size": len(data),
        "sha512": hashlib.sha512(data).hexdigest(),
        "format": "qcow2",
    }
    cache.record_list(LIST_ID, "1", [entry])

    def fetch(_uri, partial, size, sha512, **_options):
        shutil.copyfile(source, partial)
        return types.SimpleNamespace(transferred=size, resumed_from=0)

    with cache.lock(60, purpose="test"):
        cache.stage("racer", version, entry["uri"], entry["size"], entry["sha512"], "qcow2", fetch, LIST_ID)


def withdraw_all(root: str) -> None:
    """What accepting version 2 of the signed list, which endorses nothing any more, records:
    the next prune expires every image of the list that no slot uses."""
    cache = ImageCache(root)
    try:
        cache.record_list(LIST_ID, "2", [])
    finally:
        cache.close()


class PruneInTheWindow:
    """At the moment the slot module calls ``defineXML`` (the overlay on the image exists), the
    signed list withdraws the image and a real prune (``run_image`` state=pruned, the image
    module's code, with its own libvirt connection and image cache object) runs in a thread;
    that moment stays open until the prune is done or has been waiting ``PRUNE_WINDOW`` seconds."""

    def __init__(self, libvirt_uri: str, root: str, lock_timeout: float) -> None:
        self.libvirt_uri = libvirt_uri
        self.root = root
        self.lock_timeout = lock_timeout
        self.thread: Optional[threading.Thread] = None
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.lock_holder_seen = ""

    def _prune(self) -> None:
        conn = libvirt.open(self.libvirt_uri)
        try:
            params = {
                "root": self.root,
                "pool": "bvt-none",
                "state": "pruned",
                "lock_timeout": self.lock_timeout,
                "force": False,
                "refresh_pool": False,
            }
            self.result = run_image(params, False, conn=conn)
        except BaseException as exc:  # reported to the test, not lost in the thread
            self.error = exc
        finally:
            conn.close()

    def wrap(self, define_xml: Callable[..., Any]) -> Callable[..., Any]:
        def define_after_a_prune(xml: str, *args: Any) -> Any:
            if self.thread is None:  # the first definition only: the slot under test
                cache = ImageCache(self.root)
                try:
                    self.lock_holder_seen = cache.lock_holder()
                finally:
                    cache.close()
                withdraw_all(self.root)
                self.thread = threading.Thread(target=self._prune, name="bvt-prune", daemon=True)
                self.thread.start()
                self.thread.join(PRUNE_WINDOW)
            return define_xml(xml, *args)

        return define_after_a_prune

    def finish(self) -> None:
        assert self.thread is not None, "the slot module never called defineXML"
        self.thread.join(180)
        assert not self.thread.is_alive(), "the prune never finished"


@pytest.mark.parametrize("mode", sorted(PRUNE_MODES))
def test_prune_racing_slot_creation_never_leaves_a_missing_backing_file(
    testbed, libvirt_uri, libvirt_conn, guest, slots_pool, monkeypatch, mode
):
    """A prune of the very image version a slot is being made on runs between the overlay's
    creation and ``defineXML`` (the slot module's own calls on the real libvirtd, the domain
    defined but not started): the defined slot's backing file still exists, and the prune either
    waited for the creation and then kept the version naming the slot as its user, or gave up
    finding the cache locked by the slot creation. Without the image cache lock that slot
    creation holds (``image_guard``), the prune expires the file under the new slot."""
    root = os.path.join(testbed.tmp, "images")
    cache = ImageCache(root)
    stage(cache, "1.0", guest["base"])
    staged = cache.get("racer", "1.0")
    cache.close()
    assert staged is not None and os.path.isfile(staged.path)
    name = register_slot(testbed, testbed.name("race"))
    window = PruneInTheWindow(libvirt_uri, root, PRUNE_MODES[mode])
    monkeypatch.setattr(libvirt_conn, "defineXML", window.wrap(libvirt_conn.defineXML))
    request = {
        "name": name,
        "hypervisor": "bvt",
        "image": {"identifier": "racer", "version": "1.0", "cache_root": root},
        "pool": slots_pool,
        "vcpus": 1,
        "memory_mib": 64,
        "lifetime": 3600,
        "max_job_walltime": 60,
        "network": {"mode": "user"},
        "domain_type": "qemu",
    }
    SlotManager(libvirt_conn, utcnow()).ensure([request], "present")
    window.finish()
    assert name in {d.name() for d in libvirt_conn.listAllDomains(0)}
    backing = qcow2_backing_file(os.path.join(SLOTS_DIR, f"{name}.qcow2"))
    assert backing == staged.path, backing
    assert os.path.isfile(backing), f"the prune removed {backing} under the new slot {name}: {window.result}"
    assert "purpose slot creation" in window.lock_holder_seen, (
        f"nobody held the image cache lock between the overlay and defineXML: {window.lock_holder_seen!r}"
    )
    if mode == "waits":
        assert window.error is None, window.error
        assert window.result is not None and not window.result["expired"], window.result
        assert [k["version"] for k in window.result["kept"]] == ["1.0"] and window.result["kept"][0]["users"] == [name]
        assert any(f"still used by {name}" in w for w in window.result["warnings"]), window.result["warnings"]
    else:
        assert isinstance(window.error, CacheLockTimeout), window.error or window.result
        assert "purpose slot creation" in str(window.error), str(window.error)


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
