"""The farm-wide operations lock on real files and real processes: acquire, contend, renew,
expire, release (refused for another run's token), unreadable records, and concurrent acquirers
from separate processes of which exactly one wins."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _oplock as oplock
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

T0 = datetime.datetime(2026, 12, 3, 8, 0, 0, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)


def make(tmp_path, clock=None):
    return oplock.OperationsLock(str(tmp_path / "ops" / "operations.lock"), clock=clock or Clock())


def _load(path):
    with open(path) as handle:
        return json.load(handle)


HOLDER = {"play": "rolling_update", "awx_job_id": "42", "host": "awx-ee-1", "pid": 17}


def test_acquire_records_the_holder_and_expiry(tmp_path):
    lock = make(tmp_path)
    result = lock.try_acquire("rolling_update", 600, HOLDER)
    assert result.acquired and result.changed and result.taken_over is None
    on_disk = _load(lock.path)
    assert on_disk == result.record
    assert on_disk["operation"] == "rolling_update" and on_disk["holder"] == HOLDER
    assert on_disk["acquired_at"] == "2026-12-03T08:00:00Z" and on_disk["expires_at"] == "2026-12-03T08:10:00Z"
    assert len(on_disk["token"]) == 32


def test_a_second_run_finds_the_farm_busy_and_is_told_who_holds_it(tmp_path):
    clock = Clock()
    lock = make(tmp_path, clock)
    first = lock.try_acquire("rolling_update", 600, HOLDER)
    clock.advance(60)
    second = lock.try_acquire("recycle", 600, {"play": "recycle", "host": "awx-ee-2", "pid": 9})
    assert not second.acquired and not second.changed
    assert second.holder == first.record
    assert "held by rolling_update, AWX job 42, on awx-ee-1 pid 17, since 2026-12-03T08:00:00Z" in second.msg
    assert _load(lock.path) == first.record  # untouched


def test_the_holder_renews_with_its_token(tmp_path):
    clock = Clock()
    lock = make(tmp_path, clock)
    first = lock.try_acquire("rolling_update", 600, HOLDER)
    clock.advance(500)
    renewed = lock.try_acquire("rolling_update", 600, HOLDER, token=first.record["token"])
    assert renewed.acquired and renewed.record["token"] == first.record["token"]
    assert renewed.record["acquired_at"] == "2026-12-03T08:00:00Z"
    assert renewed.record["expires_at"] == "2026-12-03T08:18:20Z"
    clock.advance(200)  # past the first expiry, not the renewed one
    assert not lock.try_acquire("recycle", 600).acquired


def test_an_expired_lock_is_taken_over_and_reported(tmp_path):
    clock = Clock()
    lock = make(tmp_path, clock)
    crashed = lock.try_acquire("rolling_update", 30, HOLDER)
    clock.advance(29)
    assert not lock.try_acquire("recycle", 600).acquired
    clock.advance(1)  # exactly at expiry: lapsed
    taken = lock.try_acquire("recycle", 600)
    assert taken.acquired and taken.taken_over == crashed.record
    assert taken.record["token"] != crashed.record["token"]
    assert "took over the expired operations lock of rolling_update, AWX job 42" in taken.msg
    # the crashed run cannot come back and renew or release what is no longer its lock
    assert not lock.try_acquire("rolling_update", 30, token=crashed.record["token"]).acquired
    with pytest.raises(oplock.OperationsLockError, match="held by another run: recycle"):
        lock.release(crashed.record["token"])


def test_release_by_the_wrong_holder_is_refused(tmp_path):
    lock = make(tmp_path)
    held = lock.try_acquire("rolling_update", 600, HOLDER)
    with pytest.raises(oplock.OperationsLockError) as err:
        lock.release("not-the-token")
    assert isinstance(err.value, FarmError) and err.value.option == "token"
    assert "refusing to release the operations lock held by another run: rolling_update, AWX job 42" in str(err.value)
    assert os.path.exists(lock.path)
    with pytest.raises(oplock.OperationsLockError, match="needs the token"):
        lock.release("")
    released = lock.release(held.record["token"])
    assert released.changed and not os.path.exists(lock.path)
    assert not lock.release(held.record["token"]).changed  # already free: nothing to do


def test_force_release_frees_the_farm(tmp_path):
    lock = make(tmp_path)
    lock.try_acquire("rolling_update", 600, HOLDER)
    assert lock.release("", force=True).changed
    assert lock.try_acquire("recycle", 600).acquired


def test_check_mode_writes_nothing(tmp_path):
    lock = make(tmp_path)
    assert lock.try_acquire("rolling_update", 600, check_mode=True).acquired
    assert not os.path.exists(lock.path)
    held = lock.try_acquire("rolling_update", 600)
    assert not lock.try_acquire("recycle", 600, check_mode=True).acquired
    assert lock.release(held.record["token"], check_mode=True).changed and os.path.exists(lock.path)


def test_wait_gives_up_after_the_timeout_naming_the_holder(tmp_path):
    lock = make(tmp_path)
    lock.try_acquire("rolling_update", 600, HOLDER)
    slept = []
    result = lock.acquire("recycle", 600, wait_timeout=0.3, poll_interval=0.1, sleep=slept.append)
    assert not result.acquired and "held by rolling_update" in result.msg and "(waited" in result.msg
    assert slept  # it polled


def test_wait_gets_the_lock_once_it_expires(tmp_path):
    clock = Clock()
    lock = make(tmp_path, clock)
    lock.try_acquire("rolling_update", 5, HOLDER)
    result = lock.acquire("recycle", 600, wait_timeout=60, poll_interval=1, sleep=lambda s: clock.advance(10))
    assert result.acquired and result.taken_over["operation"] == "rolling_update"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "it is not JSON"),
        (b'{"operation": "x", "expires_at": "2026-12-03T08:00:00Z"}', "it has no token"),
        (b'{"token": "abc", "expires_at": "tomorrow"}', "is not an ISO-8601"),
        (b"[]", "it has no token"),
        (b"\xff\xfe", "it is not JSON"),
        (b" " * (oplock.MAX_RECORD_BYTES + 1), "larger than"),
    ],
)
def test_an_unreadable_record_is_refused_not_overwritten(tmp_path, content, problem):
    lock = make(tmp_path)
    os.makedirs(os.path.dirname(lock.path))
    with open(lock.path, "wb") as handle:
        handle.write(content)
    with pytest.raises(oplock.OperationsLockError, match=problem) as err:
        lock.try_acquire("recycle", 600)
    assert "remove the file (or release the lock with force=true)" in str(err.value)
    with open(lock.path, "rb") as handle:
        assert handle.read() == content


@pytest.mark.parametrize(("kwargs", "option"), [({"operation": ""}, "operation"), ({"ttl": 0}, "ttl")])
def test_bad_input_names_the_option(tmp_path, kwargs, option):
    args = dict({"operation": "recycle", "ttl": 60}, **kwargs)
    with pytest.raises(oplock.OperationsLockError) as err:
        make(tmp_path).try_acquire(args["operation"], args["ttl"])
    assert err.value.option == option


def test_relative_path_refused():
    with pytest.raises(oplock.OperationsLockError, match="absolute path"):
        oplock.OperationsLock("operations.lock")


def _contend(path, barrier, queue, index):
    barrier.wait()
    result = oplock.OperationsLock(path).try_acquire("op-%d" % index, 600, {"pid": os.getpid()})
    queue.put((index, result.acquired, (result.record or result.holder or {}).get("token")))


def test_concurrent_acquirers_from_real_processes_exactly_one_wins(tmp_path):
    path = str(tmp_path / "operations.lock")
    ctx = multiprocessing.get_context("fork")
    for _attempt in range(5):
        if os.path.exists(path):
            os.unlink(path)
        count = 8
        barrier = ctx.Barrier(count)
        queue = ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(path, barrier, queue, i)) for i in range(count)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=60) for _proc in procs]
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        winners = [r for r in results if r[1]]
        assert len(winners) == 1, results
        on_disk = _load(path)
        # every loser was told the winner's token: nobody saw a half-written or overwritten record
        assert {r[2] for r in results} == {on_disk["token"]} and on_disk["operation"] == "op-%d" % winners[0][0]


def test_run_module_reports_or_fails_when_busy(tmp_path):
    path = str(tmp_path / "operations.lock")
    params = {"state": "acquired", "path": path, "operation": "rolling_update", "holder": HOLDER, "token": ""}
    params.update({"ttl": 600, "wait_timeout": 0, "poll_interval": 1, "on_busy": "report", "force": False})
    first = oplock.run_module(params, check_mode=False)
    assert first["acquired"] and first["token"] and not first.get("failed")
    busy = oplock.run_module(dict(params, operation="recycle"), check_mode=False)
    assert not busy["acquired"] and busy["holder"]["token"] == first["token"] and not busy.get("failed")
    failing = oplock.run_module(dict(params, operation="recycle", on_busy="fail"), check_mode=False)
    assert failing["failed"] and "held by rolling_update" in failing["msg"]
    released = oplock.run_module(dict(params, state="released", token=first["token"]), check_mode=False)
    assert released["changed"] and not os.path.exists(path)
