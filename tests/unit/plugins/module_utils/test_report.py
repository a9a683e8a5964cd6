"""The report page: series computed from accounting records, a self-contained page (plotly.js
inline, no external resource), the same page for the same input, refused bad input."""

from __future__ import annotations

import datetime
import re

import pytest

pytest.importorskip("plotly")

from ansible_collections.batchvirt.farm.plugins.module_utils import _report as r  # noqa: E402

NOW = datetime.datetime(2026, 11, 23, 0, 0, tzinfo=datetime.timezone.utc)
RECORDS = [
    {"life_id": "a", "slot": "w1", "hypervisor": "hv1", "image_identifier": "el9", "image_version": "1",
     "created": "2026-11-21T00:00:00Z", "registered": "2026-11-21T00:10:00Z",
     "drain_started": "2026-11-22T00:00:00Z", "ended": "2026-11-22T01:00:00Z", "end_reason": "recycled", "cores": 2},
    {"life_id": "b", "slot": "w1", "hypervisor": "hv1", "image_identifier": "el9", "image_version": "2",
     "created": "2026-11-22T01:00:00Z", "registered": None, "drain_started": None, "ended": None, "cores": 2},
    {"life_id": "c", "slot": "w2", "hypervisor": "hv2", "image_identifier": "el9", "image_version": "10",
     "created": "2026-11-21T12:00:00Z", "ended": "2026-11-21T13:00:00Z", "end_reason": "failed", "cores": 4},
]  # fmt: skip
SLOT_1 = {"name": "w1", "lifecycle": "active", "worker_type": "", "image": "el9", "image_version": "2",
          "vcpus": 2, "memory_mib": 2048}  # fmt: skip
SLOT_2 = {"name": "w2", "lifecycle": "draining", "worker_type": "gpu", "image": "el9", "image_version": "10",
          "vcpus": 4, "memory_mib": 4096}  # fmt: skip
SNAPSHOTS = [
    {"hypervisor": "hv1", "slots": [SLOT_1],
     "plays": {"recycle": {"last_outcome": "failure", "last_finished": "2026-11-22T02:00:00Z"}}},
    {"hypervisor": "hv2", "slots": [SLOT_2]},
]  # fmt: skip


def test_rollout_counts_vms_per_version_on_one_axis():
    series = r.rollout_series(RECORDS, NOW)
    assert list(series) == ["el9:1", "el9:2", "el9:10"]  # the collection's version order
    xs, ys = series["el9:1"]
    assert dict(zip(xs, ys))["2026-11-21T12:00:00Z"] == 1
    assert dict(zip(xs, ys))["2026-11-22T01:00:00Z"] == 0
    assert series["el9:2"][1][-1] == 1 and series["el9:2"][0][-1] == "2026-11-23T00:00:00Z"
    assert series["el9:1"][0] == series["el9:10"][0]  # a common axis for the stacked areas


def test_accepting_runs_from_registration_to_drain():
    xs, ys = r.accepting_series(RECORDS, NOW)["VMs"]
    levels = dict(zip(xs, ys))
    assert levels["2026-11-21T00:10:00Z"] == 1
    assert levels["2026-11-21T12:00:00Z"] == 2
    assert levels["2026-11-22T00:00:00Z"] == 0  # drain started
    assert levels["2026-11-22T01:00:00Z"] == 1
    cores = dict(zip(*r.accepting_series(RECORDS, NOW)["cores"]))
    assert cores["2026-11-21T12:00:00Z"] == 6


def test_events():
    events = r.event_times(RECORDS, {"hv1/recycle": SNAPSHOTS[0]["plays"]["recycle"]})
    assert events == {
        "drain started": ["2026-11-22T00:00:00Z"],
        "ended by failure": ["2026-11-21T13:00:00Z"],
        "ended": ["2026-11-22T01:00:00Z"],
        "play failed": ["2026-11-22T02:00:00Z"],
    }


def test_page_is_self_contained_and_stable():
    page = r.render(SNAPSHOTS, RECORDS, NOW, title="Farm <X>")
    assert page == r.render(SNAPSHOTS, list(reversed(RECORDS)), NOW, title="Farm <X>")
    assert "<title>Farm &lt;X&gt;</title>" in page
    for div in ("farm-map", "farm-rollout", "farm-capacity", "farm-events"):
        assert f'id="{div}"' in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded from anywhere
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js inline


@pytest.mark.parametrize(
    ("snapshots", "records", "option"),
    [([{"slots": []}], [], "snapshots"), ([], [{"slot": "w"}], "records"), ([], [{"created": "soon"}], "created")],
)
def test_bad_input_is_refused(snapshots, records, option):
    with pytest.raises(r.ReportError) as err:
        r.render(snapshots, records, NOW)
    assert err.value.option == option


def test_hostile_names_stay_text():
    bad = '</script><script>alert(1)</script><a href="javascript:alert(2)">x</a>'
    slot = dict(SLOT_1, name=bad, worker_type=bad, image=bad)
    page = r.render([{"hypervisor": bad, "slots": [slot, SLOT_2]}], [], NOW, title=bad)
    assert "<script>alert" not in page
    assert 'href="javascript' not in page and 'href=\\"javascript' not in page
