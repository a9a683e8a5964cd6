"""Pure parts of the BitTorrent transport: torrent creation and reading, piece sizes, the
libtorrent engine settings, and the errors a site admin sees."""

from __future__ import annotations

import os

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import (
    _torrent_engine,
    _torrent_fetch,
    _torrent_jobs,
    _torrent_meta,
)

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1, 64 * 1024), (32 * MIB, 64 * 1024), (128 * MIB, 64 * 1024), (129 * MIB, 128 * 1024),
     (512 * MIB, 256 * 1024), (600 * MIB, 512 * 1024), (10 * 1024 * MIB, 8 * MIB), (1024 * 1024 * MIB, 16 * MIB)],
)  # fmt: skip
def test_default_piece_length(size, expected):
    assert _torrent_meta.default_piece_length(size) == expected


def test_make_and_read_torrent(tmp_path):
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(300 * 1024))
    meta = _torrent_meta.make_torrent(str(image), ["http://t.invalid:6969/announce"], ["http://s.invalid/img.raw"])
    assert meta["changed"] and meta["path"] == str(image) + ".torrent"
    back = _torrent_meta.read_torrent(meta["path"])
    assert back["info_hash"] == meta["info_hash"] and len(back["info_hash"]) == 40
    assert back["size"] == 300 * 1024 and back["single_file"]
    assert back["pieces"] == 5 and back["piece_length"] == 64 * 1024
    assert back["web_seeds"] == ["http://s.invalid/img.raw"]
    assert back["trackers"] == ["http://t.invalid:6969/announce"]
    assert back["magnet"].startswith("magnet:?xt=urn:btih:" + meta["info_hash"])
    again = _torrent_meta.make_torrent(str(image), ["http://t.invalid:6969/announce"], ["http://s.invalid/img.raw"])
    assert not again["changed"]
    other = _torrent_meta.make_torrent(str(image), [], [], piece_length=32 * 1024, output=str(tmp_path / "o.torrent"))
    assert other["changed"] and other["pieces"] == 10 and other["info_hash"] != meta["info_hash"]


def test_make_torrent_refuses_bad_input(tmp_path):
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.make_torrent(str(tmp_path / "nope.raw"), [], [])
    assert err.value.message == f"cannot create a torrent for {tmp_path / 'nope.raw'}: not a regular file"
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.make_torrent(str(empty), [], [])
    assert "the file is empty" in err.value.message
    data = tmp_path / "d.raw"
    data.write_bytes(b"x" * 100)
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.make_torrent(str(data), [], [], piece_length=100000)
    assert "piece_length 100000 must be a power of two of at least 16384" in err.value.message


def test_read_torrent_names_the_bad_file(tmp_path):
    junk = tmp_path / "junk.torrent"
    junk.write_bytes(b"d4:spam")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.read_torrent(str(junk))
    assert err.value.message.startswith(f"{junk} is not a readable .torrent file")


def test_unsupported_source_scheme(tmp_path):
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_fetch.obtain_torrent("ftp://srv/img.torrent", str(tmp_path), 5)
    assert "ftp://srv/img.torrent: unsupported BitTorrent source" in err.value.message


