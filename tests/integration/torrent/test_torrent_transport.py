"""BitTorrent transport against a real opentracker and the libtorrent engine: web seed only, a
corrupted seeder, timeouts, size mismatch, seeding that outlives the caller, one engine that
downloads and goes on seeding from the moved file, and resume after a kill."""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_fetch, _torrent_jobs, _torrent_meta
from tests.integration.torrent.conftest import free_port


def test_web_seed_only_completes(swarm):
    """A lone hypervisor, no peer at all: the image server's URL (BEP-19 url-list) is enough."""
    image = swarm.image()
    base = swarm.http(os.path.dirname(image))
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [f"{base}/image.raw"])
    tracker.allow(meta["info_hash"])
    dest = os.path.join(swarm.tmp, "hv1", "partial", "image.raw.part")
    result = _torrent_fetch.fetch(
        f"{base}/image.raw.torrent", dest, os.path.getsize(image), None, timeout=30,
        state_dir=swarm.state_dir("hv1"),
    )  # fmt: skip
    assert filecmp.cmp(dest, image, shallow=False)
    assert result["info_hash"] == meta["info_hash"]
    assert result["verified"] == "piece-sha1"
    assert os.path.isfile(result["torrent"])
    assert result["engine"] == "libtorrent" and result["downloaded"] >= os.path.getsize(image)
    assert not result["seeding"] and _torrent_jobs.seeding_status(swarm.state_dir("hv1")) == []


def test_make_torrent_is_idempotent(swarm):
    image = swarm.image(size=1024 * 1024)
    first = _torrent_meta.make_torrent(image, ["http://tracker.invalid/announce"], ["http://srv.invalid/image.raw"])
    second = _torrent_meta.make_torrent(image, ["http://tracker.invalid/announce"], ["http://srv.invalid/image.raw"])
    assert first["changed"] and not second["changed"]
    assert first["info_hash"] == second["info_hash"]
    third = _torrent_meta.make_torrent(image, ["http://other.invalid/announce"], ["http://srv.invalid/image.raw"])
    assert third["changed"] and third["info_hash"] == first["info_hash"]  # trackers are outside the info dict
    assert _torrent_meta.read_torrent(third["path"])["trackers"] == ["http://other.invalid/announce"]


