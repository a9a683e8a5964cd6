"""Staging images over a real HTTP server (and file://): verification, resume, errors, the lock."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import (
    CacheLockTimeout,
    ImageCache,
    ImageCacheError,
)
from tests.integration.images.conftest import make_image
from tests.testbed.ansible import COLLECTIONS


def _stage(cache: ImageCache, img, url: str, version: str = "1", sha512=None, size=None, **opts):
    with cache.lock(timeout=5):
        return cache.stage(
            "img-a",
            version,
            url,
            size if size is not None else img.size,
            sha512 or img.sha512,
            fetch_options=dict({"timeout": 5, "connect_timeout": 5}, **opts),
        )


@pytest.fixture
def cache(tmp_path):
    hook_log = tmp_path / "hook.log"
    c = ImageCache(
        str(tmp_path / "images"),
        event_hook='echo "$FARM_EVENT_TYPE $FARM_EVENT_IDENTIFIER $FARM_EVENT_VERSION $FARM_EVENT_PATH" >> %s'
        % hook_log,
    )
    c.hook_log = hook_log  # type: ignore[attr-defined]
    yield c
    c.close()


def _ready_files(cache: ImageCache):
    return sorted(os.listdir(cache.root))


def test_http_stage_becomes_ready_and_runs_hook(cache, served):
    img = served.add("a.qcow2")
    result = _stage(cache, img, served.url("a.qcow2"))
    assert result.changed and result.transferred == img.size and result.resumed_from == 0
    record = cache.get("img-a", "1")
    assert record.state == "ready"
    assert record.path == os.path.join(cache.root, "img-a_1.qcow2")
    assert os.path.getsize(record.path) == img.size
    assert not os.listdir(cache.partial_dir)
    assert cache.hook_log.read_text().split() == ["ready", "img-a", "1", record.path]
    assert [h["to_state"] for h in cache.history("img-a", "1")] == ["partial", "ready"]
    # Second run: nothing to do, nothing downloaded.
    before = served.server.sent["a.qcow2"]
    again = _stage(cache, img, served.url("a.qcow2"))
    assert not again.changed and served.server.sent["a.qcow2"] == before


def test_file_uri_stage(cache, tmp_path):
    img = make_image(str(tmp_path), "local.raw", 2 * 1024 * 1024 + 5, seed=3)
    result = _stage(cache, img, "file://" + img.path)
    assert result.changed and cache.get("img-a", "1").state == "ready"


def test_file_uri_refused_when_not_allowed(cache, tmp_path):
    img = make_image(str(tmp_path), "local.raw", 1024, seed=3)
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, "file://" + img.path, allow_file=False)
    assert "file:// sources are not allowed" in err.value.message
    assert cache.get("img-a", "1").state == "failed"


def test_truncated_download_is_kept_partial_then_resumed(cache, served):
    img = served.add("t.qcow2", size=4 * 1024 * 1024)
    served.server.behave("t.qcow2", "truncate", after=1536 * 1024)
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("t.qcow2"))
    assert "broke off" in err.value.message or "incomplete" in err.value.message
    assert "rerun resumes" in err.value.message
    record = cache.get("img-a", "1")
    assert record.state == "partial" and not os.path.exists(record.path)
    assert _ready_files(cache) == []
    kept = os.path.getsize(cache.partial_path(record.volume))
    assert kept > 0
    served.server.behave("t.qcow2")
    sent_before = served.server.sent["t.qcow2"]
    result = _stage(cache, img, served.url("t.qcow2"))
    assert result.resumed_from == kept
    assert served.server.sent["t.qcow2"] - sent_before == img.size - kept
    assert served.server.requests[-1] == ("t.qcow2", "bytes=%d-" % kept)
    assert cache.get("img-a", "1").state == "ready"


def test_server_ignoring_range_restarts_cleanly(cache, served):
    img = served.add("r.qcow2", size=2 * 1024 * 1024)
    served.server.behave("r.qcow2", "truncate", after=1024 * 1024)
    with pytest.raises(ImageCacheError):
        _stage(cache, img, served.url("r.qcow2"))
    served.server.behave("r.qcow2", "ignore_range")
    result = _stage(cache, img, served.url("r.qcow2"))
    assert result.resumed_from == 0 and cache.get("img-a", "1").state == "ready"


def test_sha512_mismatch_refused_previous_good_image_stays(cache, served):
    good = served.add("g.qcow2", seed=1)
    _stage(cache, good, served.url("g.qcow2"), version="1")
    bad = served.add("b.qcow2", seed=2)
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, bad, served.url("b.qcow2"), version="2", sha512="0" * 128)
    assert "sha512 mismatch for %s" % served.url("b.qcow2") in err.value.message
    assert cache.get("img-a", "2").state == "failed"
    assert "sha512 mismatch" in cache.get("img-a", "2").reason
    assert _ready_files(cache) == ["img-a_1.qcow2"]
    assert not os.listdir(cache.partial_dir)
    assert cache.get("img-a", "1").state == "ready"
    assert cache.hook_log.read_text().count("ready") == 1


def test_size_mismatch_refused(cache, served):
    img = served.add("s.qcow2")
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("s.qcow2"), size=img.size + 1)
    assert "size mismatch for %s" % served.url("s.qcow2") in err.value.message
    assert "list publishes %d" % (img.size + 1) in err.value.message
    assert cache.get("img-a", "1").state == "failed" and _ready_files(cache) == []


def test_same_version_with_other_content_refused(cache, served):
    img = served.add("c.qcow2")
    _stage(cache, img, served.url("c.qcow2"))
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("c.qcow2"), sha512="1" * 128)
    assert "must never change its content" in err.value.message
    assert cache.get("img-a", "1").state == "ready"


@pytest.mark.parametrize("status", ["404", "500"])
def test_http_errors_name_status_and_url(cache, served, status):
    img = served.add("e.qcow2")
    served.server.behave("e.qcow2", status)
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("e.qcow2"))
    assert "HTTP %s" % status in err.value.message
    assert served.url("e.qcow2") in err.value.message
    assert cache.get("img-a", "1").state in ("failed", "partial")
    assert _ready_files(cache) == []


def test_stalled_server_times_out_with_message(cache, served):
    img = served.add("st.qcow2")
    served.server.behave("st.qcow2", "stall", after=100 * 1024, stall_for=30)
    began = time.monotonic()
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("st.qcow2"), timeout=1)
    assert time.monotonic() - began < 10
    assert "%s stalled: no data for 1 s" % served.url("st.qcow2") in err.value.message
    assert cache.get("img-a", "1").state == "partial" and _ready_files(cache) == []


def test_unreachable_server(cache, served):
    img = served.add("u.qcow2")
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, "http://127.0.0.1:9/u.qcow2")
    assert "cannot reach http://127.0.0.1:9/u.qcow2" in err.value.message


@pytest.mark.parametrize("identifier", ["../../etc/passwd", "a/b", "..", ".hidden", "a b", ""])
def test_hostile_identifier_refused(cache, served, identifier):
    img = served.add("h.qcow2")
    with pytest.raises(ImageCacheError) as err, cache.lock(timeout=5):
        cache.stage(identifier, "1", served.url("h.qcow2"), img.size, img.sha512)
    assert "is not allowed" in err.value.message
    assert served.server.sent["h.qcow2"] == 0
    assert cache.images() == []


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, %(collections)r)
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
    cache = ImageCache(%(root)r)
    with cache.lock(timeout=5, purpose="test child"):
        %(body)s
    """
)


