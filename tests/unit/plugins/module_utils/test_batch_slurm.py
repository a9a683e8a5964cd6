"""Slurm adapter: state mapping, parsers and error messages on output recorded from real daemons."""

from __future__ import annotations

import datetime
import json
import os
from typing import Dict, List, Sequence, Tuple

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _batch_slurm as slurm
from ansible_collections.batchvirt.farm.plugins.module_utils import _batch_slurm_parse as parse
from ansible_collections.batchvirt.farm.plugins.module_utils._batch import BatchError, get_adapter
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "slurm")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class Recorded:
    """A runner that answers commands with recorded output and logs what was asked."""

    def __init__(self, answers: Dict[Tuple[str, ...], Tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: List[List[str]] = []

    def __call__(self, argv: Sequence[str]) -> Tuple[int, str, str]:
        self.calls.append(list(argv))
        for prefix, answer in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return answer
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture(autouse=True)
def _reset_detection():
    slurm._JSON_SUPPORT.clear()
    yield
    slurm._JSON_SUPPORT.clear()


# -- state mapping table -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "flags", "jobs", "state", "registered", "drain"),
    [
        ("idle", (), 0, "idle", True, False),
        ("IDLE", (), 0, "idle", True, False),
        ("allocated", (), 1, "allocated", True, False),
        ("MIXED", (), 1, "mixed", True, False),
        ("IDLE+DRAIN", (), 0, "drained", True, True),
        ("ALLOCATED+DRAIN", (), 1, "draining", True, True),
        ("MIXED+DRAIN", (), 1, "draining", True, True),
        ("IDLE+DRAIN", (), 1, "draining", True, True),  # a job still completing
        ("IDLE+COMPLETING+DRAIN", (), 0, "draining", True, True),
        ("drained", (), 0, "drained", True, True),
        ("draining", (), 1, "draining", True, True),
        ("drained*", (), 0, "drained", False, True),
        ("idle", ("NOT_RESPONDING",), 0, "not_responding", False, False),
        ("idle*", (), 0, "not_responding", False, False),
        ("UNKNOWN+NOT_RESPONDING", (), 0, "not_responding", False, False),
        ("unknown", (), 0, "unknown", False, False),
        ("DOWN", (), 0, "down", False, False),
        ("down*", (), 0, "down", False, False),
        ("DOWN+DRAIN", (), 0, "drained", False, True),
        ("fail", (), 0, "drained", False, True),
        ("FUTURE", (), 0, "future", False, False),
        ("FUTURE+DYNAMIC_NORM", (), 0, "future", False, False),
        ("IDLE+CLOUD+POWERED_DOWN", (), 0, "future", False, False),
        ("idle~", (), 0, "idle", False, False),
        ("IDLE+CLOUD", (), 0, "idle", True, False),
        ("IDLE+COMPLETING", (), 0, "completing", True, False),
        ("comp", (), 0, "completing", True, False),
        ("mix", (), 1, "mixed", True, False),
        ("alloc", (), 1, "allocated", True, False),
        ("idle", ("DRAIN",), 0, "drained", True, True),
        ("allocated", ("DRAIN",), 1, "draining", True, True),
    ],
)
def test_state_mapping(raw, flags, jobs, state, registered, drain):
    base, fl = parse.parse_state(raw, flags)
    assert parse.classify(base, fl, jobs) == (state, registered, drain)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("bx1", ["bx1"]),
        ("bx[1-2]", ["bx1", "bx2"]),
        ("n[01-03,7],gpu1", ["n01", "n02", "n03", "n7", "gpu1"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("", []),
    ],
)
def test_expand_hostlist(expr, names):
    assert parse.expand_hostlist(expr) == names


# -- parsers on recorded output ------------------------------------------------------------
def test_sinfo_json_recorded_draining_and_allocated():
    nodes = parse.parse_sinfo_json(fixture("sinfo_mixed.json"))
    assert nodes["bx1"].drain and nodes["bx1"].state == "draining"
    assert nodes["bx1"].reason == "kernel update 2026-11"
    assert nodes["bx1"].features == ("typea",)
    assert nodes["bx1"].port == 16901 and nodes["bx1"].address == "127.0.0.1"
    assert nodes["bx2"].state == "allocated" and nodes["bx2"].registered
    assert nodes["bx3"].state == "not_responding" and not nodes["bx3"].registered
    assert "dyn1" not in nodes  # sinfo does not show FUTURE nodes


def test_sinfo_json_recorded_drained_and_not_responding():
    nodes = parse.parse_sinfo_json(fixture("sinfo_drained.json"))
    assert (nodes["bx1"].state, nodes["bx1"].drain, nodes["bx1"].registered) == ("drained", True, True)
    nodes = parse.parse_sinfo_json(fixture("sinfo_not_responding.json"))
    assert nodes["bx1"].state == "not_responding"


def test_sinfo_json_errors_are_not_ignored():
    """sinfo --json exits 0 with an error list when the controller is down."""
    with pytest.raises(BatchError, match="Unspecified error"):
        parse.parse_sinfo_json(fixture("sinfo_controller_down.json"))


def test_scontrol_text_recorded():
    nodes = parse.parse_scontrol_nodes(fixture("scontrol_nodes.txt"))
    assert set(nodes) == {"bx1", "bx2", "bx3", "dyn1"}
    assert nodes["bx1"].state == "draining" and nodes["bx1"].reason == "kernel update 2026-11"
    assert nodes["bx1"].raw_state == "ALLOCATED+DRAIN"
    assert nodes["bx2"].state == "allocated"
    assert nodes["bx3"].state == "not_responding"
    assert nodes["dyn1"].state == "future" and nodes["dyn1"].dynamic
    assert nodes["dyn1"].features == ("worker-el9",)
    drained = parse.parse_scontrol_nodes(fixture("scontrol_drained.txt"))
    assert drained["bx1"].state == "drained"


def test_keyvalue_parser_keeps_blanks_in_values():
    kv = parse.parse_keyvalues("NodeName=a OS=Linux 6.1 #1 SMP State=IDLE Reason=two words [root@2026-01-01T00:00:00]")
    assert kv["OS"] == "Linux 6.1 #1 SMP"
    assert kv["Reason"].startswith("two words")


def test_squeue_json_and_text_agree():
    assert parse.parse_squeue_json(fixture("squeue_running.json")) == {"bx1": ["5"], "bx2": ["6"]}
    assert parse.parse_squeue_text(fixture("squeue_running.txt")) == {"bx1": ["5"], "bx2": ["6"]}
    assert parse.parse_squeue_json(fixture("squeue_multinode.json")) == {"bx1": ["4"], "bx2": ["4"]}
    assert parse.parse_squeue_text(fixture("squeue_multinode.txt")) == {"bx1": ["4"], "bx2": ["4"]}


# -- the adapter ---------------------------------------------------------------------------
def test_bulk_view_json_is_two_commands_for_any_number_of_nodes():
    runner = Recorded(
        {
            ("sinfo", "--json"): (0, fixture("sinfo_mixed.json"), ""),
            ("squeue", "--json"): (0, fixture("squeue_running.json"), ""),
        }
    )
    adapter = get_adapter("slurm", runner=runner)
    view = adapter.bulk_view(["bx1", "bx2"])
    assert view["bx1"] == BatchView(registered=True, drain=True, jobs=1, state="draining")
    assert view["bx2"] == BatchView(registered=True, drain=False, jobs=1, state="allocated")
    assert [c[0] for c in runner.calls] == ["sinfo", "squeue"]


def test_bulk_view_looks_up_future_nodes_with_one_scontrol():
    runner = Recorded(
        {
            ("sinfo", "--json"): (0, fixture("sinfo_drained.json"), ""),
            ("scontrol", "-o", "-F", "show", "node"): (0, fixture("scontrol_drained.txt"), ""),
        }
    )
    view = get_adapter("slurm", runner=runner).bulk_view(["bx1", "dyn1", "ghost"])
    assert view["bx1"].state == "drained" and view["bx1"].jobs == 0
    assert view["dyn1"] == BatchView(registered=False, drain=False, jobs=0, state="future")
    assert view["ghost"].state == "absent"
    assert len(runner.calls) == 2  # no squeue: nothing is busy


def test_text_fallback_detected_once():
    runner = Recorded(
        {
            ("sinfo", "--json"): (1, "", "sinfo: unrecognized option '--json'"),
            ("scontrol", "-o", "-F", "show", "node"): (0, fixture("scontrol_nodes.txt"), ""),
            ("squeue", "-h"): (0, fixture("squeue_running.txt"), ""),
        }
    )
    adapter = get_adapter("slurm", runner=runner)
    first = adapter.bulk_view(["bx1", "bx2"])
    assert first["bx1"].jobs == 1 and first["bx1"].state == "draining"
    second = get_adapter("slurm", runner=runner).bulk_view(["bx1"])
    assert second["bx1"].jobs == 1
    assert [c[:2] for c in runner.calls].count(["sinfo", "--json"]) == 1
    assert ["squeue", "-h", "-t", "RUNNING,COMPLETING,SUSPENDED,CONFIGURING,STOPPED", "-o", "%i|%T|%N"] in runner.calls


@pytest.mark.parametrize(
    ("stderr_file", "expected"),
    [
        ("stderr_controller_down.txt", "the controller (slurmctld) does not answer"),
        ("stderr_munge_key_mismatch.txt", "munge key mismatch"),
        ("stderr_munged_not_running.txt", "munged does not run on this host"),
    ],
)
def test_json_errors_are_diagnosed_with_a_text_command(stderr_file, expected):
    runner = Recorded(
        {
            ("sinfo", "--json"): (0, fixture("sinfo_controller_down.json"), ""),
            ("scontrol", "-o", "show", "partition"): (1, "", fixture(stderr_file)),
        }
    )
    with pytest.raises(BatchError) as err:
        get_adapter("slurm", runner=runner).bulk_view(["bx1"])
    assert expected in err.value.message
    assert "querying the nodes" in err.value.message


def test_actions_build_one_command_for_many_nodes():
    runner = Recorded({("scontrol",): (0, "", "")})
    adapter = get_adapter("slurm", runner=runner)
    adapter.drain(["a", "b"], "kernel update")
    adapter.resume(["a", "b"])
    adapter.remove(["a"])
    assert runner.calls == [
        ["scontrol", "update", "nodename=a,b", "state=DRAIN", "reason=kernel update"],
        ["scontrol", "update", "nodename=a,b", "state=RESUME"],
        ["scontrol", "delete", "nodename=a"],
    ]
    with pytest.raises(BatchError, match="a drain needs a reason"):
        adapter.drain(["a"], " ")


def test_unknown_node_action_message():
    runner = Recorded({("scontrol",): (1, "", fixture("stderr_unknown_node.txt"))})
    with pytest.raises(BatchError, match=r"unknown node\(s\) nosuch: the batch system does not know them"):
        get_adapter("slurm", runner=runner).resume(["nosuch"])


def test_register_creates_dynamic_node_and_updates_address():
    runner = Recorded(
        {
            ("sinfo", "--json"): (0, fixture("sinfo_drained.json"), ""),
            ("scontrol", "-o", "-F"): (0, fixture("scontrol_drained.txt"), ""),
            ("scontrol", "create"): (0, "", ""),
            ("scontrol", "update"): (0, "", ""),
        }
    )
    adapter = get_adapter("slurm", runner=runner)
    assert adapter.register("new1", features=["worker-el9"], address="127.0.0.5", cpus=2) is True
    assert [
        "scontrol",
        "create",
        "nodename=new1",
        "state=FUTURE",
        "nodeaddr=127.0.0.5",
        "feature=worker-el9",
        "cpus=2",
    ] in runner.calls
    assert adapter.register("bx1", address="127.0.0.1") is False
    assert adapter.register("bx1", address="127.0.0.9") is True
    assert ["scontrol", "update", "nodename=bx1", "nodeaddr=127.0.0.9"] in runner.calls


def test_register_sets_the_features_of_a_known_node_when_they_differ():
    """A static node re-created as another worker type: the controller gets the type's features
    (a job's --constraint=<type> matches it); the same features are no change."""
    runner = Recorded(
        {
            ("sinfo", "--json"): (0, fixture("sinfo_drained.json"), ""),
            ("scontrol", "-o", "-F"): (0, fixture("scontrol_drained.txt"), ""),
            ("scontrol", "update"): (0, "", ""),
        }
    )
    adapter = get_adapter("slurm", runner=runner)
    before = adapter.bulk_status(["bx1"])["bx1"]
    assert adapter.register("bx1", features=list(before.features)) is False
    assert not [c for c in runner.calls if c[:2] == ["scontrol", "update"]]
    assert adapter.register("bx1", features=["typeb", "ssd"]) is True
    # active and available together: "Active features not subset of available features" otherwise
    assert [
        "scontrol",
        "update",
        "nodename=bx1",
        "availablefeatures=typeb,ssd",
        "activefeatures=typeb,ssd",
    ] in runner.calls


def test_auth_failures_hint_from_controller_log():
    log = fixture("slurmctld_auth_failures.log")
    hint = parse.auth_failures_hint(log, "2026-11-21T06:33:00")
    assert "munge key mismatch" in hint and "MESSAGE_NODE_REGISTRATION_STATUS" in hint and "localhost" in hint
    assert parse.auth_failures_hint(log, "2026-11-21T07:00:00") == ""


def test_recorded_json_is_openapi_v0038():
    meta = json.loads(fixture("sinfo_mixed.json"))["meta"]
    assert meta["Slurm"]["release"] == "22.05.8"


def test_a_down_nodes_reason_time_becomes_the_views_state_since():
    line = (
        "NodeName=w1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=1 AvailableFeatures=typeA "
        "NodeAddr=127.0.0.2 NodeHostName=w1 Port=16819 State=DOWN* ThreadsPerCore=1 "
        "Reason=Not responding [slurm@2026-12-03T09:10:11]"
    )
    status = parse.parse_scontrol_nodes(line)["w1"]
    assert status.reason == "Not responding"
    assert status.since is not None and status.since.tzinfo is not None
    local = datetime.datetime(2026, 12, 3, 9, 10, 11).astimezone()
    assert status.since == local.astimezone(datetime.timezone.utc)
    view = status.view()
    assert view.unhealthy and view.state_since == status.since


def test_a_node_without_a_reason_has_no_state_since():
    status = parse.parse_scontrol_nodes("NodeName=w2 State=IDLE Reason=none")["w2"]
    assert status.since is None and status.view().state_since is None
