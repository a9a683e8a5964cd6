"""Revocation end to end: a list published with image_list, served over HTTP, subscribed with
image_subscription against a ca_dir whose CRL the real ``openssl ca`` writes (-gencrl, -revoke),
laid out as fetch-crl leaves /etc/grid-security/certificates."""

from __future__ import annotations

import os

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from tests.integration.imagelist.conftest import OpensslCA
from tests.testbed.ansible import run_playbook
from tests.unit.plugins.modules.image_list.imagelist_pki import DAY, LIST_ID

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISH = os.path.join(HERE, "playbooks", "publish.yml")
SUBSCRIBE = os.path.join(HERE, "playbooks", "subscribe.yml")


def _stamp(when):
    return when.strftime("%Y%m%d%H%M%SZ")


def _warned(run, text=""):
    """Whether the run printed a warning (containing ``text``; the display may wrap it)."""
    return "[WARNING]" in run.stdout and text in " ".join(run.stdout.split())


def _subscribe(svars, **extra):
    run = run_playbook(SUBSCRIBE, extravars=dict(svars, **extra))
    return run, run.results("Subscribe")[0]


def test_crl_policy_and_a_revoked_endorser(pki, http_root, workdir):
    base, root = http_root
    images = []
    for name in ("worker-a", "worker-b"):
        (root / f"{name}.qcow2").write_bytes(name.encode() * 512)
        images.append(
            {"identifier": name, "version": "1.0", "path": str(root / f"{name}.qcow2"), "uri": f"{base}/{name}.qcow2"}
        )
    pvars = {
        "imagelist_path": str(root / "farm.list"),
        "imagelist_identifier": LIST_ID,
        "imagelist_uri": base + "/farm.list",
        "imagelist_cert": pki.endorser.cert_path,
        "imagelist_key": pki.endorser.key_path,
        "imagelist_images": images,
    }
    published = run_playbook(PUBLISH, extravars=pvars)
    assert published.rc == 0, published.stdout[-3000:]

    ca_dir = pki.ca_dir_of(str(workdir / "certificates"), [pki.root])
    ca = OpensslCA(str(workdir / "openssl-ca"), pki.root, ca_dir)
    svars = {
        "imagelist_url": base + "/farm.list",
        "imagelist_identifier": LIST_ID,
        "imagelist_ca_dir": ca_dir,
        "imagelist_endorser_dn": pki.endorser.dn,
        "imagelist_cache_root": str(workdir / "images"),
    }

    # no CRL yet: require refuses, use (the default) accepts with a warning
    run, res = _subscribe(svars, imagelist_crl="require")
    assert run.rc != 0 and res["reason"] == "crl_missing", res.get("msg")
    run, res = _subscribe(svars)
    assert run.rc == 0, run.stdout[-3000:]
    assert res["version"] == "1" and res["changed"] is True
    assert _warned(run, "no CRL of /C=DE/O=GermanGrid/CN=Test Root CA"), run.stdout[-3000:]

    # a CRL past its nextUpdate (fetch-crl stopped running): an error under require, a warning under use
    ca.gencrl(last_update=_stamp(pki.now - 9 * DAY), next_update=_stamp(pki.now - DAY))
    run, res = _subscribe(svars, imagelist_crl="require")
    assert run.rc != 0 and res["reason"] == "crl_expired", res.get("msg")
    run, res = _subscribe(svars, imagelist_crl="use")
    assert run.rc == 0 and res["changed"] is False
    assert _warned(run, "past its nextUpdate"), run.stdout[-3000:]

    # a current CRL: accepted under require without a word
    ca.gencrl()
    run, res = _subscribe(svars, imagelist_crl="require")
    assert run.rc == 0, run.stdout[-3000:]
    assert not _warned(run), run.stdout[-3000:]

    # the CA revokes the endorser; the publisher (still signing with it) withdraws worker-b
    ca.revoke(pki.endorser)
    ca.gencrl()
    republished = run_playbook(PUBLISH, extravars=dict(pvars, imagelist_images=images[:1]))
    assert republished.rc == 0 and republished.changed
    run, res = _subscribe(svars)
    assert run.rc != 0
    assert res["reason"] == "revoked", res.get("msg")
    assert "was revoked by /C=DE/O=GermanGrid/CN=Test Root CA" in res["msg"]
    # refused: the cache keeps version 1 and both images it endorsed
    with ImageCache(str(workdir / "images")) as cache:
        assert cache.accepted_list_version(LIST_ID) == "1"
        assert sorted(e["identifier"] for e in cache.endorsed(include_expired=True)) == ["worker-a", "worker-b"]
