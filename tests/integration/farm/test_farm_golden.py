"""The golden node end to end on the farm's real daemons: a golden VM booted from the farm's worker
base image, configured over SSH (batch_client), sealed, shut down cleanly, snapshotted into a new
compressed image version, published in a signed list that a subscriber verifies, and started
again; the lifecycle inventory keeps it out of every lifecycle group.

It runs in the farm package so that the farm's rolling update
(test_farm_operations.py) stages this very image as its "security update" and proves that VMs
booted from it register and run jobs: one golden build for both (each took 4-5 minutes under TCG).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file
from tests.integration.farm import farmbed
from tests.integration.inventory.conftest import run_inventory
from tests.testbed.ansible import LOCALHOST, run_playbook
from tests.unit.plugins.modules.image_list.imagelist_pki import PKI

pytestmark = pytest.mark.slow


def test_golden_node_builds_seals_snapshots_and_publishes(farm):
    import libvirt

    name = "golden-" + farmbed.GOLDEN_TYPE
    work = os.path.join(farm.tmp, "golden-test")
    pki = PKI(os.path.join(work, "pki"))
    out = farm.golden_vars()["farm_golden_node_dir"]
    result = farm.run_golden_node(
        farm_golden_node_restart=True,
        farm_golden_node_keep=2,
        farm_golden_node_publish=True,
        farm_golden_node_list_path=os.path.join(out, "site.list"),
        farm_golden_node_list_identifier="bvt-golden-images",
        farm_golden_node_list_uri_base="file://" + out,
        farm_golden_node_list_allow_file_uri=True,
        farm_golden_node_list_signer_cert=pki.endorser.cert_path,
        farm_golden_node_list_signer_key=pki.endorser.key_path,
    )
    assert result.rc == 0, result.stdout[-6000:]

    # sealed inside the guest right before the snapshot
    assert result.task_events("Clean cloud-init state and logs"), "the golden VM was not sealed"
    snap = result.results("Snapshot the golden VM into a new image version")[0]
    assert snap["changed"] and snap["shut_down"] is True
    image = snap["image"]
    assert os.path.basename(image["path"]) == "%s-%s.qcow2" % (farmbed.GOLDEN_TYPE, image["version"])
    assert (image["size"], image["sha512"]) == hash_file(image["path"])
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image["path"]], capture_output=True, check=True).stdout
    )
    assert "backing-filename" not in info and info["format"] == "qcow2"
    assert farm.golden == image  # the rolling update's new version

    conn = libvirt.open("qemu:///system")
    try:
        # the golden VM runs again (restart) and is a golden node, not a worker
        assert conn.lookupByName(name).isActive()

        # a subscriber accepts the signed list and finds the new version endorsed
        subscribed = run_playbook(
            os.path.join(farmbed.PLAYBOOKS, "subscribe.yml"),
            inventory=LOCALHOST,
            extravars={
                "bvt_url": "file://" + os.path.join(out, "site.list"),
                "bvt_ca_dir": pki.ca_dir_of(os.path.join(work, "ca"), [pki.root]),
                "bvt_cache_root": os.path.join(work, "cache", "images"),
            },
        )
        assert subscribed.rc == 0, subscribed.stdout[-4000:]
        endorsed = subscribed.results("Subscribe to the golden list")[0]
        assert [(i["identifier"], i["version"]) for i in endorsed["new"]] == [(farmbed.GOLDEN_TYPE, image["version"])]

        # the lifecycle inventory keeps the golden VM out of the farm
        inventory_file = os.path.join(work, "golden.farm.slots.yml")
        with open(inventory_file, "w") as handle:
            json.dump(
                {"plugin": "batchvirt.farm.slots", "hypervisors": [{"uri": "qemu:///system", "name": "localhost"}]},
                handle,
            )
        groups = run_inventory(inventory_file)
        assert name in groups.hosts("farm_golden")
        for key, value in groups.data.items():
            if key.startswith("farm_lifecycle_"):
                assert name not in value.get("hosts", []), key
    finally:
        # its guest would take a core from the farm's later tests: off until the farm is removed
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        conn.close()