def test_corrupted_seeder_never_yields_a_verified_file(swarm):
    """The only peer serves bad data for half the image: those pieces fail their SHA-1 check
    and are never accepted; the fetch fails, the file is not the image."""
    image = swarm.image()
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [])
    tracker.allow(meta["info_hash"])
    bad = os.path.join(swarm.tmp, "bad", "image.raw")
    os.makedirs(os.path.dirname(bad))
    with open(image, "rb") as src, open(bad, "wb") as out:
        data = bytearray(src.read())
        half = len(data) // 2
        for offset in range(half, len(data), 4096):  # flip a byte in every page of the 2nd half
            data[offset] ^= 0xFF
        out.write(data)
    # The bad peer sends its data unchecked (aria2c, as the image_seeder role runs it, with
    # --bt-seed-unverified; a libtorrent seeder would hash each piece on first read and refuse).
    seeder = subprocess.Popen(
        ["aria2c", f"--dir={os.path.dirname(bad)}", "--index-out=1=image.raw", "--seed-ratio=0.0",
         "--check-integrity=false", "--bt-seed-unverified=true", f"--listen-port={free_port()}",
         "--enable-dht=false", "--bt-enable-lpd=false", "--bt-tracker-interval=1", "--console-log-level=warn",
         "--summary-interval=0", meta["path"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    swarm.bed.process(seeder)
    dest = os.path.join(swarm.tmp, "hv1", "image.raw.part")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(meta["path"], dest, len(data), None, timeout=8, state_dir=swarm.state_dir("hv1"))
    assert "timed out after 8 s fetching " + meta["path"] in err.value.message
    assert "no peer or web seed delivered verified pieces" in err.value.message
    assert not (os.path.exists(dest) and filecmp.cmp(dest, image, shallow=False))
    # The bad peer was really used: blocks of the corrupted half came from it, and were refused.
    failed = re.search(r"(\d+) bytes failed the piece hash check and were discarded", err.value.message)
    assert failed and int(failed.group(1)) >= meta["piece_length"], err.value.message
    # Only pieces of the good half were accepted (libtorrent then bans the peer for its bad data).
    verified = re.search(r"downloading, (\d+)% verified", err.value.message)
    assert verified and int(verified.group(1)) <= 50, err.value.message


def test_no_source_times_out_with_a_clear_message(swarm):
    image = swarm.image(size=1024 * 1024)
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [])
    tracker.allow(meta["info_hash"])
    dest = os.path.join(swarm.tmp, "hv1", "image.raw.part")
    started = time.monotonic()
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(
            "file://" + meta["path"], dest, 1024 * 1024, None, timeout=3, state_dir=swarm.state_dir("hv1")
        )
    assert time.monotonic() - started < 20
    assert err.value.message.startswith(f"timed out after 3 s fetching file://{meta['path']} into {dest}")


def test_size_mismatch_is_refused_before_download(swarm):
    image = swarm.image(size=1024 * 1024)
    meta = _torrent_meta.make_torrent(image, ["http://127.0.0.1:9/announce"], [])
    dest = os.path.join(swarm.tmp, "hv1", "image.raw.part")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(meta["path"], dest, 12345, None, timeout=5, state_dir=swarm.state_dir("hv1"))
    assert f"the torrent describes {1024 * 1024} bytes but the image list says 12345" in err.value.message
    assert not os.path.exists(dest)


def test_bad_torrent_source_is_named(swarm):
    junk = os.path.join(swarm.tmp, "junk.torrent")
    with open(junk, "wb") as handle:
        handle.write(b"<html>not a torrent</html>")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(
            junk, os.path.join(swarm.tmp, "x.part"), None, None, timeout=5, state_dir=swarm.state_dir("x")
        )
    assert f"{junk} is not a readable .torrent file" in err.value.message
    base = swarm.http(swarm.tmp)
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(f"{base}/missing.torrent", os.path.join(swarm.tmp, "y.part"), None, None, timeout=5,
                             state_dir=swarm.state_dir("y"))  # fmt: skip
    assert f"downloading the torrent file {base}/missing.torrent failed" in err.value.message
    assert "404" in err.value.message


def test_seeder_outlives_the_caller_is_found_again_and_ends(swarm):
    """start_seeding leaves a detached engine (its own session, a pidfile); a rerun finds it
    (not changed), a longer time updates the same process; it ends by itself at its end time."""
    image = swarm.image(size=1024 * 1024)
    meta = _torrent_meta.make_torrent(image, ["http://127.0.0.1:9/announce"], [])
    state = swarm.state_dir("seed")
    first = _torrent_jobs.start_seeding(meta["path"], image, 6, state_dir=state)
    assert first["changed"] and first["running"]
    assert os.getsid(first["pid"]) != os.getsid(0), "the seeder must not share the caller's session"
    with open(os.path.join(state, meta["info_hash"] + ".pid")) as handle:
        assert int(handle.read()) == first["pid"]
    again = _torrent_jobs.start_seeding(meta["path"], image, 6, state_dir=state)
    assert not again["changed"] and again["pid"] == first["pid"]
    longer = _torrent_jobs.start_seeding(meta["path"], image, 600, state_dir=state)
    assert longer["changed"] and longer["pid"] == first["pid"], "the same engine is told its new end"
    status_path = os.path.join(state, meta["info_hash"] + ".status")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _status(status_path).get("until") != longer["until"]:
        time.sleep(0.1)
    assert abs(_status(status_path)["until"] - longer["until"]) < 0.01
    assert [r["running"] for r in _torrent_jobs.seeding_status(state)] == [True]
    assert _torrent_jobs.stop_seeding(meta["info_hash"], state)
    assert _torrent_jobs.seeding_status(state) == []
    short = _torrent_jobs.start_seeding(meta["path"], image, 2, state_dir=state)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _torrent_jobs.seeding_status(state)[0]["running"]:
        time.sleep(0.5)
    assert not _torrent_jobs.seeding_status(state)[0]["running"], (
        f"seeder {short['pid']} still runs after its seed time"
    )


def test_seeding_refuses_wrong_data(swarm):
    image = swarm.image(size=1024 * 1024)
    meta = _torrent_meta.make_torrent(image, ["http://127.0.0.1:9/announce"], [])
    other = swarm.image(name="other.raw", size=1000)
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_jobs.start_seeding(meta["path"], other, 60, state_dir=swarm.state_dir("s"))
    assert f"{other} is missing or is not {1024 * 1024} bytes" in err.value.message


def _status(path):
    with open(path) as handle:
        return json.load(handle)


def test_killed_download_resumes(swarm):
    """A fetch stopped mid-way leaves partial data; a rerun re-checks it and fetches only the rest."""
    image = swarm.image(size=16 * 1024 * 1024)
    base = swarm.http(os.path.dirname(image))
    meta = _torrent_meta.make_torrent(image, [], [f"{base}/image.raw"])
    dest = os.path.join(swarm.tmp, "hv1", "image.raw.part")
    state = swarm.state_dir("hv1")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch(meta["path"], dest, None, None, timeout=3, state_dir=state, web_seed_delay=0,
                             max_download_limit=2 * 1024 * 1024)  # fmt: skip
    assert "partial data kept for a resume" in err.value.message
    assert os.path.exists(dest) and not filecmp.cmp(dest, image, shallow=False)
    assert _torrent_jobs.seeding_status(state) == [] and not os.path.exists(
        os.path.join(state, meta["info_hash"] + ".pid")
    )
    result = _torrent_fetch.fetch(meta["path"], dest, None, None, timeout=30, state_dir=state, web_seed_delay=0)
    assert filecmp.cmp(dest, image, shallow=False)
    assert result["size"] == os.path.getsize(image)
    assert 0 < result["downloaded"] < result["size"], "the rerun must keep the verified pieces it had"


def test_one_engine_downloads_then_seeds_the_moved_file(swarm):
    """With seed_for_seconds the engine that downloaded keeps running; after the caller moved the
    verified file, start_seeding points the SAME process at the new path, and another
    hypervisor then gets the image from it alone (origin gone, no web seed)."""
    image = swarm.image(size=4 * 1024 * 1024)
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [])
    tracker.allow(meta["info_hash"])
    origin_state = swarm.state_dir("origin")
    _torrent_jobs.start_seeding(meta["path"], image, 120, state_dir=origin_state)
    state = swarm.state_dir("hv1")
    partial = os.path.join(swarm.tmp, "hv1", "partial", "image.raw.part")
    result = _torrent_fetch.fetch(meta["path"], partial, None, None, timeout=30, state_dir=state, seed_for_seconds=60)
    assert result["seeding"]
    [record] = _torrent_jobs.seeding_status(state)
    assert record["running"] and record["data_path"] == partial
    final = os.path.join(swarm.tmp, "hv1", "image.raw")
    os.replace(partial, final)  # what the image cache does after its sha512 check
    seeder = _torrent_jobs.start_seeding(result["torrent"], final, 60, state_dir=state)
    assert seeder["changed"] and seeder["pid"] == record["pid"], "no second engine: the first one is told"
    assert _torrent_jobs.start_seeding(result["torrent"], final, 60, state_dir=state)["changed"] is False
    _torrent_jobs.stop_seeding(meta["info_hash"], origin_state)
    late = os.path.join(swarm.tmp, "hv2", "image.raw.part")
    _torrent_fetch.fetch(meta["path"], late, None, None, timeout=30, state_dir=swarm.state_dir("hv2"))
    assert filecmp.cmp(late, image, shallow=False)
    status_path = os.path.join(state, meta["info_hash"] + ".status")
    status = _status(status_path)
    assert status["save_path"] == os.path.dirname(final) and status["name"] == "image.raw"
    # the engine's upload counter lags the last bytes sent by a few status rounds
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and status["uploaded"] < os.path.getsize(image):
        time.sleep(0.2)
        status = _status(status_path)
    assert status["uploaded"] >= os.path.getsize(image), status


def test_missing_engine_says_what_to_install(swarm, monkeypatch):
    monkeypatch.setitem(sys.modules, "libtorrent", None)
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.fetch("magnet:?xt=urn:btih:" + "0" * 40, os.path.join(swarm.tmp, "x"), None, None, timeout=1)
    assert "the Python binding of libtorrent is required" in err.value.message
    assert "install python3-libtorrent (Debian/Ubuntu)" in err.value.message


def test_magnet_source_gets_metadata_from_the_swarm(swarm):
    """A magnet URI (tracker in tr=): the metadata comes from the origin seeder, the .torrent is
    kept for seeding afterwards."""
    image = swarm.image(size=2 * 1024 * 1024)
    tracker = swarm.tracker()
    meta = _torrent_meta.make_torrent(image, [tracker.url], [])
    tracker.allow(meta["info_hash"])
    _torrent_jobs.start_seeding(meta["path"], image, 60, state_dir=swarm.state_dir("origin"))
    assert "tr=" in meta["magnet"]
    dest = os.path.join(swarm.tmp, "hv1", "image.raw.part")
    result = _torrent_fetch.fetch(meta["magnet"], dest, None, None, timeout=30, state_dir=swarm.state_dir("hv1"))
    assert filecmp.cmp(dest, image, shallow=False)
    assert result["info_hash"] == meta["info_hash"]
    assert _torrent_meta.read_torrent(result["torrent"])["info_hash"] == meta["info_hash"]
    assert [n for n in os.listdir(os.path.dirname(dest)) if n.endswith(".torrent")] == []


def test_image_cache_seeder_gets_the_fetch_options(swarm):
    """The image cache starts seeding a ready image with the same engine options as its fetch
    (web seeds, web-seed delay, engine settings, rate limits): a seeder started afresh must not
    fall back to the engine's defaults."""
    from ansible_collections.batchvirt.farm.plugins.module_utils import _transfer

    image = swarm.image(size=1024 * 1024)
    meta = _torrent_meta.make_torrent(image, ["http://127.0.0.1:9/announce"], [])
    state = swarm.state_dir("cache-seed")
    options = {
        "seed_for_seconds": 30,
        "state_dir": state,
        "web_seeds": ["http://127.0.0.1:9/image.raw"],
        "web_seed_delay": 7,
        "max_upload_limit": 123456,
        "engine_settings": {"connection_speed": 77},
    }
    fetched = _transfer.TransferResult(
        uri="x", path=image, size=1024 * 1024, sha512="", transferred=0, resumed_from=0, seconds=0, torrent=meta["path"]
    )
    assert _transfer.start_seeding(fetched, image, options) is None
    with open(os.path.join(state, meta["info_hash"] + ".job")) as handle:
        job = json.load(handle)
    assert job["web_seeds"] == ["http://127.0.0.1:9/image.raw"]
    assert (job["web_seed_delay"], job["max_upload_limit"]) == (7.0, 123456)
    assert job["settings"] == {"connection_speed": 77}