def test_engine_settings_for_a_farm_swarm():
    lt = pytest.importorskip("libtorrent")
    job = _torrent_jobs.make_job("0" * 40, "/srv/x/image.raw.part", 0.0, {"listen_port": "0", "max_upload_limit": 1000})
    assert (job["save_path"], job["name"], job["max_upload_limit"]) == ("/srv/x", "image.raw.part", 1000)
    settings = _torrent_engine.engine_settings(lt, job)
    assert settings["unchoke_slots_limit"] == -1 and settings["choking_algorithm"] == 0
    # blocks are not tied to a slow source: 1 s of its rate, idle links may re-request them
    assert settings["request_queue_time"] == 1 and settings["strict_end_game_mode"] is False
    assert not settings["enable_outgoing_utp"] and not settings["enable_incoming_utp"]
    assert not settings["enable_dht"] and not settings["enable_lsd"]
    assert settings["upload_rate_limit"] == 1000
    tuned = _torrent_engine.engine_settings(lt, dict(job, settings={"unchoke_slots_limit": 4}, dht=True))
    assert tuned["unchoke_slots_limit"] == 4 and tuned["enable_dht"]
    session = lt.session(settings)  # every name is one libtorrent knows
    assert session.get_settings()["unchoke_slots_limit"] == -1
    # a seeder started as such (the origin): short request queues, a peer id hypervisors know
    seeder = _torrent_engine.engine_settings(lt, dict(job, seeder=True))
    assert (seeder["unchoke_slots_limit"], seeder["max_allowed_in_request_queue"]) == (-1, 16)
    assert seeder["peer_fingerprint"].encode().startswith(_torrent_engine.ORIGIN_PEER_ID)
    assert not settings.get("peer_fingerprint", "").encode().startswith(_torrent_engine.ORIGIN_PEER_ID)
    assert (
        _torrent_engine.engine_settings(lt, dict(job, seeder=True, settings={"unchoke_slots_limit": 8}))[
            "unchoke_slots_limit"
        ]
        == 8
    )
    applied = lt.session(seeder).get_settings()
    assert (applied["max_allowed_in_request_queue"], applied["peer_fingerprint"]) == (
        16,
        _torrent_engine.ORIGIN_FINGERPRINT,
    )


@pytest.mark.parametrize(
    "index, size, share",
    [(None, None, None), (0, 1, None), (0, 16, [0, 16]), ("15", "16", [15, 16])],
)
def test_swarm_share_from_index_and_size(index, size, share):
    job = _torrent_jobs.make_job("0" * 40, "/srv/x/image.raw.part", 0.0, {"swarm_index": index, "swarm_size": size})
    assert job["swarm_share"] == share


@pytest.mark.parametrize(
    "index, size, words",
    [(16, 16, "swarm_index 16 must be at least 0 and less than swarm_size 16"), (-1, 4, "swarm_index -1"),
     ("a", 4, "swarm_index 'a' and swarm_size 4 must be integers")],
)  # fmt: skip
def test_swarm_share_refuses_an_index_outside_the_swarm(index, size, words):
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_jobs.make_job("0" * 40, "/srv/x/image.raw.part", 0.0, {"swarm_index": index, "swarm_size": size})
    assert words in err.value.message


def test_libtorrent_reads_a_torrent_as_torf_does(tmp_path):
    lt = pytest.importorskip("libtorrent")
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(300 * 1024))
    meta = _torrent_meta.make_torrent(str(image), ["http://t.example:6969/announce"], ["http://s.example/image.raw"])
    by_lt = _torrent_meta.read_torrent_lt(lt, meta["path"])
    by_torf = _torrent_meta.read_torrent(meta["path"])
    assert {k: v for k, v in by_lt.items() if k != "magnet"} == {k: v for k, v in by_torf.items() if k != "magnet"}
    assert by_lt["magnet"].startswith("magnet:?xt=urn:btih:" + by_torf["info_hash"])
    junk = tmp_path / "junk.torrent"
    junk.write_bytes(b"d4:spam")
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.read_torrent_lt(lt, str(junk))
    assert err.value.message.startswith(f"{junk} is not a readable .torrent file")


def test_free_port_refuses_a_full_range():
    import socket

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(_torrent_meta.TorrentError) as err:
            _torrent_engine.free_port(f"{port}-{port}")
    assert f"listen_port {port}-{port}: every port of the range is in use" in err.value.message


def test_missing_torf_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torf":
            raise ImportError("no torf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(_torrent_meta.TorrentError) as err:
        _torrent_meta.read_torrent("/x.torrent")
    assert "install it with 'pip install torf'" in err.value.message
