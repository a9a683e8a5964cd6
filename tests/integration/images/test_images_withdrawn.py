"""A withdrawn image is never deployed again (issue 14, item 1), on real components: a signed list
published with image_list and served over HTTP, playbooks/prestage.yml (subscribe, stage, prune)
into a libvirt dir pool, the slot module against the real libvirtd, and ansible-inventory with the
batchvirt.farm.slots plugin.

The slots are defined (state present) with the tiny guest's kernel boot and never started: what is
tested is which image version a slot is created on, not the guest. The farm's recycle and rolling
update create their slots through the same slot module call (playbooks/tasks/recreate_slot.yml,
version "latest"), so the selection seen here is theirs.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, withdrawn_marker
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module
from tests.integration.images import test_images_prestage as prestage_tests
from tests.integration.inventory.conftest import run_inventory
from tests.integration.slots import conftest as slot_fixtures
from tests.integration.slots.tinyguest import make_base
from tests.testbed.ansible import run_playbook

# fixtures shared with the prestage and slot tests
site = prestage_tests.site
guest = slot_fixtures.guest
slots_pool = slot_fixtures.slots_pool
register_slot = slot_fixtures.register_slot
HERE, INVENTORY = prestage_tests.HERE, prestage_tests.INVENTORY

# two subscribed lists, as a site with a base-image list and a worker-image list: A endorses
# worker 1, B endorses worker 2 (one list names an image once, so two versions need two lists)
LIST_A = "6a1f3c9e-2b4d-4e8f-9a07-1c3e5d7f9b11"
LIST_B = "7b2e4d0f-3c5e-4f90-8b18-2d4f6e8a0c22"


def publish(site, served, list_id, images):  # noqa: F811 - site is the fixture's value
    pki = site[0]
    name = "%s.list" % list_id
    result = run_playbook(
        os.path.join(HERE, "playbooks", "publish.yml"),
        extravars={
            "list_path": os.path.join(served.directory, name),
            "list_identifier": list_id,
            "list_images": images,
            "signer_cert": pki.endorser.cert_path,
            "signer_key": pki.endorser.key_path,
        },
    )
    assert result.rc == 0, result.stdout[-3000:]
    return served.url(name)


def prestage(site, served):  # noqa: F811 - site is the fixture's value
    pki, pool_name, root, _pool = site
    subscriptions = [
        {
            "url": served.url("%s.list" % list_id),
            "identifier": list_id,
            "ca_dir": pki.ca_dir,
            "endorser_dn": pki.endorser.dn,
        }
        for list_id in (LIST_A, LIST_B)
    ]
    result = run_playbook(
        "playbooks/prestage.yml",
        inventory=INVENTORY,
        extravars={
            "farm_image_cache_root": root,
            "farm_image_cache_pool": pool_name,
            "farm_image_cache_timeout": 5,
            "farm_image_cache_subscriptions": subscriptions,
        },
    )
    assert result.rc == 0, result.stdout[-4000:]
    return result


def call_slot(capsys, guest, name, version, root):  # noqa: F811 - guest is the fixture's value
    args = {
        "name": name,
        "hypervisor": "bvt",
        "memory_mib": 128,
        "domain_type": "qemu",
        "state": "present",
        "image": {"identifier": "worker", "version": version, "cache_root": root},
        "boot": {"mode": "kernel", "kernel": guest["kernel"], "initrd": guest["initrd"], "cmdline": guest["cmdline"]},
    }
    with patch_module_args(args), pytest.raises(SystemExit):
        slot_module.main()
    return json.loads(capsys.readouterr().out)


def slot_image_version(conn, name):
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata

    return read_metadata(conn.lookupByName(name)).image_version


def image(served, version, size, identifier="worker"):
    name = "%s-%s.qcow2" % (identifier, version)
    make_base(os.path.join(served.directory, name), size)
    path = os.path.join(served.directory, name)
    return {"identifier": identifier, "version": version, "uri": served.url(name), "path": path, "format": "qcow2"}


def test_a_withdrawn_image_is_never_deployed_again(
    site,  # noqa: F811
    served,
    testbed,
    libvirt_conn,
    guest,  # noqa: F811
    slots_pool,  # noqa: F811
    capsys,
    tmp_path,
):
    _pki, pool_name, root, pool = site
    v1, v2 = image(served, "1", "64M"), image(served, "2", "65M")

    # accept v1 and v2, stage both
    publish(site, served, LIST_A, [v1])
    publish(site, served, LIST_B, [v2])
    prestage(site, served)
    assert sorted(os.listdir(root)) == ["worker_1.qcow2", "worker_2.qcow2"]

    # a slot runs on v2 (the newest endorsed)
    on_v2 = register_slot(testbed, testbed.name("wd-v2"))
    created = call_slot(capsys, guest, on_v2, "latest", root)
    assert created.get("changed"), created
    assert slot_image_version(libvirt_conn, on_v2) == "2"

    # the endorser publishes a list that withdraws v2 (B now endorses another image only)
    publish(site, served, LIST_B, [image(served, "1", "1M", identifier="tools")])
    withdrawn = prestage(site, served)
    pruned = withdrawn.results("Expire the images no subscribed list endorses any more")[0]
    assert [(k["version"], k["users"]) for k in pruned["kept"]] == [("2", [on_v2])]  # in use: kept
    assert os.path.exists(os.path.join(root, "worker_2.qcow2"))
    assert not os.path.exists(os.path.join(root, withdrawn_marker("worker", "1")))
    assert os.path.exists(os.path.join(root, withdrawn_marker("worker", "2")))

    # the running v2 slot is in the withdrawn group, with the variable
    config = tmp_path / "farm.farm.slots.yml"
    config.write_text(
        yaml.safe_dump(
            {"plugin": "batchvirt.farm.slots", "hypervisors": [testbed.uri], "image_pool": pool_name, "timeout": 60}
        )
    )
    inventory = run_inventory(str(config))
    assert on_v2 in inventory.hosts("farm_image_withdrawn")
    assert inventory.hostvars(on_v2)["farm_image_withdrawn"] is True

    # recycling it (remove, create with version latest) creates it on v1, never on v2
    removed = _absent(capsys, on_v2)
    assert removed.get("changed"), removed
    again = call_slot(capsys, guest, on_v2, "latest", root)
    assert again.get("changed"), again
    assert slot_image_version(libvirt_conn, on_v2) == "1"
    inventory = run_inventory(str(config))
    assert on_v2 not in inventory.hosts("farm_image_withdrawn")
    assert inventory.hostvars(on_v2)["farm_image_withdrawn"] is False

    # pinning the withdrawn version by name does not get around the selection either
    pinned = call_slot(capsys, guest, register_slot(testbed, testbed.name("wd-pin")), "2", root)
    assert pinned.get("failed"), pinned
    assert "withdrawn" in pinned["msg"], pinned["msg"]

    # nothing endorsed at all: a clear failure, never a fallback to the withdrawn v2
    with ImageCache(root) as cache, cache.lock(timeout=60):
        cache.record_list(LIST_A, "99", [])
    nothing = call_slot(capsys, guest, register_slot(testbed, testbed.name("wd-none")), "latest", root)
    assert nothing.get("failed"), nothing
    assert "nothing is endorsed by a currently accepted image list" in nothing["msg"]
    assert "2: withdrawn by list" in nothing["msg"]


def _absent(capsys, name):
    with (
        patch_module_args({"name": name, "state": "absent", "force": True, "shutdown_timeout": 0}),
        pytest.raises(SystemExit),
    ):
        slot_module.main()
    return json.loads(capsys.readouterr().out)
