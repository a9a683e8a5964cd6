"""Publishing (build, hash, sign, idempotence) and subscribing (verify + record in the real image cache)."""

from __future__ import annotations

import datetime
import json
import os
import stat

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist as il
from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist_fetch
from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time
from tests.unit.plugins.modules.image_list.imagelist_pki import DAY, LIST_ID, PKI, sha


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def files(tmp_path):
    out = {}
    for name, data in (("a", b"A" * 3_000_001), ("b", b"B" * 17)):
        path = tmp_path / f"{name}.qcow2"
        path.write_bytes(data)
        out[name] = (str(path), data)
    return out


def images(files, names=("a", "b"), version="1.0"):
    return [
        {
            "identifier": f"img-{n}",
            "version": version,
            "uri": f"https://images.example.org/{n}.qcow2",
            "path": files[n][0],
            "extra": {"sl:os": "Linux"},
        }
        for n in names
    ]


def publish(pki, path, imgs, **kw):
    kw.setdefault("now", pki.now)
    return il.publish(
        path=str(path),
        identifier=LIST_ID,
        images=imgs,
        signer_cert=pki.endorser.cert_path,
        signer_key=pki.endorser.key_path,
        **kw,
    )


def test_publish_then_unchanged_then_bumped(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    first = publish(pki, path, images(files), extra={"ad:vo": "atlas"}, source="https://images.example.org/")
    assert first["changed"] is True
    assert first["reason"] == "created"
    assert first["version"] == "1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert first["images"][0]["sha512"] == sha(files["a"][1])
    assert first["images"][0]["size"] == 3_000_001
    ilist = il.verify(path.read_bytes(), pki.ca_dir, LIST_ID, now=pki.now)
    assert ilist.extra == {"ad:vo": "atlas"}
    assert ilist.source == "https://images.example.org/"
    assert ilist.images[0].extra == {"sl:os": "Linux"}
    assert ilist.expires == pki.now + 28 * DAY
    signed = path.read_bytes()

    # later, nothing changed: no new signature, the file is untouched
    again = publish(
        pki, path, images(files), extra={"ad:vo": "atlas"}, source="https://images.example.org/", now=pki.now + DAY
    )
    assert again["changed"] is False
    assert again["version"] == "1"
    assert path.read_bytes() == signed

    # one image changed: the version is bumped and the list re-signed
    with open(files["b"][0], "ab") as fh:
        fh.write(b"more")
    third = publish(
        pki, path, images(files), extra={"ad:vo": "atlas"}, source="https://images.example.org/", now=pki.now + 2 * DAY
    )
    assert third["changed"] is True
    assert third["reason"] == "content changed"
    assert third["version"] == "2"
    assert '"hv:version": "1"' in third["diff"]["before"]
    assert '"hv:version": "2"' in third["diff"]["after"]
    ilist = il.verify(path.read_bytes(), pki.ca_dir, LIST_ID, now=pki.now + 2 * DAY, accepted_version="1")
    assert ilist.image("img-b").size == 21


def test_check_mode_writes_nothing(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    result = publish(pki, path, images(files), check_mode=True)
    assert result["changed"] is True
    assert json.loads(result["diff"]["after"])["hv:imagelist"]["hv:version"] == "1"
    assert not path.exists()


def test_renewed_before_expiry(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    publish(pki, path, images(files), expires_in=10, renew_before=3)
    assert publish(pki, path, images(files), expires_in=10, renew_before=3, now=pki.now + 6 * DAY)["changed"] is False
    late = publish(pki, path, images(files), expires_in=10, renew_before=3, now=pki.now + 8 * DAY)
    assert late["changed"] is True
    assert late["reason"] == "renewed before expiry"
    assert late["version"] == "2"


def test_explicit_version_must_go_up(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    publish(pki, path, images(files), version="3.9")
    assert publish(pki, path, images(files, names=("a",)), version="3.10")["version"] == "3.10"
    with pytest.raises(il.ImageListError) as err:
        publish(pki, path, images(files), version="3.2")
    assert err.value.reason == "version_rollback"
    assert "not higher than the published '3.10'" in str(err.value)


def test_opaque_signature_and_mode(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    publish(pki, path, images(files), signature="opaque", mode=0o640)
    assert b"application/x-pkcs7-mime" in path.read_bytes()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    result = publish(pki, path, images(files), signature="opaque", mode=0o644)
    assert result["changed"] is True  # only the mode
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_publisher_refuses_hostile_input(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    bad = images(files)
    bad[0]["identifier"] = "../escape"
    with pytest.raises(il.ImageListError) as err:
        publish(pki, path, bad)
    assert err.value.reason == "hostile_identifier"
    bad = images(files)
    bad[1]["uri"] = "file:///srv/b.qcow2"
    with pytest.raises(il.ImageListError) as err:
        publish(pki, path, bad)
    assert err.value.reason == "forbidden_uri"
    assert publish(pki, path, bad, allow_file_uri=True)["changed"] is True
    with pytest.raises(il.ImageListError) as err:
        publish(pki, tmp_path / "x.list", [{"identifier": "x", "version": "1", "uri": "https://h/x"}])
    assert "give the image file" in str(err.value)


def test_wrong_key_and_passphrase(pki, files, tmp_path):
    with pytest.raises(il.ImageListError) as err:
        il.publish(
            path=str(tmp_path / "l"),
            identifier=LIST_ID,
            images=images(files),
            signer_cert=pki.endorser.cert_path,
            signer_key=pki.other.key_path,
            now=pki.now,
        )
    assert err.value.reason == "signing_failed"
    assert "does not belong to signer_cert" in str(err.value)
    from cryptography.hazmat.primitives import serialization

    enc = tmp_path / "enc.key"
    enc.write_bytes(
        pki.endorser.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    kw = {"path": str(tmp_path / "l"), "identifier": LIST_ID, "images": images(files), "now": pki.now}
    with pytest.raises(il.ImageListError) as err:
        il.publish(signer_cert=pki.endorser.cert_path, signer_key=str(enc), signer_key_passphrase="wrong", **kw)
    assert "signer_key_passphrase" in str(err.value)
    assert il.publish(signer_cert=pki.endorser.cert_path, signer_key=str(enc), signer_key_passphrase="s3cret", **kw)[
        "changed"
    ]


# --------------------------------------------------------------------------- subscribe


def test_subscribe_new_current_withdrawn(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    cache = ImageCache(str(tmp_path / "images"))
    publish(pki, path, images(files))
    first = il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now)
    assert first["changed"] is True
    assert first["previous_version"] is None
    assert [i["identifier"] for i in first["new"]] == ["img-a", "img-b"]
    assert first["current"] == [] and first["withdrawn"] == []
    assert cache.accepted_list_version(LIST_ID) == "1"

    again = il.subscribe(cache, "file://" + str(path), LIST_ID, pki.ca_dir, now=pki.now)
    assert again["changed"] is False
    assert [i["identifier"] for i in again["current"]] == ["img-a", "img-b"]

    publish(pki, path, images(files, names=("a",)), now=pki.now + DAY)
    # check mode reports without writing
    preview = il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now + DAY, check_mode=True)
    assert preview["changed"] is True
    assert [i["identifier"] for i in preview["withdrawn"]] == ["img-b"]
    assert cache.accepted_list_version(LIST_ID) == "1"
    third = il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now + DAY)
    assert third["version"] == "2"
    assert third["previous_version"] == "1"
    assert [i["identifier"] for i in third["withdrawn"]] == ["img-b"]
    assert [i["identifier"] for i in third["current"]] == ["img-a"]
    cache.close()


def test_refused_list_leaves_the_cache_unchanged(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    cache = ImageCache(str(tmp_path / "images"))
    publish(pki, path, images(files), version="5")
    il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now)
    before = cache.endorsed(include_expired=True)
    # a replayed older list
    old = tmp_path / "old.list"
    publish(pki, old, images(files, names=("b",)), version="4")
    with pytest.raises(il.ImageListError) as err:
        il.subscribe(cache, str(old), LIST_ID, pki.ca_dir, now=pki.now)
    assert err.value.reason == "version_rollback"
    # a tampered list
    tampered = tmp_path / "tampered.list"
    tampered.write_bytes(path.read_bytes().replace(b'"hv:size": 17', b'"hv:size": 18'))
    with pytest.raises(il.ImageListError) as err:
        il.subscribe(cache, str(tampered), LIST_ID, pki.ca_dir, now=pki.now)
    assert err.value.reason == "bad_signature"
    assert cache.accepted_list_version(LIST_ID) == "5"
    assert cache.endorsed(include_expired=True) == before
    cache.close()


def test_check_mode_on_a_fresh_host_creates_nothing(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    publish(pki, path, images(files))
    cache = ImageCache(str(tmp_path / "images"))
    result = il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now, check_mode=True)
    assert result["changed"] is True
    assert len(result["new"]) == 2
    assert not os.path.exists(cache.state_dir)


def test_hostile_format_fails_in_check_mode(pki, tmp_path):
    """hv:format is checked while the list is verified, so check mode already refuses it (it used to
    pass check mode and fail only when the cache recorded the list, as cache_error)."""
    from tests.unit.plugins.modules.image_list.imagelist_pki import image_obj, list_obj, sign_obj

    path = tmp_path / "farm.list"
    path.write_bytes(sign_obj(list_obj(pki, images=[image_obj(**{"hv:format": "../../x"})]), pki.endorser))
    cache = ImageCache(str(tmp_path / "images"))
    for check_mode in (True, False):
        with pytest.raises(il.ImageListError) as err:
            il.subscribe(cache, str(path), LIST_ID, pki.ca_dir, now=pki.now, check_mode=check_mode)
        assert err.value.reason == "hostile_identifier"
        assert err.value.option == "hv:images[0].hv:image.hv:format"
    assert cache.accepted_list_version(LIST_ID) is None
    cache.close()


def test_bump_version_follows_the_one_order():
    assert il.bump_version("3.9") == "3.10"
    assert il.bump_version("2026-11-21") == "2026-11-22"
    assert il.bump_version("1.0rc1") == "1.0rc2"
    assert il.bump_version("2026.01.09") == "2026.01.10"
    with pytest.raises(il.ImageListError) as err:
        il.bump_version("1.0-beta")
    assert err.value.option == "version"
    assert "set O(version) explicitly" in str(err.value)


def test_fetch_limits(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(il.ImageListError) as err:
        il.fetch(str(big), max_bytes=1024)
    assert err.value.reason == "too_large"
    with pytest.raises(il.ImageListError) as err:
        il.fetch(str(tmp_path / "missing"))
    assert err.value.reason == "fetch_failed"
    assert "check O(url)" in str(err.value)
    with pytest.raises(il.ImageListError) as err:
        il.fetch("ftp://example.org/list")
    assert err.value.reason == "forbidden_uri"


def test_created_time_is_whole_seconds(pki, files, tmp_path):
    now = pki.now + datetime.timedelta(microseconds=123456)
    result = publish(pki, tmp_path / "l", images(files), now=now)
    assert result["created"] == format_time(pki.now)


class _Trickle:
    """A response that hands out one byte per read while the clock runs."""

    def __init__(self, clock):
        self.clock = clock

    def read(self, _n):
        self.clock[0] += 1.0
        return b"x"


def test_trickling_server_hits_the_deadline(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(_imagelist_fetch.time, "monotonic", lambda: clock[0])
    with pytest.raises(il.ImageListError) as err:
        _imagelist_fetch._read_limited(_Trickle(clock), 1000, deadline=10.0)
    assert err.value.reason == "fetch_failed"
    assert "did not finish within the timeout (11 bytes read)" in str(err.value)


def test_unreadable_existing_file_needs_an_explicit_version(pki, files, tmp_path):
    path = tmp_path / "farm.list"
    path.write_text("not a signed list\n")
    with pytest.raises(il.ImageListError) as err:
        publish(pki, path, images(files))
    assert err.value.option == "path"
    assert "is not a readable signed image list" in str(err.value)
    assert "set O(version) higher than the last published version" in str(err.value)
    assert path.read_text() == "not a signed list\n"
    result = publish(pki, path, images(files), version="12")
    assert result["version"] == "12"
    assert il.verify(path.read_bytes(), pki.ca_dir, LIST_ID, now=pki.now).version == "12"