def _child(root: str, body: str) -> subprocess.Popen:
    code = _CHILD % {"collections": COLLECTIONS, "root": root, "body": body}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_download_resumes(cache, served, hostbed):
    img = served.add("k.qcow2", size=6 * 1024 * 1024, seed=5)
    served.server.behave("k.qcow2", None, rate=2 * 1024 * 1024)
    body = "cache.stage('img-a', '1', %r, %d, %r)" % (served.url("k.qcow2"), img.size, img.sha512)
    proc = hostbed.process(_child(cache.root, body))
    partial = cache.partial_path("img-a_1.qcow2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(partial) and os.path.getsize(partial) >= 2 * 1024 * 1024:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = os.path.getsize(partial)
    assert 0 < kept < img.size
    assert cache.get("img-a", "1").state == "partial"
    served.server.behave("k.qcow2")
    result = _stage(cache, img, served.url("k.qcow2"))
    # The rerun asked only for the rest and received only the rest.
    assert served.server.requests[-1] == ("k.qcow2", "bytes=%d-" % kept)
    assert result.resumed_from == kept and result.transferred == img.size - kept < img.size
    assert cache.get("img-a", "1").state == "ready"


def test_second_deploy_fails_clearly_while_locked(cache, hostbed):
    proc = hostbed.process(_child(cache.root, "print('locked', flush=True); time.sleep(30)"))
    assert proc.stdout.readline().strip() == b"locked"
    began = time.monotonic()
    with pytest.raises(CacheLockTimeout) as err, cache.lock(timeout=1):
        pass
    assert time.monotonic() - began >= 1
    assert "locked by another deploy (pid %d" % proc.pid in err.value.message
    assert "purpose test child" in err.value.message
    assert "Wait for it to finish" in err.value.message


def test_second_deploy_waits_for_the_first(cache, hostbed):
    proc = hostbed.process(_child(cache.root, "print('locked', flush=True); time.sleep(1.5)"))
    assert proc.stdout.readline().strip() == b"locked"
    began = time.monotonic()
    with cache.lock(timeout=20):
        waited = time.monotonic() - began
        assert "pid %d" % os.getpid() in cache.lock_holder()
    assert 0.5 < waited < 15


def test_torrent_source_is_staged_through_the_bittorrent_transport(cache, served, tmp_path):
    """A .torrent whose only peer is the HTTP web seed: dispatch, then size and sha512 checked here."""
    torrent_mod = pytest.importorskip("ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta")
    if shutil.which("aria2c") is None:
        pytest.skip("aria2c is not installed (bindep: aria2)")
    img = served.add("bt.raw", size=2 * 1024 * 1024 + 9, seed=9)
    torrent_mod.make_torrent(img.path, [], [served.url("bt.raw")], output=img.path + ".torrent")
    opts = {"state_dir": str(tmp_path / "bt"), "total_timeout": 60, "listen_port": "16881-16899"}
    result = _stage(cache, img, served.url("bt.raw.torrent"), **opts)
    assert result.changed and cache.get("img-a", "1").state == "ready"
    assert served.server.sent["bt.raw"] >= img.size
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, served.url("bt.raw.torrent"), version="2", sha512="3" * 128, **opts)
    assert "sha512 mismatch for %s" % served.url("bt.raw.torrent") in err.value.message
    assert "torrent does not hold the endorsed image" in err.value.message
    assert cache.get("img-a", "2").state == "failed" and _ready_files(cache) == ["img-a_1.qcow2"]


