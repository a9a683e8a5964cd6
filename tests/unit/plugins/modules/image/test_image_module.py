"""image: main() under patch_module_args with file:// sources and a fake libvirt connection."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from ansible_collections.batchvirt.farm.plugins.modules import image

DATA = os.urandom(3 * 1024 * 1024 + 11)
SHA = hashlib.sha512(DATA).hexdigest()


class FakePool:
    def __init__(self):
        self.refreshed = 0

    def isActive(self):
        return True

    def refresh(self, _flags):
        self.refreshed += 1


class FakeConn:
    def __init__(self):
        self.pool = FakePool()
        self.users = []

    def storagePoolLookupByName(self, name):
        if name != "batchvirt-images":
            raise RuntimeError("no pool %s" % name)
        return self.pool

    def listAllDomains(self, _flags):
        return []

    def close(self):
        pass


@pytest.fixture
def conn(monkeypatch):
    fake = FakeConn()
    monkeypatch.setattr(image, "connect", lambda _uri: fake)
    return fake


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "w.raw"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return "file://%s" % path


def run(args, capsys, check=False):
    if check:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        image.main()
    return json.loads(capsys.readouterr().out)


def explicit(tmp_path, source, **extra):
    args = {
        "identifier": "worker",
        "version": "2026.11",
        "source": source,
        "sha512": SHA,
        "size": len(DATA),
        "format": "raw",
        "root": str(tmp_path / "images"),
    }
    args.update(extra)
    return args


def test_present_check_then_stage_then_idempotent(tmp_path, source, conn, capsys):
    args = explicit(tmp_path, source)
    check = run(args, capsys, check=True)
    assert check["changed"] is True and check["state"] == "ready"
    assert not os.path.exists(check["path"])
    first = run(args, capsys)
    assert first["changed"] is True and first["state"] == "ready" and first["transferred"] == len(DATA)
    assert first["path"] == str(tmp_path / "images" / "worker_2026.11.raw")
    assert first["volume"] == "worker_2026.11.raw" and first["pool"] == "batchvirt-images"
    assert conn.pool.refreshed == 1
    second = run(args, capsys)
    assert second["changed"] is False and second["transferred"] == 0 and conn.pool.refreshed == 1


def test_missing_pool_is_a_warning(tmp_path, source, conn, capsys, monkeypatch):
    warned = []
    monkeypatch.setattr(image._ImageModule, "warn", lambda _self, msg: warned.append(msg))
    out = run(explicit(tmp_path, source, pool="nope"), capsys)
    assert out["state"] == "ready"
    assert any("storage pool nope is not defined" in w for w in warned), warned


def test_source_needs_checksum_and_version(tmp_path, source, conn, capsys):
    out = run(explicit(tmp_path, source, sha512=None, version="latest"), capsys)
    assert out["failed"] and "with source, also give sha512, version" in out["msg"]


def test_unsubscribed_identifier_explains_what_to_do(tmp_path, conn, capsys):
    out = run({"identifier": "worker", "root": str(tmp_path / "images")}, capsys)
    assert out["failed"]
    assert "not endorsed by any subscribed image list" in out["msg"] and "image_subscription" in out["msg"]


def test_latest_from_subscription(tmp_path, source, conn, capsys):
    root = str(tmp_path / "images")
    with ImageCache(root) as cache:
        cache.record_list(
            "L",
            "1",
            [
                {
                    "identifier": "worker",
                    "version": "9",
                    "uri": source,
                    "size": len(DATA),
                    "sha512": SHA,
                    "format": "raw",
                },
                {
                    "identifier": "worker",
                    "version": "10",
                    "uri": source,
                    "size": len(DATA),
                    "sha512": SHA,
                    "format": "raw",
                },
            ],
        )
    out = run({"identifier": "worker", "version": "latest", "root": root}, capsys)
    assert out["changed"] and out["version"] == "10" and out["volume"] == "worker_10.raw"
    wrong = run({"identifier": "worker", "version": "9", "root": root, "sha512": "0" * 128}, capsys)
    assert wrong["failed"] and "differs from the one its image list L endorses" in wrong["msg"]
    # The list withdraws version 10: pruned removes it.
    with ImageCache(root) as cache:
        cache.record_list("L", "2", [])
    pruned = run({"state": "pruned", "root": root}, capsys)
    assert pruned["changed"] and [e["version"] for e in pruned["expired"]] == ["10"]
    assert not os.path.exists(out["path"])
    assert run({"state": "pruned", "root": root}, capsys)["changed"] is False


def test_absent(tmp_path, source, conn, capsys):
    args = explicit(tmp_path, source)
    staged = run(args, capsys)
    latest = run(dict(args, state="absent", version="latest"), capsys)
    assert latest["failed"] and "state=absent needs an explicit version" in latest["msg"]
    with ImageCache(args["root"]) as cache:
        cache.add_user("worker", "2026.11", "slot-7")
    refused = run(dict(args, state="absent"), capsys)
    assert refused["failed"] and "still used by slot-7" in refused["msg"] and refused["users"] == ["slot-7"]
    check = run(dict(args, state="absent"), capsys, check=True)
    assert check["failed"]  # check mode reports the same refusal
    forced = run(dict(args, state="absent", force=True), capsys)
    assert forced["changed"] and forced["state"] == "expired" and not os.path.exists(staged["path"])
    assert run(dict(args, state="absent"), capsys)["changed"] is False


def test_hostile_identifier(tmp_path, source, conn, capsys):
    out = run(explicit(tmp_path, source, identifier="../../../etc"), capsys)
    assert out["failed"] and "identifier '../../../etc' is not allowed" in out["msg"]
    assert not os.path.exists(str(tmp_path / "images"))
