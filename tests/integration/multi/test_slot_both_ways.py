"""The slot module both ways a site runs it, on the multi-hypervisor bed: on the hypervisor (the
hypervisor is the task's host, ``uri`` qemu:///system there) and on the controller with a remote
``uri`` (qemu+ssh://). Either way the overlay, the seed ISO (with the munge key) and the console
log are made on that hypervisor, and ``state: absent`` deletes them there."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import pytest

from tests.integration.multi.conftest import TIMINGS
from tests.testbed.ansible import COLLECTIONS, PlaybookResult, run_playbook
from tests.testbed.bed import libvirt
from tests.testbed.hypervisors import Hypervisor, HypervisorBed

pytestmark = pytest.mark.multihv

IMAGE = "/var/lib/batchvirt/images/bvt-both-ways.qcow2"
SLOTS = "/var/lib/batchvirt/slots"
CONSOLE = "/var/log/libvirt/qemu"
MUNGE_KEY = base64.b64encode(b"bvt-both-ways-munge-key-" + b"k" * 40).decode()

PLAY = """
- name: One slot, made and removed by batchvirt.farm.slot
  hosts: "{{ bvt_target }}"
  gather_facts: false
  tasks:
    - name: Slot
      batchvirt.farm.slot:
        name: "{{ bvt_name }}"
        uri: "{{ bvt_uri | default(omit) }}"
        state: "{{ bvt_state }}"
        force: true
        shutdown_timeout: 0
        image: {path: "%s", format: qcow2}
        vcpus: 1
        memory_mib: 128
        network: {mode: user, ssh_port: 10122}
        batch:
          system: slurm
          node_name: "{{ bvt_name }}"
          controller: 198.18.1.1
          munge_key: "%s"

    - name: Hypervisor info
      batchvirt.farm.hypervisor_info:
      when: bvt_info | default(false)