def test_magnet_refused_clearly_without_engine(cache, served, monkeypatch):
    img = served.add("m.raw")
    from ansible_collections.batchvirt.farm.plugins.module_utils import __name__ as package_name

    package = sys.modules[package_name]
    monkeypatch.setitem(sys.modules, package_name + "._torrent_fetch", None)
    monkeypatch.delattr(package, "_torrent_fetch", raising=False)
    with pytest.raises(ImageCacheError) as err:
        _stage(cache, img, "magnet:?xt=urn:btih:" + "0" * 40, total_timeout=5)
    assert "need the BitTorrent transport" in err.value.message


_STAGER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, %(collections)r)
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
    cache = ImageCache(%(root)r)
    with cache.lock(timeout=60, purpose="concurrent test"):
        result = cache.stage("img-a", "1", %(url)r, %(size)d, %(sha512)r)
    print(json.dumps({"changed": result.changed, "transferred": result.transferred}))
    """
)


def test_two_prestage_runs_at_once_never_corrupt(cache, served, hostbed):
    img = served.add("two.qcow2", size=4 * 1024 * 1024, seed=11)
    served.server.behave("two.qcow2", None, rate=8 * 1024 * 1024)
    code = _STAGER % {
        "collections": COLLECTIONS,
        "root": cache.root,
        "url": served.url("two.qcow2"),
        "size": img.size,
        "sha512": img.sha512,
    }
    procs = [
        hostbed.process(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for _run in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    # One staged it; the other waited for the lock, then found it ready.
    assert sorted(o["changed"] for o in outputs) == [False, True]
    assert sum(o["transferred"] for o in outputs) == img.size == served.server.sent["two.qcow2"]
    record = cache.get("img-a", "1")
    assert record.state == "ready"
    with open(record.path, "rb") as fh:
        assert hashlib.sha512(fh.read()).hexdigest() == img.sha512
    assert [h["to_state"] for h in cache.history("img-a", "1")] == ["partial", "ready"]
