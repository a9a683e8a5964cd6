"""Accounting records: one per VM life, merged on a repeated write, kept through a killed
writer, filtered, exported as JSON lines and APEL-style CSV; hostile input refused."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import (
    AccountingError,
    AccountingStore,
    export_text,
    record_from_metadata,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata

T0 = datetime.datetime(2026, 11, 21, 6, 0, tzinfo=datetime.timezone.utc)
SHA = "ab" * 64


def life(slot="w1", created="2026-11-21T06:00:00Z", **extra):
    return {
        "slot": slot,
        "hypervisor": "hv1",
        "created": created,
        "image_identifier": "el9",
        "image_version": "1",
        **extra,
    }


@pytest.fixture
def store(tmp_path):
    with AccountingStore(str(tmp_path / "acc" / "accounting.sqlite")) as s:
        yield s


def test_one_record_per_life_and_repeated_writes_merge(store):
    changed, rec, before = store.record(life(cores=2, memory_mib=2048), T0)
    assert changed is True and before is None
    assert rec["life_id"] == "hv1/w1/2026-11-21T06:00:00Z"
    assert rec["worker_type"] == "default"
    # the same write again: nothing changes
    assert store.record(life(cores=2, memory_mib=2048), T0)[0] is False
    # a later write adds the end, keeps what it does not give
    changed, rec, _before = store.record(life(ended="2026-11-22T06:00:00+00:00", end_reason="recycled", jobs=7), T0)
    assert changed is True
    assert (rec["cores"], rec["ended"], rec["jobs"]) == (2, "2026-11-22T06:00:00Z", 7)
    # a repeated registration keeps the first time; an earlier one wins
    store.record(life(registered="2026-11-21T06:05:00Z"), T0)
    assert store.record(life(registered="2026-11-21T07:00:00Z"), T0)[1]["registered"] == "2026-11-21T06:05:00Z"
    assert store.record(life(registered="2026-11-21T06:04:00Z"), T0)[1]["registered"] == "2026-11-21T06:04:00Z"
    # the same slot created again is a new life
    store.record(life(created="2026-11-22T06:05:00Z"), T0)
    assert [r["life_id"] for r in store.query(slot="w1")] == [
        "hv1/w1/2026-11-21T06:00:00Z",
        "hv1/w1/2026-11-22T06:05:00Z",
    ]
    assert store.counts() == {"ended": {"recycled": 1}, "open": 1}


def test_query_filters(store):
    store.record(life("a", "2026-11-01T00:00:00Z", ended="2026-11-02T00:00:00Z", end_reason="failed"), T0)
    store.record(life("b", "2026-11-03T00:00:00Z", worker_type="gpu"), T0)
    store.record(life("c", "2026-11-05T00:00:00Z", ended="2026-11-06T00:00:00Z", end_reason="recycled"), T0)

    def slots(**filters):
        return [r["slot"] for r in store.query(**filters)]

    assert slots() == ["a", "b", "c"]
    assert slots(status="open") == ["b"]
    assert slots(status="ended") == ["a", "c"]
    assert slots(worker_type="gpu") == ["b"]
    assert slots(end_reason="failed") == ["a"]
    assert slots(since="2026-11-04T00:00:00Z") == ["b", "c"]  # alive at or after
    assert slots(until="2026-11-03T00:00:00Z") == ["a", "b"]
    assert slots(limit=1) == ["a"]
    with pytest.raises(AccountingError, match="since: 'yesterday' is not an ISO-8601"):
        store.query(since="yesterday")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"slot": "w1", "hypervisor": "hv1"}, "created"),
        (life(colour="red"), "record"),
        (life(created="yesterday"), "created"),
        (life(cores=-1), "cores"),
        (life(cores=True), "cores"),
        (life(memory_mib=1.5), "memory_mib"),
        (life(end_reason="boredom"), "end_reason"),
        (life(ended="2026-11-20T00:00:00Z"), "ended"),
        (life(slot="../etc/passwd"), "slot"),
        (life(slot="w1'; DROP TABLE lives; --"), "slot"),
        (life(image_sha512="zz" * 64), "image_sha512"),
        (life(worker_type=["gpu"]), "worker_type"),
    ],
)
def test_bad_records_are_refused_naming_the_field(store, record, field):
    with pytest.raises(AccountingError) as err:
        store.record(record, T0)
    assert err.value.option == field
    assert store.query() == []


def test_record_from_metadata_takes_drain_start():
    meta = SlotMetadata(
        name="w1", hypervisor="hv1", image_identifier="el9", image_version="2", image_sha512=SHA,
        created_at=T0, drain_at=T0 + datetime.timedelta(days=1), deadline=T0 + datetime.timedelta(days=2),
        worker_type="", drain_requested=True, drain_reason="kernel", drain_requested_at=T0 + datetime.timedelta(hours=5),
    )  # fmt: skip
    rec = record_from_metadata(meta.to_dict(), cores=4, memory_mib=8192, now=T0 + datetime.timedelta(days=3))
    assert rec["drain_started"] == "2026-11-21T11:00:00Z"  # the request, before the planned drain_at
    assert (rec["worker_type"], rec["image_sha512"], rec["cores"]) == ("default", SHA, 4)
    rec = record_from_metadata({**meta.to_dict(), "drain": {"requested": False}}, now=T0 + datetime.timedelta(days=3))
    assert rec["drain_started"] == "2026-11-22T06:00:00Z"  # drain_at, passed
    rec = record_from_metadata({**meta.to_dict(), "drain": {"requested": False}}, now=T0)
    assert "drain_started" not in rec


def test_exports(store):
    store.record(life("a", cores=2, memory_mib=2048, ended="2026-11-21T08:00:00Z", end_reason="failed", jobs=3), T0)
    store.record(life("b", worker_type="gpu"), T0)
    records = store.query()
    lines = export_text(records, "jsonl").splitlines()
    assert [json.loads(x)["slot"] for x in lines] == ["a", "b"]
    rows = list(csv.DictReader(io.StringIO(export_text(records, "apel_csv", site="SITE-X"))))
    assert rows[0]["VMUUID"] == "hv1/a/2026-11-21T06:00:00Z"
    assert (rows[0]["Status"], rows[0]["WallDuration"], rows[0]["CpuCount"], rows[0]["Memory"]) == (
        "completed", "7200", "2", "2048",
    )  # fmt: skip
    assert (rows[0]["SiteName"], rows[0]["ImageId"], rows[0]["Jobs"], rows[0]["EndReason"]) == (
        "SITE-X", "el9:1", "3", "failed",
    )  # fmt: skip
    assert (rows[1]["Status"], rows[1]["EndTime"], rows[1]["LocalGroupId"]) == ("started", "", "gpu")
    with pytest.raises(AccountingError, match="format: 'xml' must be jsonl or apel_csv"):
        export_text(records, "xml")


def test_concurrent_writers_of_the_same_life_make_one_record(tmp_path):
    path = str(tmp_path / "acc.sqlite")
    AccountingStore(path).close()
    errors = []

    def writer(n):
        try:
            with AccountingStore(path) as s:
                for i in range(20):
                    s.record(life(jobs=n * 100 + i), T0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with AccountingStore(path) as s:
        assert len(s.query()) == 1


WRITER = r"""
import datetime, sys
from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import AccountingStore
store = AccountingStore(sys.argv[1])
t0 = datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc)
for i in range(int(sys.argv[2])):
    store.record({"slot": "w%05d" % i, "hypervisor": "hv1", "created": "2026-11-21T06:00:00Z",
                  "image_identifier": "el9", "image_version": "1", "cores": 2, "memory_mib": 2048,
                  "ended": "2026-11-22T06:00:00Z", "end_reason": "recycled"}, t0)
    if i == 50:
        print("started", flush=True)
