"""image_subscription: main() under patch_module_args against the real image cache."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from ansible_collections.batchvirt.farm.plugins.modules import image_subscription
from tests.unit.plugins.modules.image_list.imagelist_pki import DAY, LIST_ID, PKI, list_obj, sign_obj


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def run(args, capsys, check=False):
    if check:
        args = dict(args, _ansible_check_mode=True)
    # Module warnings are process-global, and once another test has loaded controller code they go
    # to the controller's Display instead of the result: give each run a clean module-side state.
    ansible_warnings._global_warnings.clear()
    saved, ansible_internal.is_controller = ansible_internal.is_controller, False
    try:
        with patch_module_args(args), pytest.raises(SystemExit):
            image_subscription.main()
    finally:
        ansible_internal.is_controller = saved
    return json.loads(capsys.readouterr().out)


def warnings_of(result):
    """The warning texts of a result (ansible-core 2.19 returns them as event dicts)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


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


def test_revoked_endorser_fails_the_task_and_stale_crl_warns(pki, tmp_path, capsys):
    """crl: use (the default) warns about a CRL past its nextUpdate; a revoked endorser fails the task."""
    good = tmp_path / "good.list"
    good.write_bytes(sign_obj(list_obj(pki, version="7"), pki.endorser))
    stale = pki.crl(pki.root, last_update=pki.now - 9 * DAY, next_update=pki.now - DAY)
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [stale])
    args = {"url": str(good), "identifier": LIST_ID, "ca_dir": ca_dir, "cache_root": str(tmp_path / "images")}
    warned = run(args, capsys)
    assert warned["changed"] is True
    assert any("past its nextUpdate" in w for w in warnings_of(warned))
    refused = run(dict(args, crl="require"), capsys)
    assert refused["failed"] is True
    assert refused["reason"] == "crl_expired"
    assert refused["field"] == "crl"

    pki.ca_dir_of(ca_dir, [pki.root], [pki.crl(pki.root, revoked=[pki.endorser])])
    revoked = run(args, capsys)
    assert revoked["failed"] is True
    assert revoked["reason"] == "revoked"
    assert "was revoked by" in revoked["msg"]
    with ImageCache(str(tmp_path / "images")) as cache:
        assert cache.accepted_list_version(LIST_ID) == "7"


def test_endorser_dn_alone_with_several_cas_fails_naming_endorser_ca(pki, tmp_path, capsys):
    good = tmp_path / "good.list"
    good.write_bytes(sign_obj(list_obj(pki), pki.endorser))
    ca_dir = pki.ca_dir_of(str(tmp_path / "igtf"), [pki.root, pki.rogue], [pki.crl(pki.root), pki.crl(pki.rogue)])
    args = {
        "url": str(good),
        "identifier": LIST_ID,
        "ca_dir": ca_dir,
        "cache_root": str(tmp_path / "images"),
        "endorser_dn": pki.endorser.dn,
    }
    result = run(args, capsys, check=True)
    assert result["failed"] is True
    assert result["reason"] == "endorser_ca_required"
    assert result["field"] == "endorser_ca"
    pinned = run(dict(args, endorser_ca=pki.endorser.ca), capsys)
    assert pinned["changed"] is True
    assert warnings_of(pinned) == []


def test_unsubscribe_forgets_the_list_so_a_publisher_may_start_again(pki, tmp_path, capsys):
    cache_root = str(tmp_path / "images")
    listed = tmp_path / "v7.list"
    listed.write_bytes(sign_obj(list_obj(pki, version="7"), pki.endorser))
    args = {"url": str(listed), "identifier": LIST_ID, "ca_dir": pki.ca_dir, "cache_root": cache_root}
    assert run(args, capsys)["version"] == "7"

    absent = {"identifier": LIST_ID, "state": "absent", "cache_root": cache_root}
    checked = run(absent, capsys, check=True)
    assert checked["changed"] is True
    assert checked["previous_version"] == "7"
    with ImageCache(cache_root) as cache:
        assert cache.accepted_list_version(LIST_ID) == "7", "check mode wrote the cache"

    gone = run(absent, capsys)
    assert gone["changed"] is True
    assert [(i["identifier"], i["version"]) for i in gone["withdrawn"]] == [("worker-el9", "1.0")]
    with ImageCache(cache_root) as cache:
        assert cache.accepted_list_version(LIST_ID) is None
        assert cache.endorsed(include_expired=True) == []
    assert run(absent, capsys)["changed"] is False

    # the publisher starts again at version 1: accepted, where before it was a rollback
    restarted = tmp_path / "v1.list"
    restarted.write_bytes(sign_obj(list_obj(pki, version="1"), pki.endorser))
    again = run(dict(args, url=str(restarted)), capsys)
    assert again.get("failed") is not True, again.get("msg")
    assert again["version"] == "1"


def test_unsubscribe_without_a_cache_creates_none_and_present_needs_url(pki, tmp_path, capsys):
    cache_root = tmp_path / "never"
    result = run({"identifier": LIST_ID, "state": "absent", "cache_root": str(cache_root)}, capsys)
    assert result["changed"] is False
    assert not cache_root.exists()
    missing = run({"identifier": LIST_ID, "cache_root": str(cache_root)}, capsys)
    assert missing["failed"] is True
    assert "url" in missing["msg"] and "ca_dir" in missing["msg"]
