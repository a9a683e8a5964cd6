"""image_list and image_subscription through real playbook runs (ansible-runner, as AWX does),
with the list served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import time

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from tests.testbed.ansible import run_playbook
from tests.unit.plugins.modules.image_list.imagelist_pki import LIST_ID

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISH = os.path.join(HERE, "playbooks", "publish.yml")
SUBSCRIBE = os.path.join(HERE, "playbooks", "subscribe.yml")
ERRORS = os.path.join(HERE, "playbooks", "subscribe_errors.yml")


def _publish_vars(pki, root, base, images):
    return {
        "imagelist_path": str(root / "farm.list"),
        "imagelist_identifier": LIST_ID,
        "imagelist_uri": base + "/farm.list",
        "imagelist_cert": pki.endorser.cert_path,
        "imagelist_key": pki.endorser.key_path,
        "imagelist_images": images,
    }


def _image(root, name, data):
    (root / f"{name}.qcow2").write_bytes(data)
    return {
        "identifier": name,
        "version": "1.0",
        "path": str(root / f"{name}.qcow2"),
        "uri": f"https://images.example.org/{name}.qcow2",
    }


def test_publish_subscribe_tamper(pki, http_root, workdir):
    base, root = http_root
    images = [_image(root, "worker-a", b"a" * 4096), _image(root, "worker-b", b"b" * 1024)]
    pvars = _publish_vars(pki, root, base, images)

    first = run_playbook(PUBLISH, extravars=pvars)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed
    assert first.results("Publish the list")[0]["version"] == "1"
    second = run_playbook(PUBLISH, extravars=pvars)
    assert second.rc == 0, second.stdout[-3000:]
    assert not second.changed

    svars = {
        "imagelist_url": base + "/farm.list",
        "imagelist_identifier": LIST_ID,
        "imagelist_ca_dir": pki.ca_dir,
        "imagelist_endorser_dn": "/C=DE/O=GermanGrid/OU=KIT/CN=Image Endorser",
        "imagelist_cache_root": str(workdir / "images"),
    }
    sub = run_playbook(SUBSCRIBE, extravars=svars)
    assert sub.rc == 0, sub.stdout[-3000:]
    res = sub.results("Subscribe")[0]
    assert res["changed"] is True
    assert sorted(i["identifier"] for i in res["new"]) == ["worker-a", "worker-b"]
    again = run_playbook(SUBSCRIBE, extravars=svars)
    assert again.rc == 0 and not again.changed

    # the publisher drops an image: the subscriber sees it withdrawn
    pvars["imagelist_images"] = images[:1]
    assert run_playbook(PUBLISH, extravars=pvars).changed
    third = run_playbook(SUBSCRIBE, extravars=svars)
    res = third.results("Subscribe")[0]
    assert res["version"] == "2"
    assert [i["identifier"] for i in res["withdrawn"]] == ["worker-b"]

    # a man in the middle changes the served list: refused, the cache keeps version 2
    listing = root / "farm.list"
    listing.write_bytes(listing.read_bytes().replace(b'"hv:size": 4096', b'"hv:size": 4097'))
    tampered = run_playbook(SUBSCRIBE, extravars=svars)
    assert tampered.rc != 0
    res = tampered.results("Subscribe")[0]
    assert res["reason"] == "bad_signature"
    assert "altered after signing" in res["msg"]
    with ImageCache(str(workdir / "images")) as cache:
        assert cache.accepted_list_version(LIST_ID) == "2"
        assert [e["identifier"] for e in cache.endorsed(include_expired=True)] == ["worker-a"]


def test_http_errors_timeout_and_size(pki, http_root, workdir):
    base, root = http_root
    (root / "big.list").write_bytes(b"x" * 5000)
    started = time.monotonic()
    result = run_playbook(
        ERRORS,
        extravars={
            "imagelist_base": base,
            "imagelist_identifier": LIST_ID,
            "imagelist_ca_dir": pki.ca_dir,
            "imagelist_cache_root": str(workdir / "images"),
        },
    )
    assert result.rc == 0, result.stdout[-3000:]
    cases = [
        ("Subscribe to a missing list", "fetch_failed", "HTTP 404"),
        ("Subscribe to a server error", "fetch_failed", "HTTP 500"),
        ("Subscribe to a stalling server", "fetch_failed", "timed out"),
        ("Subscribe to a list far too large", "too_large", "more than the limit of 4096 bytes"),
    ]
    for task, reason, fragment in cases:
        res = result.results(task)[0]
        assert res.get("reason") == reason, (task, res.get("msg"))
        assert fragment in res["msg"], (task, res["msg"])
    # the stalling server costs the 2 s timeout, not its 5 s stall
    assert time.monotonic() - started < 60
    with ImageCache(str(workdir / "images")) as cache:
        assert cache.accepted_list_version(LIST_ID) is None
