"""Image selection: only endorsed (or explicitly staged) versions are ever deployed; withdrawn
markers; accepting the same list again writes nothing."""

from __future__ import annotations

import datetime
import os

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import (
    ImageAvoided,
    ImageCache,
    ImageNotEndorsed,
    select_version,
    withdrawn_marker,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._image_prune import prune
from tests.unit.plugins.module_utils.test_image_cache_states import DATA, SHA, Clock, FakeFetch

LIST = "3f0e8c2a-1b7d-4e59-8a61-0c9d2e4f6a71"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(tmp_path, clock):
    c = ImageCache(str(tmp_path / "images"), clock=clock)
    yield c
    c.close()


def entry(version, identifier="worker", **kw):
    out = {
        "identifier": identifier,
        "version": version,
        "uri": "http://x/%s" % version,
        "size": len(DATA),
        "sha512": SHA,
        "format": "raw",
    }
    out.update(kw)
    return out


def stage(cache, version, identifier="worker", list_id=LIST, expires=""):
    with cache.lock(timeout=1):
        return cache.stage(
            identifier,
            version,
            "http://x/%s" % version,
            len(DATA),
            SHA,
            "raw",
            fetch=FakeFetch(),
            list_id=list_id,
            expires=expires,
        ).record


def accept_v1_v2_stage_both_then_withdraw_v2(cache):
    cache.record_list(LIST, "1", [entry("1"), entry("2")])
    stage(cache, "1")
    stage(cache, "2")
    assert cache.latest("worker").version == "2"
    report = cache.record_list(LIST, "2", [entry("1")])
    assert [w["version"] for w in report["withdrawn"]] == ["2"]


def test_latest_never_returns_a_withdrawn_version(cache):
    accept_v1_v2_stage_both_then_withdraw_v2(cache)
    # v2 is still ready (slots may use it) but is never selected again
    assert cache.get("worker", "2").state == "ready"
    assert cache.latest("worker").version == "1"
    assert cache.resolve("worker")["version"] == "1"
    assert cache.resolve("worker", staged=True)["version"] == "1"
    with pytest.raises(ImageNotEndorsed) as err:
        cache.resolve("worker", "2")
    assert "2: withdrawn by list %s" % LIST in err.value.message
    assert err.value.option == "version"


def test_nothing_endorsed_fails_with_a_message_that_says_so(cache):
    accept_v1_v2_stage_both_then_withdraw_v2(cache)
    cache.record_list(LIST, "3", [])
    for call in (lambda: cache.latest("worker"), lambda: cache.resolve("worker", staged=True)):
        with pytest.raises(ImageNotEndorsed) as err:
            call()
        message = err.value.message
        assert "nothing is endorsed by a currently accepted image list" in message
        assert "1: withdrawn by list" in message and "2: withdrawn by list" in message
        assert "never deployed" in message


def test_an_expired_entry_is_never_selected(cache, clock):
    cache.record_list(LIST, "1", [entry("1"), entry("2", expires="2026-11-02T00:00:00Z")])
    stage(cache, "1")
    stage(cache, "2", expires="2026-11-02T00:00:00Z")
    assert cache.latest("worker").version == "2"
    clock.now += datetime.timedelta(days=2)
    assert cache.latest("worker").version == "1"
    with pytest.raises(ImageNotEndorsed) as err:
        select_version(cache, "worker", "2")
    assert "expired at 2026-11-02T00:00:00Z" in err.value.message
    # an explicit time wins over the cache's clock
    before = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    assert select_version(cache, "worker", now=before)["version"] == "2"


def test_an_image_staged_explicitly_without_a_list_is_selectable(cache):
    stage(cache, "7", list_id="")
    assert cache.latest("worker").version == "7"
    selected = cache.resolve("worker", "7")
    assert selected["list_id"] == "" and selected["sha512"] == SHA


def test_latest_is_none_when_nothing_is_staged(cache):
    cache.record_list(LIST, "1", [entry("1")])
    assert cache.latest("worker") is None
    assert cache.latest("other") is None


def test_staged_only_prefers_an_older_staged_version_over_a_newer_unstaged_one(cache):
    cache.record_list(LIST, "1", [entry("1"), entry("2")])
    stage(cache, "1")
    assert cache.resolve("worker")["version"] == "2"  # what to stage next
    assert cache.resolve("worker", staged=True)["version"] == "1"  # what a slot gets now
    assert cache.latest("worker").version == "1"


def test_selection_uses_the_one_version_order(cache):
    cache.record_list(
        LIST, "1", [entry("2026.11.21"), entry("2026-11-22"), entry("1.9", "other"), entry("1.10", "other")]
    )
    assert cache.resolve("worker")["version"] == "2026-11-22"
    assert cache.resolve("other")["version"] == "1.10"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".."])
