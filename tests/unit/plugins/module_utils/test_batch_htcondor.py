"""HTCondor adapter, tested against typical command output only (no HTCondor daemons here)."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import BatchError, get_adapter
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_htcondor import explain, parse_status_json
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "htcondor")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class Runner:
    def __init__(self, rc: int = 0, out: str = "", err: str = "") -> None:
        self.answer = (rc, out, err)
        self.calls: List[List[str]] = []

    def __call__(self, argv: Sequence[str]) -> Tuple[int, str, str]:
        self.calls.append(list(argv))
        return self.answer


def test_parse_pool():
    nodes = parse_status_json(fixture("condor_status_pool.json"))
    assert nodes["slot-hv01-01"].state == "allocated" and nodes["slot-hv01-01"].jobs == 2
    assert nodes["slot-hv01-01"].features == ("worker-el9",)
    assert nodes["slot-hv01-01"].address == "slot-hv01-01.farm.example.org"
    assert nodes["wn02.farm.example.org"].state == "draining" and nodes["wn02.farm.example.org"].jobs == 1
    assert nodes["wn02.farm.example.org"].reason == "kernel update"
    assert nodes["wn03.farm.example.org"].state == "drained" and nodes["wn03.farm.example.org"].drain
    assert nodes["wn04.farm.example.org"].state == "down" and not nodes["wn04.farm.example.org"].registered
    assert parse_status_json(fixture("condor_status_empty.json")) == {}


def test_bulk_view_one_condor_status():
    runner = Runner(out=fixture("condor_status_pool.json"))
    adapter = get_adapter("htcondor", runner=runner, pool="cm.example.org")
    view = adapter.bulk_view(["slot-hv01-01", "wn03.farm.example.org", "ghost"])
    assert view["slot-hv01-01"] == BatchView(registered=True, drain=False, jobs=2, state="allocated")
    assert view["wn03.farm.example.org"] == BatchView(registered=True, drain=True, jobs=0, state="drained")
    assert view["ghost"].state == "absent"
    assert len(runner.calls) == 1
    assert runner.calls[0][:3] == ["condor_status", "-pool", "cm.example.org"]
    assert "-json" in runner.calls[0]


def test_actions_use_graceful_drain_cancel_and_peaceful_off():
    runner = Runner(out=fixture("condor_status_pool.json"))
    adapter = get_adapter("htcondor", runner=runner)
    adapter.bulk_status()
    runner.answer = (0, fixture("condor_drain_ok.txt"), "")
    adapter.drain(["slot-hv01-01"], "kernel update")
    adapter.resume(["slot-hv01-01"])
    adapter.remove(["slot-hv01-01"])
    assert runner.calls[1:] == [
        ["condor_drain", "-graceful", "-reason", "kernel update", "slot-hv01-01.farm.example.org"],
        ["condor_drain", "-cancel", "slot-hv01-01.farm.example.org"],
        ["condor_off", "-peaceful", "-startd", "-name", "slot-hv01-01.farm.example.org"],
    ]


@pytest.mark.parametrize(
    ("stderr_file", "expected"),
    [
        ("stderr_drain_unknown.txt", "the startd is unknown to the collector"),
        ("stderr_collector_down.txt", "the central manager (collector) does not answer"),
        ("stderr_denied.txt", "authentication failure: the pool refused this host"),
    ],
)
def test_error_messages(stderr_file, expected):
    assert expected in explain(fixture(stderr_file), "draining wn99")
    runner = Runner(rc=1, err=fixture(stderr_file))
    with pytest.raises(BatchError) as err:
        get_adapter("htcondor", runner=runner).drain(["wn99"], "x")
    assert expected in err.value.message and "draining wn99" in err.value.message


def test_register_is_refused_for_an_absent_node():
    runner = Runner(out=fixture("condor_status_pool.json"))
    adapter = get_adapter("htcondor", runner=runner)
    assert adapter.register("slot-hv01-01") is False
    with pytest.raises(BatchError, match="join by themselves"):
        adapter.register("ghost")
