"""The image module through ansible-runner against a real libvirt dir pool and HTTP server."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.testbed.ansible import run_playbook

PLAYBOOK = os.path.join(os.path.dirname(__file__), "playbooks", "stage.yml")
TASK = "Stage the image"


@pytest.fixture
def pool(testbed, libvirt_conn):
    """A dir pool over a fresh cache root, removed afterwards."""
    name = testbed.pool(testbed.name("images"))
    root = os.path.join(testbed.tmp, "images")
    os.makedirs(root)
    xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, root)
    handle = libvirt_conn.storagePoolDefineXML(xml, 0)
    handle.create(0)
    return name, root, handle


def _vars(pool, served_image, url, **extra):
    name, root, _handle = pool
    values = {
        "image_identifier": "worker",
        "image_version": "1",
        "image_source": url,
        "image_sha512": served_image.sha512,
        "image_size": served_image.size,
        "image_root": root,
        "image_pool": name,
    }
    values.update(extra)
    return values


def _one(result):
    results = result.results(TASK)
    assert len(results) == 1, result.stdout[-3000:]
    return results[0]


def test_image_module_stages_then_is_idempotent(pool, served):
    img = served.add("w.raw", size=2 * 1024 * 1024 + 3)
    extravars = _vars(pool, img, served.url("w.raw"))
    name, root, handle = pool

    check = run_playbook(PLAYBOOK, extravars=extravars, check=True)
    assert check.rc == 0, check.stdout[-3000:]
    assert _one(check)["changed"] is True
    assert os.listdir(root) == [] and served.server.sent["w.raw"] == 0

    first = run_playbook(PLAYBOOK, extravars=extravars)
    assert first.rc == 0, first.stdout[-3000:]
    res = _one(first)
    assert res["changed"] is True and res["state"] == "ready"
    assert res["path"] == os.path.join(root, "worker_1.raw") and res["volume"] == "worker_1.raw"
    assert res["pool"] == name and res["sha512"] == img.sha512 and res["transferred"] == img.size
    # The pool was refreshed: libvirt lists the volume with the image's size.
    vol = handle.storageVolLookupByName("worker_1.raw")
    assert vol.info()[1] == img.size

    second = run_playbook(PLAYBOOK, extravars=extravars)
    assert second.rc == 0, second.stdout[-3000:]
    assert _one(second)["changed"] is False and not second.changed
    assert served.server.sent["w.raw"] == img.size


def test_image_module_refuses_bad_checksum(pool, served):
    img = served.add("bad.raw")
    result = run_playbook(PLAYBOOK, extravars=_vars(pool, img, served.url("bad.raw"), image_sha512="ab" * 64))
    assert result.rc != 0
    res = _one(result)
    assert "sha512 mismatch for %s" % served.url("bad.raw") in res["msg"]
    assert os.listdir(pool[1]) == []


def test_absent_refused_while_a_domain_uses_the_image(pool, served, testbed, libvirt_conn):
    img = served.add("u.raw", size=1024 * 1024)
    extravars = _vars(pool, img, served.url("u.raw"))
    assert run_playbook(PLAYBOOK, extravars=extravars).rc == 0
    base = os.path.join(pool[1], "worker_1.raw")
    overlay = os.path.join(testbed.tmp, "slot.qcow2")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay], check=True, capture_output=True
    )
    dom_name = testbed.domain(testbed.name("slot"))
    libvirt_conn.defineXML(
        "<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory><os><type>hvm</type></os>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (dom_name, overlay)
    )
    absent = dict(extravars, image_state="absent")
    refused = run_playbook(PLAYBOOK, extravars=absent)
    assert refused.rc != 0
    res = _one(refused)
    assert "still used by %s" % dom_name in res["msg"] and res["users"] == [dom_name]
    assert os.path.exists(base)

    libvirt_conn.lookupByName(dom_name).undefine()
    removed = run_playbook(PLAYBOOK, extravars=absent)
    assert removed.rc == 0 and _one(removed)["changed"] is True and _one(removed)["state"] == "expired"
    assert not os.path.exists(base)
    again = run_playbook(PLAYBOOK, extravars=absent)
    assert again.rc == 0 and _one(again)["changed"] is False
