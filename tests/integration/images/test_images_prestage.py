"""playbooks/prestage.yml (role image_cache) with a real signed list, HTTP server and dir pool."""

from __future__ import annotations

import os
import sys

import pytest

from tests.testbed.ansible import run_playbook
from tests.unit.plugins.modules.image_list.imagelist_pki import PKI

HERE = os.path.dirname(__file__)
LIST_ID = "3f0e8c2a-1b7d-4e59-8a61-0c9d2e4f6a71"
INVENTORY = {
    "all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}},
    "hypervisors": {"hosts": {"localhost": {}}},
}


@pytest.fixture
def site(testbed, libvirt_conn, served):
    pki = PKI(os.path.join(testbed.tmp, "pki"))
    name = testbed.pool(testbed.name("prestage"))
    root = os.path.join(testbed.tmp, "images")
    os.makedirs(root)
    pool = libvirt_conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, root), 0
    )
    pool.create(0)
    return pki, name, root, pool


def publish(site, served, images):
    pki = site[0]
    list_path = os.path.join(served.directory, "farm.list")
    result = run_playbook(
        os.path.join(HERE, "playbooks", "publish.yml"),
        extravars={
            "list_path": list_path,
            "list_identifier": LIST_ID,
            "list_images": images,
            "signer_cert": pki.endorser.cert_path,
            "signer_key": pki.endorser.key_path,
        },
    )
    assert result.rc == 0, result.stdout[-3000:]
    return served.url("farm.list")


def prestage(site, list_url, check=False):
    pki, pool_name, root, _pool = site
    return run_playbook(
        "playbooks/prestage.yml",
        check=check,
        inventory=INVENTORY,
        extravars={
            "farm_image_cache_root": root,
            "farm_image_cache_pool": pool_name,
            "farm_image_cache_timeout": 5,
            "farm_image_cache_subscriptions": [
                {"url": list_url, "identifier": LIST_ID, "ca_dir": pki.ca_dir, "endorser_dn": pki.endorser.dn}
            ],
        },
    )


def test_prestage_subscribes_stages_and_prunes(site, served):
    _pki, _name, root, pool = site
    v1 = served.add("worker-1.raw", size=1024 * 1024 + 1, seed=1)
    image1 = {"identifier": "worker", "version": "1", "uri": served.url(v1.name), "path": v1.path, "format": "raw"}
    list_url = publish(site, served, [image1])

    check = prestage(site, list_url, check=True)
    assert check.rc == 0, check.stdout[-4000:]
    assert check.changed and os.listdir(root) == [] and served.server.sent[v1.name] == 0

    first = prestage(site, list_url)
    assert first.rc == 0, first.stdout[-4000:]
    staged = [r for r in first.results("Pre-stage the images the subscribed lists endorse") if "results" in r]
    assert [(r["version"], r["state"], r["changed"]) for r in staged[0]["results"]] == [("1", "ready", True)]
    assert os.listdir(root) == ["worker_1.raw"]
    pool.refresh(0)
    assert pool.storageVolLookupByName("worker_1.raw").info()[1] == v1.size

    second = prestage(site, list_url)
    assert second.rc == 0, second.stdout[-4000:]
    assert not second.changed, second.changed_tasks()

    # The site publishes version 2 and withdraws version 1: 2 is staged, 1 is pruned.
    v2 = served.add("worker-2.raw", size=1024 * 1024 + 2, seed=2)
    image2 = {"identifier": "worker", "version": "2", "uri": served.url(v2.name), "path": v2.path, "format": "raw"}
    list_url = publish(site, served, [image2])
    third = prestage(site, list_url)
    assert third.rc == 0, third.stdout[-4000:]
    pruned = third.results("Expire the images no subscribed list endorses any more")
    assert [(e["identifier"], e["version"]) for e in pruned[0]["expired"]] == [("worker", "1")]
    assert os.listdir(root) == ["worker_2.raw"]