"""


def test_a_killed_writer_loses_no_committed_record_and_a_rerun_writes_none_twice(tmp_path):
    path = str(tmp_path / "acc.sqlite")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path, "100000"], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT slot, cores, memory_mib, ended, end_reason FROM lives ORDER BY slot").fetchall()
    conn.close()
    written = len(rows)
    assert 50 < written < 100000, "the writer was not killed mid-way"
    # every committed record is whole, and they are the first ones in order
    assert [r[0] for r in rows] == ["w%05d" % i for i in range(written)]
    assert {r[1:] for r in rows} == {(2, 2048, "2026-11-22T06:00:00Z", "recycled")}
    # the interrupted "play" runs again, writing the same lives and the rest
    subprocess.run([sys.executable, "-c", WRITER, path, str(written + 10)], env=env, check=True, capture_output=True)
    with AccountingStore(path) as s:
        records = s.query()
    assert len(records) == written + 10
    assert len({r["life_id"] for r in records}) == written + 10


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "acc.sqlite")
    AccountingStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(AccountingError, match="schema version 99, newer than this collection understands"):
        AccountingStore(path)


def test_not_a_database_is_reported(tmp_path):
    path = tmp_path / "acc.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AccountingError, match="path: cannot open the accounting database"):
        AccountingStore(str(path))


def test_a_life_ends_once_a_later_write_keeps_its_end_and_reason(store):
    # recycle.yml records a slot's life when it enters back-off (its VM is stopped) and again when
    # the back-off has passed and it is replaced, after its drain claim: the first end stands
    store.record(life(registered="2026-11-21T06:05:00Z"), T0)
    store.record(life(ended="2026-11-21T09:00:00Z", end_reason="failed", jobs=0), T0)
    changed, rec, _before = store.record(
        life(ended="2026-11-21T19:00:00Z", end_reason="recycled", drain_started="2026-11-21T18:59:00Z", jobs=0), T0
    )
    assert changed is False
    assert (rec["ended"], rec["end_reason"], rec["drain_started"]) == ("2026-11-21T09:00:00Z", "failed", None)
    assert store.counts() == {"ended": {"failed": 1}, "open": 0}
