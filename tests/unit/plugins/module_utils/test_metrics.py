"""Farm metrics: the snapshot read from libvirt's test driver, the exposition parsed back with
prometheus_client's own parser, the play-run state file, idempotent atomic writes."""

from __future__ import annotations

import datetime
import json
import os

import pytest

libvirt = pytest.importorskip("libvirt")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ansible_collections.batchvirt.farm.plugins.module_utils import _metrics as m  # noqa: E402
from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node  # noqa: E402

NOW = EPOCH + 12 * HOUR  # slots created at EPOCH drain at EPOCH + 24 h


def values(text):
    """{(sample name, frozenset(labels)): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(vals, name, **labels):
    return vals[(name, frozenset(labels.items()))]


@pytest.fixture
def farm(tmp_path):
    uri = write_test_node(
        str(tmp_path / "node.xml"),
        [
            ("w-active-1", slot("w-active-1", "hv1"), True),
            ("w-active-2", slot("w-active-2", "hv1", worker_type="gpu", version="2026.11.2"), True),
            ("w-expiring", slot("w-expiring", "hv1", lifetime_h=13), True),
            ("w-draining", slot("w-draining", "hv1", drain_requested=True), True),
            ("w-expired", slot("w-expired", "hv1", lifetime_h=6, walltime_h=1), True),
            ("w-stopped", slot("w-stopped", "hv1"), False),
            ("foreign", None, True),
        ],
    )
    conn = libvirt.open(uri)
    yield conn
    conn.close()


def test_snapshot_counts_states_types_and_capacity(farm):
    snap = m.collect(
        farm,
        "hv1",
        NOW,
        capacity={"free_memory_mib": 100, "free_vcpus": 3.0, "usable_memory_mib": 1000, "usable_cpus": 4},
    )
    data = snap.to_dict()
    assert data["slots_by_lifecycle"] == {
        "stopped": 1, "expired": 1, "failed": 0, "drained": 0, "draining": 1, "provisioning": 0, "expiring": 1,
        "active": 2,
    }  # fmt: skip
    assert data["accepting"] == {"slots": 3, "vcpus": 3, "memory_mib": 192}
    assert {s["name"] for s in data["slots"]} == {
        "w-active-1",
        "w-active-2",
        "w-expiring",
        "w-draining",
        "w-expired",
        "w-stopped",
    }

    vals = values(m.exposition(snap))
    assert sample(vals, "batchvirt_farm_slots", hypervisor="hv1", lifecycle="active", worker_type="default",
                  image="worker-el9", image_version="2026.11.1") == 1  # fmt: skip
    assert sample(vals, "batchvirt_farm_slots", hypervisor="hv1", lifecycle="active", worker_type="gpu",
                  image="worker-el9", image_version="2026.11.2") == 1  # fmt: skip
    assert sample(vals, "batchvirt_farm_slots_by_lifecycle", hypervisor="hv1", lifecycle="drained") == 0
    assert sample(vals, "batchvirt_farm_accepting_slots", hypervisor="hv1", worker_type="default") == 2
    assert sample(vals, "batchvirt_farm_accepting_memory_bytes", hypervisor="hv1", worker_type="gpu") == 64 * 2**20
    assert sample(vals, "batchvirt_farm_free_memory_bytes", hypervisor="hv1") == 100 * 2**20
    assert sample(vals, "batchvirt_farm_slot_domains", hypervisor="hv1", domain_state="shutoff") == 1
    # no image cache, no play recorded: zero failures of every kind, no play series
    assert sample(vals, "batchvirt_farm_failures_total", hypervisor="hv1", kind="image_stage") == 0
    assert sample(vals, "batchvirt_farm_slots_in_backoff", hypervisor="hv1") == 0
    assert not [k for k in vals if k[0].startswith("batchvirt_farm_play_")]


def test_hostile_label_values_are_escaped(tmp_path):
    nasty = 'gpu"}\nbatchvirt_farm_slots{x="1'
    uri = write_test_node(str(tmp_path / "n.xml"), [("w1", slot("w1", "hv1", worker_type=nasty), True)])
    conn = libvirt.open(uri)
    try:
        text = m.exposition(m.collect(conn, "hv1", NOW))
    finally:
        conn.close()
    vals = values(text)
    assert sample(vals, "batchvirt_farm_accepting_slots", hypervisor="hv1", worker_type=nasty) == 1
    assert not any(line.startswith("batchvirt_farm_slots{x=") for line in text.splitlines())


def test_play_runs_and_failures_are_recorded(tmp_path):
    state = m.empty_state()
    t0 = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)
    state = m.record_play(state, "recycle", "success", t0 + datetime.timedelta(seconds=90), t0)
    state = m.record_play(state, "recycle", "failure", t0 + datetime.timedelta(hours=1))
    state = m.record_failures(state, "slot_boot", 2)
    m.save_state(str(tmp_path / "s.json"), state)
    state = m.load_state(str(tmp_path / "s.json"))
    vals = values(m.exposition(m.FarmSnapshot("hv1", t0, state=state)))
    assert sample(vals, "batchvirt_farm_play_runs_total", hypervisor="hv1", play="recycle", outcome="success") == 1
    assert sample(vals, "batchvirt_farm_play_runs_total", hypervisor="hv1", play="recycle", outcome="failure") == 1
    assert sample(vals, "batchvirt_farm_play_last_run_success", hypervisor="hv1", play="recycle") == 0
    assert (
        sample(vals, "batchvirt_farm_play_last_run_timestamp_seconds", hypervisor="hv1", play="recycle")
        == (t0 + datetime.timedelta(hours=1)).timestamp()
    )
    assert (
        sample(vals, "batchvirt_farm_play_last_success_timestamp_seconds", hypervisor="hv1", play="recycle")
        == (t0 + datetime.timedelta(seconds=90)).timestamp()
    )
    assert sample(vals, "batchvirt_farm_failures_total", hypervisor="hv1", kind="slot_boot") == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, t: m.record_play(s, "re cycle", "success", t), "play.name"),
        (lambda s, t: m.record_play(s, "recycle", "ok", t), "play.outcome: 'ok' must be one of success, failure"),
        (lambda s, t: m.record_play(s, "recycle", "success", t, t + datetime.timedelta(1)), "play.started"),
        (lambda s, t: m.record_failures(s, "meteor", 1), "failure.kind"),
        (lambda s, t: m.record_failures(s, "other", -1), "failure.count"),
    ],
)
def test_bad_play_and_failure_inputs(call, message):
    with pytest.raises(m.MetricsError, match=message.replace("(", r"\(")):
        call(m.empty_state(), NOW)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"plays": []}'])
def test_unreadable_state_file_names_the_option(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(m.MetricsError) as err:
        m.load_state(str(path))
    assert err.value.option == "state_path"


def test_write_is_atomic_idempotent_and_respects_check_mode(tmp_path):
    snap = m.FarmSnapshot("hv1", NOW)
    path = str(tmp_path / "batchvirt_farm.prom")
    assert m.write_textfile(path, snap, check_mode=True)[0] is True
    assert not os.path.exists(path)
    changed, text = m.write_textfile(path, snap)
    assert changed is True
    assert (tmp_path / "batchvirt_farm.prom").read_text() == text
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert m.write_textfile(path, snap)[0] is False
    assert [p for p in os.listdir(tmp_path) if p != "batchvirt_farm.prom"] == []  # no temporary file left
    with pytest.raises(m.MetricsError, match="textfile_dir: .* does not exist"):
        m.write_textfile(str(tmp_path / "missing" / "x.prom"), snap)


def test_image_cache_is_read_not_created(tmp_path):
    present, images, failures, newest = m.read_image_cache(str(tmp_path / "images"))
    assert (present, images, failures, newest) == (False, [], 0, None)
    assert not os.path.exists(tmp_path / "images.cache")


def test_state_file_round_trip_is_json(tmp_path):
    state = m.record_play(m.empty_state(), "slots", "success", NOW)
    m.save_state(str(tmp_path / "s.json"), state)
    assert json.loads((tmp_path / "s.json").read_text())["plays"]["slots"]["runs"] == {"success": 1}


def full_exposition():
    state = m.record_failures(m.record_play(m.empty_state(), "recycle", "success", NOW), "other")
    snap = m.FarmSnapshot(
        "hv1",
        NOW,
        slots=[m.SlotSample("hv1", "w1", "active", "running", "default", "el9", "1", 1, 64)],
        capacity={"free_memory_mib": 1, "free_vcpus": 1, "usable_memory_mib": 1, "usable_cpus": 1},
        newest_ready_at=NOW,
        accounting={"ended": {"recycled": 1}, "open": 1},
        state=state,
    )
    return {s.name for f in text_string_to_metric_families(m.exposition(snap)) for s in f.samples}


def test_docs_and_dashboard_name_only_exported_metrics_and_docs_list_them_all():
    import re

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    names = full_exposition()
    with open(os.path.join(root, "docs", "observability.md"), encoding="utf-8") as handle:
        documented = set(re.findall(r"`(batchvirt_farm_[a-z_]+)`", handle.read()))
    assert documented == names
    with open(os.path.join(root, "docs", "grafana", "batchvirt-farm.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    used = {
        n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"batchvirt_farm_[a-z_]+", t["expr"])
    }
    assert used and used <= names, used - names


def test_concurrent_play_records_all_count(tmp_path):
    import threading

    uri = write_test_node(str(tmp_path / "node.xml"), [("w1", slot("w1", "hv1"), True)])
    params = {k: v.get("default") for k, v in m.METRICS_ARGUMENT_SPEC.items()}
    params.update(
        hypervisor="hv1",
        textfile_dir=str(tmp_path),
        state_path=str(tmp_path / "s.json"),
        image_root="",
        accounting_path="",
        config_path="",
        now="2026-11-21T12:00:00Z",
        play={"name": "recycle", "outcome": "success", "started": None},
    )
    errors = []

    def refresh():
        conn = libvirt.open(uri)
        try:
            for _i in range(5):
                m.run_metrics(conn, dict(params), False)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=refresh) for _n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert m.load_state(str(tmp_path / "s.json"))["plays"]["recycle"]["runs"] == {"success": 20}
    text = (tmp_path / "batchvirt_farm.prom").read_text()
    assert 'batchvirt_farm_play_runs_total{hypervisor="hv1",outcome="success",play="recycle"} 20.0' in text


def test_slots_in_backoff_counts_the_slots_whose_backoff_has_not_passed(tmp_path):
    """Two stopped slots with a failure record: one still in back-off, one whose back-off passed;
    a third failed once (no back-off). Only the first counts."""
    held = slot("w-held", "hv1").with_failures(3, NOW - HOUR, "worker-el9/2026.11.1", "slurm: down", NOW + HOUR)
    passed = slot("w-passed", "hv1").with_failures(4, NOW - 2 * HOUR, "worker-el9/2026.11.1", "x", NOW - HOUR)
    once = slot("w-once", "hv1").with_failures(1, NOW - HOUR, "worker-el9/2026.11.1", "x", None)
    uri = write_test_node(
        str(tmp_path / "node.xml"), [("w-held", held, False), ("w-passed", passed, False), ("w-once", once, True)]
    )
    conn = libvirt.open(uri)
    try:
        snap = m.collect(conn, "hv1", NOW)
    finally:
        conn.close()
    assert sample(values(m.exposition(snap)), "batchvirt_farm_slots_in_backoff", hypervisor="hv1") == 1
    assert [s["name"] for s in snap.to_dict()["slots"] if s["backoff"]] == ["w-held"]