def test_hostile_names_are_refused(cache, bad):
    with pytest.raises(Exception) as err:
        select_version(cache, bad)
    assert "is not allowed" in str(err.value)


def test_withdrawn_marker_follows_the_image(cache):
    accept_v1_v2_stage_both_then_withdraw_v2(cache)
    marker = os.path.join(cache.root, withdrawn_marker("worker", "2"))
    assert os.path.exists(marker) and os.path.getsize(marker) == 0
    assert not os.path.exists(os.path.join(cache.root, withdrawn_marker("worker", "1")))
    # kept while a slot uses it; expired (and unmarked) once it is gone
    cache.add_user("worker", "2", "slot-01")
    result = prune(cache, force=False, lock_timeout=1, check_mode=False)
    assert [k["version"] for k in result["kept"]] == ["2"] and os.path.exists(marker)
    cache.remove_user("worker", "2", "slot-01")
    result = prune(cache, force=False, lock_timeout=1, check_mode=False)
    assert [e["version"] for e in result["expired"]] == ["2"]
    assert not os.path.exists(marker) and result["markers_changed"] is False


def test_a_re_endorsed_version_loses_its_marker(cache):
    accept_v1_v2_stage_both_then_withdraw_v2(cache)
    marker = os.path.join(cache.root, withdrawn_marker("worker", "2"))
    assert os.path.exists(marker)
    cache.record_list(LIST, "3", [entry("1"), entry("2")])
    assert not os.path.exists(marker)
    assert cache.latest("worker").version == "2"


def test_accepting_the_same_list_again_writes_nothing(cache, clock):
    cache.record_list(LIST, "1", [entry("1"), entry("2")])
    accepted_at = cache.subscriptions()[0]["accepted_at"]
    changes = cache.db.total_changes
    clock.now += datetime.timedelta(hours=1)
    again = cache.record_list(LIST, "1", [entry("2"), entry("1")])
    assert again["new"] == [] and again["withdrawn"] == [] and len(again["current"]) == 2
    assert cache.db.total_changes == changes, "a no-change accept must not write"
    assert cache.subscriptions()[0]["accepted_at"] == accepted_at
    # a real change is written, with its time
    cache.record_list(LIST, "2", [entry("1")])
    assert cache.subscriptions()[0]["accepted_at"] == "2026-11-01T13:00:00Z"


def test_latest_skips_avoided_versions_and_names_them_when_none_is_left(cache):
    cache.record_list(LIST, "1", [entry("1"), entry("2"), entry("3")])
    for version in ("1", "2", "3"):
        stage(cache, version)
    assert cache.latest("worker", avoid=["3"]).version == "2"
    assert select_version(cache, "worker", avoid=["3", "2"], staged=True)["version"] == "1"
    assert cache.latest("worker", avoid=["9"]).version == "3"  # an unknown version changes nothing
    # an explicit version is never swapped for another one
    assert select_version(cache, "worker", "3", avoid=["3"])["version"] == "3"
    with pytest.raises(ImageAvoided) as err:
        cache.latest("worker", avoid=["1", "2", "3"])
    assert err.value.message == "image worker: every version that may be deployed here is avoided (1, 2, 3)"
    assert err.value.option == "avoid"


def test_avoid_never_brings_back_a_withdrawn_version(cache):
    accept_v1_v2_stage_both_then_withdraw_v2(cache)
    with pytest.raises(ImageAvoided) as err:
        cache.latest("worker", avoid=["1"])
    assert "avoided (1)" in err.value.message
