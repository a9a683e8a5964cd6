"""The batch_node engine (manage_nodes) on a scripted adapter: decisions, waiting, messages."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    BatchAdapter,
    BatchError,
    NodeStatus,
    as_list,
    manage_nodes,
)


class Scripted(BatchAdapter):
    """Answers each bulk query with the next snapshot (the last one repeats)."""

    system = "slurm"

    def __init__(self, *snapshots: Dict[str, NodeStatus]) -> None:
        super().__init__(runner=lambda argv: (0, "", ""))
        self.snapshots = list(snapshots)
        self.queries = 0
        self.actions: List[tuple] = []

    def bulk_status(self, node_names: Optional[Iterable[str]] = None) -> Dict[str, NodeStatus]:
        snap = self.snapshots[min(self.queries, len(self.snapshots) - 1)]
        self.queries += 1
        names = as_list(node_names) or list(snap)
        return {n: snap.get(n) or NodeStatus(name=n, state="absent") for n in names}

    def drain(self, nodes, reason):  # type: ignore[no-untyped-def]
        self.actions.append(("drain", list(nodes), reason))

    def resume(self, nodes):  # type: ignore[no-untyped-def]
        self.actions.append(("resume", list(nodes)))

    def remove(self, nodes):  # type: ignore[no-untyped-def]
        self.actions.append(("remove", list(nodes)))

    def register(self, node, **params):  # type: ignore[no-untyped-def]
        self.actions.append(("register", node))
        return True


def st(name: str, state: str, jobs: int = 0, reason: str = "") -> NodeStatus:
    return NodeStatus(
        name=name,
        state=state,
        jobs=jobs,
        reason=reason,
        registered=state not in ("absent", "future", "down", "not_responding"),
        drain=state in ("draining", "drained"),
    )


def snap(*nodes: NodeStatus) -> Dict[str, NodeStatus]:
    return {n.name: n for n in nodes}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_drain_then_wait_polls_with_one_bulk_query_per_round():
    adapter = Scripted(
        snap(st("a", "allocated", 1), st("b", "idle")),
        snap(st("a", "draining", 1, "upd"), st("b", "drained", 0, "upd")),
        snap(st("a", "draining", 1, "upd"), st("b", "drained", 0, "upd")),
        snap(st("a", "drained", 0, "upd"), st("b", "drained", 0, "upd")),
    )
    clock = Clock()
    res = manage_nodes(
        adapter,
        ["a", "b"],
        "drained",
        reason="upd",
        wait=True,
        wait_timeout=60,
        poll_interval=5,
        sleep=clock.sleep,
        clock=clock,
    )
    assert res["changed"] and res["changed_nodes"] == ["a", "b"]
    assert adapter.actions == [("drain", ["a", "b"], "upd")]
    assert adapter.queries == 4  # before + 3 polls, never one per node
    assert clock.sleeps == [5, 5]
    assert res["nodes"]["a"]["state"] == "drained"
    assert res["diff"] == {"before": {"a": "allocated", "b": "idle"}, "after": {"a": "drained", "b": "drained"}}


def test_drain_timeout_lists_nodes_with_job_counts_and_kills_nothing():
    adapter = Scripted(snap(st("a", "draining", 2, "upd"), st("b", "drained", 0, "upd"), st("c", "draining", 1, "upd")))
    clock = Clock()
    with pytest.raises(BatchError) as err:
        manage_nodes(
            adapter,
            ["a", "b", "c"],
            "drained",
            reason="upd",
            wait=True,
            wait_timeout=12,
            poll_interval=5,
            sleep=clock.sleep,
            clock=clock,
        )
    msg = err.value.message
    assert "drain not finished after 12 s (wait_timeout): still running jobs: a (2 jobs), c (1 job);" in msg
    assert "left draining and no job was killed" in msg
    assert adapter.actions == []  # already draining with this reason
    assert err.value.nodes["a"]["jobs"] == 2
    assert clock.sleeps == [5, 5, 2]


def test_drain_idempotent_same_reason_and_updates_another_reason():
    adapter = Scripted(snap(st("a", "draining", 1, "upd")))
    assert manage_nodes(adapter, "a", "drained", reason="upd")["changed"] is False
    adapter = Scripted(snap(st("a", "draining", 1, "admin said so")))
    assert manage_nodes(adapter, "a", "drained", reason="upd")["changed"] is True
    assert adapter.actions == [("drain", ["a"], "upd")]


def test_check_mode_acts_on_nothing():
    adapter = Scripted(snap(st("a", "idle")))
    res = manage_nodes(adapter, "a", "drained", reason="upd", wait=True, check_mode=True)
    assert res["changed"] and adapter.actions == [] and adapter.queries == 1
    assert res["diff"]["after"] == {"a": "drained"}


def test_unknown_nodes_fail_before_any_action():
    adapter = Scripted(snap(st("a", "idle")))
    with pytest.raises(BatchError, match=r"unknown node\(s\) x, y"):
        manage_nodes(adapter, ["a", "x", "y"], "drained")
    with pytest.raises(BatchError, match=r"unknown node\(s\) x"):
        manage_nodes(adapter, ["x"], "resumed")
    assert adapter.actions == []


def test_absent_refuses_busy_nodes_unless_forced():
    adapter = Scripted(snap(st("a", "allocated", 3), st("b", "idle")))
    with pytest.raises(BatchError) as err:
        manage_nodes(adapter, ["a", "b", "gone"], "absent")
    assert "refusing to remove node(s) with running jobs: a (3 jobs)" in err.value.message
    assert "force=true" in err.value.message
    assert adapter.actions == []
    res = manage_nodes(adapter, ["a", "b", "gone"], "absent", force=True)
    assert adapter.actions == [("remove", ["a", "b"])] and res["changed_nodes"] == ["a", "b"]
    adapter = Scripted(snap(st("b", "idle")))
    assert manage_nodes(Scripted(snap()), ["gone"], "absent")["changed"] is False


def test_resumed_and_present():
    adapter = Scripted(snap(st("a", "drained", 0, "x"), st("b", "idle"), st("c", "down")))
    res = manage_nodes(adapter, ["a", "b", "c"], "resumed")
    assert adapter.actions == [("resume", ["a", "c"])] and res["changed"]
    adapter = Scripted(snap(st("a", "idle")))
    res = manage_nodes(adapter, ["a", "new"], "present")
    assert adapter.actions == [("register", "new")]


def test_present_with_features_updates_known_nodes_whose_features_differ():
    same = NodeStatus(name="a", state="idle", registered=True, features=("typeb",))
    other = NodeStatus(name="b", state="idle", registered=True, features=("typea",))
    adapter = Scripted(snap(same, other))
    adapter.updates_features = True
    res = manage_nodes(adapter, ["a", "b"], "present", register_params={"features": ["typeb"]})
    assert adapter.actions == [("register", "b")] and res["changed"]
    # an adapter that cannot set a known node's features (HTCondor) is not asked to
    adapter = Scripted(snap(same, other))
    res = manage_nodes(adapter, ["a", "b"], "present", register_params={"features": ["typeb"]})
    assert adapter.actions == [] and not res["changed"]


def test_present_wait_timeout_names_unregistered_nodes():
    adapter = Scripted(snap(st("a", "idle"), st("n", "not_responding")))
    clock = Clock()
    with pytest.raises(BatchError) as err:
        manage_nodes(
            adapter, ["a", "n"], "present", wait=True, wait_timeout=3, poll_interval=1, sleep=clock.sleep, clock=clock
        )
    assert "node(s) not registered after 3 s (wait_timeout): n (not_responding)" in err.value.message


def test_bad_input():
    with pytest.raises(BatchError, match="name is empty"):
        manage_nodes(Scripted(snap()), [], "drained")
    with pytest.raises(BatchError, match="state='gone' is not one of"):
        manage_nodes(Scripted(snap()), ["a"], "gone")
