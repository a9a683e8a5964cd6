"""The image cache without network: states, history, subscriptions, users, expiry, hooks, lock."""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _image_cache as ic
from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import (
    CacheLockTimeout,
    ImageCache,
    ImageCacheError,
    ImageInUse,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._version import version_key

T0 = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
DATA = b"batchvirt image bytes " * 1000
SHA = hashlib.sha512(DATA).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


class FakeFetch:
    """Writes DATA (or ``payload``) to the partial path, or raises like the transport does."""

    def __init__(self, payload: bytes = DATA, error: Exception = None) -> None:
        self.payload = payload
        self.error = error
        self.calls = []

    def __call__(self, uri, dest, size, sha512, **opts):
        self.calls.append((uri, dest, size, sha512, opts))
        with open(dest, "wb") as fh:
            fh.write(self.payload[: len(self.payload) // 2] if self.error else self.payload)
        if self.error:
            raise self.error
        return type("R", (), {"transferred": len(self.payload), "resumed_from": 0})()


class TransportError(Exception):
    def __init__(self, message, resumable):
        super().__init__(message)
        self.resumable = resumable


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(tmp_path, clock):
    c = ImageCache(str(tmp_path / "images"), clock=clock)
    yield c
    c.close()


def stage(cache, version="1", fetch=None, identifier="img", **kw):
    with cache.lock(timeout=1):
        return cache.stage(
            identifier, version, "http://x/%s" % version, len(DATA), SHA, fetch=fetch or FakeFetch(), **kw
        )


def test_layout_keeps_state_out_of_the_pool_directory(cache):
    stage(cache)
    assert os.listdir(cache.root) == ["img_1.qcow2"]
    assert cache.state_dir == cache.root + ".cache"
    assert os.path.isfile(os.path.join(cache.state_dir, "cache.sqlite"))
    assert os.path.isdir(cache.partial_dir) and os.listdir(cache.partial_dir) == []
    assert cache.db.execute("SELECT version FROM schema_version").fetchone()[0] == ic.SCHEMA_VERSION
    assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stage_moves_verified_file_into_place_and_logs_history(cache, clock):
    fetch = FakeFetch()
    result = stage(cache, fetch=fetch)
    assert result.changed
    (uri, dest, size, sha, _opts) = fetch.calls[0]
    assert dest == os.path.join(cache.partial_dir, "img_1.qcow2.part")
    record = cache.get("img", "1")
    assert record.state == "ready" and record.path == os.path.join(cache.root, "img_1.qcow2")
    assert record.volume == "img_1.qcow2" and record.pool == "batchvirt-images"
    assert (record.sha512, record.size, record.format) == (SHA, len(DATA), "qcow2")
    hist = cache.history("img", "1")
    assert [(h["from_state"], h["to_state"]) for h in hist] == [(None, "partial"), ("partial", "ready")]
    assert all(h["at"] == "2026-11-01T12:00:00Z" for h in hist)
    # Idempotent: nothing fetched again.
    again = stage(cache, fetch=fetch)
    assert not again.changed and len(fetch.calls) == 1


def test_vanished_ready_file_is_staged_again(cache):
    stage(cache)
    os.unlink(cache.get("img", "1").path)
    assert cache.needs_stage("img", "1", SHA, len(DATA))
    assert stage(cache).changed
    assert "vanished" in cache.history("img", "1")[-2]["reason"]


def test_resumable_failure_keeps_partial(cache):
    with pytest.raises(ImageCacheError) as err:
        stage(cache, fetch=FakeFetch(error=TransportError("server broke off", resumable=True)))
    assert "server broke off" in err.value.message and "a rerun resumes it" in err.value.message
    record = cache.get("img", "1")
    assert record.state == "partial" and os.path.exists(cache.partial_path(record.volume))
    assert os.listdir(cache.root) == []


def test_final_failure_deletes_partial_and_marks_failed(cache):
    with pytest.raises(ImageCacheError) as err:
        stage(cache, fetch=FakeFetch(error=TransportError("sha512 mismatch", resumable=False)))
    assert err.value.message == "image img version 1 was not staged: sha512 mismatch"
    record = cache.get("img", "1")
    assert record.state == "failed" and record.reason == "sha512 mismatch"
    assert not os.path.exists(cache.partial_path(record.volume)) and os.listdir(cache.root) == []


def test_wrong_size_from_transport_is_refused(cache):
    with pytest.raises(ImageCacheError) as err:
        stage(cache, fetch=FakeFetch(payload=DATA + b"x"))
    assert "size mismatch after download" in err.value.message
    assert cache.get("img", "1").state == "failed" and os.listdir(cache.root) == []


def test_stage_needs_the_lock(cache):
    with pytest.raises(ImageCacheError) as err:
        cache.stage("img", "1", "http://x", len(DATA), SHA, fetch=FakeFetch())
    assert "needs the image cache lock" in err.value.message


@pytest.mark.parametrize(
    "identifier", ["../x", "/etc/passwd", "a/../../b", "..", ".x", "a b", "x" * 200, "a\nb", "", "-rf"]
)
def test_hostile_names_refused(cache, identifier):
    with pytest.raises(ImageCacheError) as err:
        stage(cache, identifier=identifier)
    assert "is not allowed" in err.value.message
    assert cache.images() == []


def test_hostile_names_in_a_list_refused(cache):
    image = {"identifier": "../../etc", "version": "1", "uri": "u", "size": 1, "sha512": SHA}
    with pytest.raises(ImageCacheError) as err:
        cache.record_list("L", "1", [image])
    assert "identifier of image #0 of list L" in err.value.message
    assert cache.accepted_list_version("L") is None


def _img(identifier="img", version="1", **kw):
    out = {"identifier": identifier, "version": version, "uri": "http://x/" + version, "size": len(DATA), "sha512": SHA}
    out.update(kw)
    return out


def test_record_list_reports_new_current_withdrawn(cache):
    assert cache.accepted_list_version("L") is None
    first = cache.record_list("L", "3", [_img(version="1"), _img("other", "7")])
    assert [i["version"] for i in first["new"]] == ["1", "7"] and first["current"] == first["withdrawn"] == []
    assert cache.accepted_list_version("L") == "3"
    second = cache.record_list("L", "4", [_img(version="2"), _img("other", "7")])
    assert [(i["identifier"], i["version"]) for i in second["new"]] == [("img", "2")]
    assert [(i["identifier"], i["version"]) for i in second["current"]] == [("other", "7")]
    assert [(i["identifier"], i["version"]) for i in second["withdrawn"]] == [("img", "1")]
    assert cache.accepted_list_version("L") == "4"
    assert cache.subscriptions()[0]["accepted_at"] == "2026-11-01T12:00:00Z"


def test_record_list_refuses_duplicates_and_bad_checksums(cache):
    with pytest.raises(ImageCacheError) as err:
        cache.record_list("L", "1", [_img(), _img()])
    assert "endorses image img version 1 twice" in err.value.message
    with pytest.raises(ImageCacheError) as err:
        cache.record_list("L", "1", [_img(sha512="abc")])
    assert "is not a sha512 checksum" in err.value.message


def test_resolve_latest_uses_natural_version_order_and_skips_expired(cache, clock):
    cache.record_list(
        "L",
        "1",
        [_img(version="1.9"), _img(version="1.10"), _img(version="1.11", expires="2026-10-31T00:00:00Z")],
    )
    assert cache.resolve("img")["version"] == "1.10"
    assert cache.resolve("img", "1.9")["version"] == "1.9"
    with pytest.raises(ImageCacheError) as err:
        cache.resolve("img", "1.11")
    assert "expired" in err.value.message
    with pytest.raises(ImageCacheError) as err:
        cache.resolve("nope")
    assert "not endorsed by any subscribed image list" in err.value.message


def test_version_key_orders_naturally():
    # the cache sorts with the collection's one version order (_version): a letter suffix is a
    # pre-release there, so 1.9a now sorts before 1.9 (it sorted after it with the cache's own key)
    versions = ["1.10", "1.9", "2024-05-01", "2024-04-30", "1.9a"]
    assert sorted(versions, key=version_key) == ["1.9a", "1.9", "1.10", "2024-04-30", "2024-05-01"]


def test_expire_refused_while_in_use_then_allowed(cache):
    stage(cache)
    assert cache.add_user("img", "1", "slot-01") is True
    assert cache.add_user("img", "1", "slot-01") is False
    cache.add_user("img", "1", "slot-02")
    with pytest.raises(ImageInUse) as err, cache.lock(timeout=1):
        cache.expire("img", "1", "test")
    assert "still used by slot-01, slot-02" in err.value.message and err.value.users == ["slot-01", "slot-02"]
    assert os.path.exists(cache.get("img", "1").path) and cache.get("img", "1").state == "ready"
    cache.remove_user("img", "1", "slot-01")
    cache.remove_user("img", "1", "slot-02")
    with cache.lock(timeout=1):
        changed, warnings = cache.expire("img", "1", "not endorsed")
    assert changed and warnings == []
    record = cache.get("img", "1")
    assert record.state == "expired" and not os.path.exists(record.path)
    assert cache.history("img", "1")[-1]["reason"] == "not endorsed"
    with cache.lock(timeout=1):
        assert cache.expire("img", "1", "again") == (False, [])


def test_forced_expiry_warns(cache):
    stage(cache)
    cache.add_user("img", "1", "slot-01")
    with cache.lock(timeout=1):
        changed, warnings = cache.expire("img", "1", "forced", force=True)
    assert changed and "expired by force while still used by slot-01" in warnings[0]


def test_unendorsed_lists_only_list_images_no_longer_endorsed(cache):
    cache.record_list("L", "1", [_img(version="1"), _img(version="2")])
    stage(cache, version="1", list_id="L")
    stage(cache, version="2", list_id="L")
    stage(cache, version="manual")  # explicit, no list: never pruned
    assert cache.unendorsed() == []
    cache.record_list("L", "2", [_img(version="2")])
    assert [(r.identifier, r.version) for r in cache.unendorsed()] == [("img", "1")]


def test_hooks_run_with_event_environment(tmp_path, clock):
    log = tmp_path / "events"
    hook = "env | grep ^FARM_EVENT_ | sort >> %s; echo --- >> %s" % (log, log)
    cache = ImageCache(str(tmp_path / "images"), clock=clock, event_hook=hook)
    cache.record_list("L", "1", [_img()])
    stage(cache, list_id="L")
    clock.now = T0 + datetime.timedelta(hours=1)
    with cache.lock(timeout=1):
        cache.expire("img", "1", "no longer endorsed")
    ready, expired = [
        dict(line.split("=", 1) for line in block.strip().splitlines()) for block in log.read_text().split("---")[:2]
    ]
    assert ready["FARM_EVENT_TYPE"] == "ready" and expired["FARM_EVENT_TYPE"] == "expired"
    assert ready["FARM_EVENT_IDENTIFIER"] == "img" and ready["FARM_EVENT_VERSION"] == "1"
    assert ready["FARM_EVENT_PATH"] == os.path.join(cache.root, "img_1.qcow2")
    assert ready["FARM_EVENT_VOLUME"] == "img_1.qcow2" and ready["FARM_EVENT_POOL"] == "batchvirt-images"
    assert ready["FARM_EVENT_SHA512"] == SHA and ready["FARM_EVENT_SIZE"] == str(len(DATA))
    assert ready["FARM_EVENT_LIST"] == "L" and ready["FARM_EVENT_URI"] == "http://x/1"
    assert ready["FARM_EVENT_TIME"] == "2026-11-01T12:00:00Z"
    assert expired["FARM_EVENT_TIME"] == "2026-11-01T13:00:00Z"
    assert expired["FARM_EVENT_REASON"] == "no longer endorsed"
    cache.close()


def test_failing_hook_is_a_warning_and_the_image_stays_ready(tmp_path, clock):
    cache = ImageCache(str(tmp_path / "images"), clock=clock, event_hook="echo boom >&2; exit 3")
    result = stage(cache)
    assert result.record.state == "ready"
    assert "exited with 3 on ready of img version 1: boom" in result.warnings[0]
    assert "exited with 3" in cache.history("img", "1")[-1]["reason"]
    cache.close()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = %(path)r
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
    with ImageCache(%(root)r).lock(timeout=5, purpose="prestage from the test"):
        print("locked", flush=True)
        time.sleep(30)
    """
)


def test_lock_held_by_another_process_fails_naming_it(cache):
    code = _HOLDER % {"path": sys.path, "root": cache.root}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(CacheLockTimeout) as err, cache.lock(timeout=0.3):
            pass
        assert "locked by another deploy (pid %d, command " % proc.pid in err.value.message
        assert "purpose prestage from the test" in err.value.message
    finally:
        proc.kill()
        proc.wait()
    with cache.lock(timeout=5):  # released when the holder died
        assert cache.locked


def test_lock_is_reentrant_in_one_object(cache):
    with cache.lock(timeout=1), cache.lock(timeout=1):
        assert cache.locked
    assert not cache.locked and cache.lock_holder() == ""


def _qcow2_header(backing: bytes) -> bytes:
    header = bytearray(b"QFI\xfb" + struct.pack(">I", 3) + struct.pack(">QI", 512, len(backing)))
    header += b"\0" * (512 - len(header))
    return bytes(header) + backing


def test_qcow2_backing_chain_is_read_from_headers(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"raw")
    mid = tmp_path / "mid.qcow2"
    mid.write_bytes(_qcow2_header(b"base.raw"))
    top = tmp_path / "top.qcow2"
    top.write_bytes(_qcow2_header(str(mid).encode()))
    assert ic.qcow2_backing_file(str(base)) is None
    assert ic.backing_chain(str(top)) == [str(mid), str(base)]


class FakeDomain:
    def __init__(self, name, source):
        self._name, self._source = name, source

    def name(self):
        return self._name

    def XMLDesc(self, _flags):
        return (
            "<domain><devices><disk type='file'><source file='%s'/></disk>"
            "<disk type='network'><source protocol='nbd'/></disk></devices></domain>" % self._source
        )


class FakeConn:
    def __init__(self, domains):
        self.domains = domains

    def listAllDomains(self, _flags):
        return self.domains


def test_users_include_libvirt_domains_backed_by_the_image(tmp_path, clock):
    cache = ImageCache(str(tmp_path / "images"), clock=clock)
    stage(cache)
    base = cache.get("img", "1").path
    overlay = tmp_path / "slot.qcow2"
    overlay.write_bytes(_qcow2_header(base.encode()))
    other = tmp_path / "other.qcow2"
    other.write_bytes(_qcow2_header(b"/nowhere.raw"))
    cache.libvirt_conn = FakeConn([FakeDomain("slot-a", str(overlay)), FakeDomain("unrelated", str(other))])
    cache.add_user("img", "1", "slot-b")
    assert cache.users("img", "1") == ["slot-a", "slot-b"]
    cache.close()