""" % (IMAGE, MUNGE_KEY)


def _files(name: str) -> Dict[str, str]:
    return {
        "overlay": f"{SLOTS}/{name}.qcow2",
        "seed ISO": f"{SLOTS}/{name}-seed.iso",
        "console log": f"{CONSOLE}/{name}-console.log",
    }


def _on_controller(name: str) -> Dict[str, bool]:
    """What of the slot exists on this machine (the controller), which is not the hypervisor."""
    return {what: os.path.exists(path) for what, path in _files(name).items()}


def _on_hypervisor(hv: Hypervisor, name: str) -> Dict[str, bool]:
    return {what: os.path.exists(hv.path(path)) for what, path in _files(name).items()}


def _domain_state(bed: HypervisorBed, hv: Hypervisor, name: str) -> Optional[bool]:
    """None when the domain does not exist on ``hv``, else whether it runs."""
    conn = libvirt.open(bed.uri(hv))
    try:
        domains = {d.name(): d for d in conn.listAllDomains(0)}
        return bool(domains[name].isActive()) if name in domains else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def staged(hvbed: HypervisorBed, configured) -> str:
    """A small qcow2 image in the images pool of hv1 and hv2 (what batchvirt.farm.image stages
    there; no guest needs to boot from it for these tests)."""
    assert configured.rc == 0, configured.stdout[-3000:]
    for hv in hvbed.hypervisors[:2]:
        hv.exec("qemu-img", "create", "-q", "-f", "qcow2", IMAGE, "64M")
    return IMAGE


def _inventory(bed: HypervisorBed) -> Dict[str, Any]:
    inventory = bed.inventory()
    inventory["all"]["hosts"] = {
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    }  # type: ignore[index]
    return inventory


def _play(bed: HypervisorBed, tmp_path, target: str, name: str, state: str, uri: str = "", info: bool = False):  # type: ignore[no-untyped-def]
    play = tmp_path / "slot.yml"
    play.write_text(PLAY)
    extravars: Dict[str, Any] = {"bvt_target": target, "bvt_name": name, "bvt_state": state, "bvt_info": info}
    if uri:
        extravars["bvt_uri"] = uri
    run: PlaybookResult = run_playbook(str(play), inventory=_inventory(bed), extravars=extravars, timeout=600)
    assert run.rc == 0 and len(run.results("Slot")) == 1, run.stdout[-4000:]
    return run


def _slot(bed: HypervisorBed, tmp_path, target: str, name: str, state: str, uri: str = "") -> Dict[str, Any]:
    return _play(bed, tmp_path, target, name, state, uri).results("Slot")[0]


def _check_seed(hv: Hypervisor, name: str) -> None:
    seed = hv.path(f"{SLOTS}/{name}-seed.iso")
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o600
    with open(seed, "rb") as fh:
        assert MUNGE_KEY.encode() in fh.read(), "the seed ISO on the hypervisor lacks the munge key"


def _both_ways(bed: HypervisorBed, hv: Hypervisor, tmp_path, target: str, uri: str, step: str) -> Dict[str, Any]:
    name = f"bvt-way-{hv.name}"
    start = time.monotonic()
    made = _slot(bed, tmp_path, target, name, "running", uri)
    assert made["changed"] and made["running"], made
    assert made["overlay"] == f"{SLOTS}/{name}.qcow2" and made["seed"] == f"{SLOTS}/{name}-seed.iso"
    assert _domain_state(bed, hv, name) is True
    # on the hypervisor, not here (this machine has no slot of that name)
    assert _on_hypervisor(hv, name) == {"overlay": True, "seed ISO": True, "console log": True}
    assert not any(_on_controller(name).values()), _on_controller(name)
    _check_seed(hv, name)
    # the overlay is backed by the image staged on that hypervisor
    info = json.loads(hv.exec("qemu-img", "info", "-U", "--output=json", f"{SLOTS}/{name}.qcow2").stdout)
    assert info["backing-filename"] == IMAGE

    # the rerun changes nothing; on the hypervisor, hypervisor_info (it has no uri: it reads the
    # role's record /etc/batchvirt/hypervisor.json where it runs) sees the slot and the record
    run = _play(bed, tmp_path, target, name, "running", uri, info=not uri)
    again = run.results("Slot")[0]
    assert not again["changed"], again
    if not uri:
        info = run.results("Hypervisor info")[0]
        assert info["hostname"] == hv.name
        assert info["reservation"]["memory_mib"] == 512, info["reservation"]
        assert name in [s["name"] for s in info["slots"]], info["slots"]
        pools = {p["name"]: p["path"] for p in info["pools"]}
        assert pools.get("batchvirt-slots") == SLOTS, info["pools"]

    gone = _slot(bed, tmp_path, target, name, "absent", uri)
    TIMINGS[step] = round(time.monotonic() - start, 1)
    assert gone["changed"], gone
    assert "delete overlay" in gone["actions"] and "delete seed ISO" in gone["actions"], gone["actions"]
    assert gone["end"]["how"] == "destroyed", gone["end"]
    assert isinstance(gone["end"]["console_tail"], list)
    assert _domain_state(bed, hv, name) is None
    assert _on_hypervisor(hv, name) == {"overlay": False, "seed ISO": False, "console log": False}
    assert not any(_on_controller(name).values())
    # the staged image stays
    assert os.path.exists(hv.path(IMAGE))
    return gone


def test_slot_run_on_the_hypervisor(hvbed: HypervisorBed, staged, tmp_path) -> None:
    """The hypervisor is the task's host: qemu:///system there, files in its own filesystem."""
    hv = hvbed.hypervisors[0]
    _both_ways(hvbed, hv, tmp_path, hv.name, "", "slot both ways: on the hypervisor (make, rerun, absent)")


def test_slot_run_on_the_controller_with_a_remote_uri(hvbed: HypervisorBed, staged, tmp_path) -> None:
    """localhost with uri qemu+ssh:// to hv2: the files are made and deleted on hv2."""
    hv = hvbed.hypervisors[1]
    _both_ways(
        hvbed,
        hv,
        tmp_path,
        "localhost",
        hvbed.uri(hv),
        "slot both ways: controller with qemu+ssh (make, rerun, absent)",
    )


def test_remote_image_path_must_be_a_pool_volume_of_the_hypervisor(hvbed: HypervisorBed, staged, tmp_path) -> None:
    """With a remote uri, image.path names a file on the hypervisor: one outside its pools is
    refused naming the option (it cannot be read from the controller)."""
    hv = hvbed.hypervisors[1]
    missing = "/var/tmp/bvt-not-in-a-pool.qcow2"
    hv.exec("qemu-img", "create", "-q", "-f", "qcow2", missing, "64M")
    args = tmp_path / "args.json"
    params = {"name": "bvt-way-refused", "uri": hvbed.uri(hv), "image": {"path": missing}, "state": "present"}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    done = subprocess.run(
        [sys.executable, "-m", "ansible_collections.batchvirt.farm.plugins.modules.slot", str(args)],
        env=dict(os.environ, PYTHONPATH=COLLECTIONS),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    result = json.loads(done.stdout)
    assert result.get("failed"), result
    assert f"image.path {missing} is not a volume of an active storage pool on the hypervisor" in result["msg"]
    assert _domain_state(hvbed, hv, "bvt-way-refused") is None
    assert not os.path.exists(hv.path(f"{SLOTS}/bvt-way-refused.qcow2"))
