"""image_subscription: main() under patch_module_args against the real image cache."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from ansible_collections.batchvirt.farm.plugins.modules import image_subscription
from tests.unit.plugins.modules.image_list.imagelist_pki import LIST_ID, PKI, list_obj, sign_obj


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def run(args, capsys, check=False):
    if check:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        image_subscription.main()
    return json.loads(capsys.readouterr().out)


def test_subscribe_idempotent_and_refusal_keeps_cache(pki, tmp_path, capsys):
    good = tmp_path / "good.list"
    good.write_bytes(sign_obj(list_obj(pki, version="7"), pki.endorser))
    args = {
        "url": str(good),
        "identifier": LIST_ID,
        "ca_dir": pki.ca_dir,
        "cache_root": str(tmp_path / "images"),
        "endorser_dn": "CN=Image Endorser,OU=KIT,O=GermanGrid,C=DE",
    }
    checked = run(args, capsys, check=True)
    assert checked["changed"] is True
    assert [i["identifier"] for i in checked["new"]] == ["worker-el9"]

    first = run(args, capsys)
    assert first["changed"] is True
    assert first["version"] == "7"
    assert [i["identifier"] for i in first["new"]] == ["worker-el9"]

    second = run(args, capsys)
    assert second["changed"] is False
    assert [i["identifier"] for i in second["current"]] == ["worker-el9"]

    replay = tmp_path / "replay.list"
    replay.write_bytes(sign_obj(list_obj(pki, version="6"), pki.endorser))
    refused = run(dict(args, url=str(replay)), capsys)
    assert refused["failed"] is True
    assert refused["reason"] == "version_rollback"
    assert "lower than the version '7' already accepted" in refused["msg"]

    other = tmp_path / "other.list"
    other.write_bytes(sign_obj(list_obj(pki, signer=pki.other, version="8"), pki.other))
    refused = run(dict(args, url=str(other)), capsys)
    assert refused["reason"] == "endorser_mismatch"
    assert "not by the expected endorser" in refused["msg"]

    with ImageCache(str(tmp_path / "images")) as cache:
        assert cache.accepted_list_version(LIST_ID) == "7"
        assert [e["identifier"] for e in cache.endorsed(include_expired=True)] == ["worker-el9"]


def test_fetch_failure(pki, tmp_path, capsys):
    result = run(
        {
            "url": str(tmp_path / "nope.list"),
            "identifier": LIST_ID,
            "ca_dir": pki.ca_dir,
            "cache_root": str(tmp_path / "c"),
        },
        capsys,
    )
    assert result["failed"] is True
    assert result["reason"] == "fetch_failed"
    assert "nope.list" in result["msg"]
