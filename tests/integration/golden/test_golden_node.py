"""The golden node end to end on real daemons: a golden VM booted from the worker base image,
configured over SSH (batch_client), sealed, shut down cleanly, snapshotted into a new compressed
image version, published in a signed list that a subscriber verifies, and started again; the
lifecycle inventory keeps it out of every lifecycle group."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file
from tests.testbed.ansible import LOCALHOST, ROOT, run_playbook

pytestmark = pytest.mark.slow

TYPE = "bvtgold"
SSH_PORT = 27299
WORKER_IMAGE = os.path.join(ROOT, "tests", "integration", "farm", "playbooks", "worker_image.yml")


def _pki(directory: str) -> dict:
    os.makedirs(os.path.join(directory, "ca"))
    script = """
set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/C=XX/O=bvt/CN=Golden Test CA" -keyout ca.key -out ca/ca.pem
openssl req -newkey rsa:2048 -nodes -subj "/C=XX/O=bvt/CN=Golden Endorser" -keyout endorser.key -out endorser.csr
printf 'keyUsage=digitalSignature\\nextendedKeyUsage=emailProtection\\n' > ext.cnf
openssl x509 -req -in endorser.csr -CA ca/ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile ext.cnf -out endorser.pem
"""
    subprocess.run(["sh", "-c", script], cwd=directory, check=True, capture_output=True)
    return {"cert": os.path.join(directory, "endorser.pem"), "key": os.path.join(directory, "endorser.key")}


def test_golden_node_builds_seals_snapshots_and_publishes(testbed, libvirt_conn):
    built = run_playbook(WORKER_IMAGE, inventory=LOCALHOST)
    assert built.rc == 0, built.stdout[-4000:]
    base = built.results("Report the image description")[0]["farm_base_image"]
    description = os.path.join(os.path.dirname(base["file"]), "worker-base.json")

    name = testbed.domain("golden-" + TYPE)
    testbed.volume("batchvirt-slots", name + ".qcow2")
    testbed.volume("batchvirt-slots", name + "-seed.iso")
    pki = _pki(os.path.join(testbed.tmp, "pki"))
    out = os.path.join(testbed.tmp, "golden")
    extravars = {
        "farm_golden_node_type": TYPE,
        "farm_golden_node_base_image": description,
        "farm_golden_node_vcpus": 1,
        "farm_golden_node_memory_mib": 768,
        "farm_golden_node_ssh_port": SSH_PORT,
        "farm_golden_node_ssh_key": os.path.join(testbed.tmp, "golden_key"),
        "farm_golden_node_dir": out,
        "farm_golden_node_keep": 2,
        "farm_golden_node_publish": True,
        "farm_golden_node_list_path": os.path.join(out, "site.list"),
        "farm_golden_node_list_identifier": "bvt-golden-images",
        "farm_golden_node_list_uri_base": "file://" + out,
        "farm_golden_node_list_allow_file_uri": True,
        "farm_golden_node_list_signer_cert": pki["cert"],
        "farm_golden_node_list_signer_key": pki["key"],
        # the worker image carries slurmd and munge already: configure only, start nothing
        "farm_batch_client_install_packages": False,
        "farm_batch_client_start": False,
        "farm_batch_client_enable": False,
    }
    result = run_playbook("playbooks/golden_node.yml", inventory=LOCALHOST, extravars=extravars)
    assert result.rc == 0, result.stdout[-6000:]

    # sealed inside the guest right before the snapshot
    assert result.task_events("Clean cloud-init state and logs"), "the golden VM was not sealed"
    snap = result.results("Snapshot the golden VM into a new image version")[0]
    assert snap["changed"] and snap["shut_down"] is True
    image = snap["image"]
    assert os.path.basename(image["path"]) == "%s-%s.qcow2" % (TYPE, image["version"])
    assert (image["size"], image["sha512"]) == hash_file(image["path"])
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image["path"]], capture_output=True, check=True).stdout
    )
    assert "backing-filename" not in info and info["format"] == "qcow2"

    # the golden VM runs again (restart) and is a golden node, not a worker
    dom = libvirt_conn.lookupByName(name)
    assert dom.isActive()

    # a subscriber accepts the signed list and finds the new version endorsed
    subscribed = run_playbook(
        os.path.join(os.path.dirname(__file__), "subscribe.yml"),
        inventory=LOCALHOST,
        extravars={
            "bvt_url": "file://" + os.path.join(out, "site.list"),
            "bvt_ca_dir": os.path.join(testbed.tmp, "pki", "ca"),
            "bvt_cache_root": os.path.join(testbed.tmp, "cache", "images"),
        },
    )
    assert subscribed.rc == 0, subscribed.stdout[-4000:]
    endorsed = subscribed.results("Subscribe to the golden list")[0]
    assert [(i["identifier"], i["version"]) for i in endorsed["new"]] == [(TYPE, image["version"])], endorsed

    # the lifecycle inventory keeps the golden VM out of the farm
    inventory_file = os.path.join(testbed.tmp, "golden.farm.slots.yml")
    with open(inventory_file, "w") as handle:
        json.dump(
            {"plugin": "batchvirt.farm.slots", "hypervisors": [{"uri": "qemu:///system", "name": "localhost"}]}, handle
        )
    listed = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", inventory_file, "--list"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections")),
    )
    groups = json.loads(listed.stdout)
    assert name in groups["farm_golden"]["hosts"]
    for key, value in groups.items():
        if key.startswith("farm_lifecycle_"):
            assert name not in value.get("hosts", []), key
