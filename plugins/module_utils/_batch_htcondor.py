# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the HTCondor adapter (condor_status, condor_drain, condor_off).

Tested only against typical command output (tests/unit/fixtures/htcondor/): no HTCondor
daemons can run where this collection is developed. The bulk query is one
``condor_status -startd -json``; a node is an execute machine, named by the
``FARM_NODE_NAME`` attribute its startd advertises (written by :func:`cloud_init_registration`)
or else by its ``Machine``; each dynamic slot claimed by a job counts as one job.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    ABSENT,
    ALLOCATED,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    BatchAdapter,
    BatchError,
    NodeStatus,
    Runner,
    as_list,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import CONDOR_Q_ARGS

ATTRIBUTES = (
    "Name",
    "Machine",
    "State",
    "Activity",
    "SlotType",
    "Draining",
    "DrainReason",
    "FARM_NODE_NAME",
    "FARM_FEATURES",
    "GlobalJobId",
)
_BUSY_ACTIVITIES = ("Busy", "Retiring", "Suspended", "Vacating", "Killing")

_ERRORS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (
        ("AUTHENTICATE", "Failed to authenticate", "PERMISSION DENIED", "DENIED", "authentication"),
        "authentication failure: the pool refused this host (pool password, IDTOKEN or ALLOW_* settings): "
        "install the pool's token/password and check ALLOW_ADMINISTRATOR",
    ),
    (
        ("Can't find address for startd",),
        "the startd is unknown to the collector: check the node name, or wait until the node has registered",
    ),
    (
        ("Failed to connect", "Can't find address for collector", "Failed to fetch ads", "CEDAR", "timed out"),
        "the central manager (collector) does not answer: start condor there (service condor start) "
        "and check CONDOR_HOST",
    ),
    (("command not found", "No such file or directory"), "HTCondor's tools are missing: install condor or set bin_dir"),
)


def explain(stderr: str, what: str) -> str:
    text = " ".join(stderr.split())
    for patterns, meaning in _ERRORS:
        if any(p.lower() in text.lower() for p in patterns):
            return f"htcondor: {what} failed: {meaning}. (HTCondor said: {text[-400:]})"
    return f"htcondor: {what} failed: {text[-600:] or 'no error message'}"


def parse_status_json(text: str) -> Dict[str, NodeStatus]:
    """Nodes from ``condor_status -startd -json -attributes ...`` (one ad per slot)."""
    text = text.strip()
    ads: List[Dict[str, Any]] = json.loads(text) if text else []
    nodes: Dict[str, NodeStatus] = {}
    busy: Dict[str, int] = {}
    states: Dict[str, List[str]] = {}
    for ad in ads:
        machine = str(ad.get("Machine") or str(ad.get("Name", "")).rsplit("@", maxsplit=1)[-1])
        name = str(ad.get("FARM_NODE_NAME") or machine)
        if not name:
            continue
        status = nodes.get(name)
        if status is None:
            feats = str(ad.get("FARM_FEATURES") or "")
            status = nodes[name] = NodeStatus(
                name=name, address=machine, features=tuple(f for f in feats.split(",") if f), registered=True
            )
        state = str(ad.get("State") or "")
        activity = str(ad.get("Activity") or "")
        states.setdefault(name, []).append(f"{state}/{activity}")
        if ad.get("Draining") is True or state == "Drained":
            status.drain = True
            if ad.get("DrainReason") and not status.reason:
                status.reason = str(ad["DrainReason"])
        if state == "Claimed" and activity in _BUSY_ACTIVITIES:
            busy[name] = busy.get(name, 0) + 1
            if ad.get("GlobalJobId"):
                status.job_ids.append(str(ad["GlobalJobId"]))
        if state == "Owner":
            status.registered = False  # the machine's owner policy keeps it from running jobs
    for name, status in nodes.items():
        status.jobs = busy.get(name, 0)
        status.raw_state = ",".join(states.get(name, []))
        if status.drain:
            status.state = DRAINING if status.jobs else DRAINED
        elif not status.registered:
            status.state = DOWN
        else:
            status.state = ALLOCATED if status.jobs else IDLE
    return nodes


class HTCondorAdapter(BatchAdapter):
    """HTCondor through its command-line tools (run where the tools can reach the pool)."""

    system = "htcondor"

    def __init__(
        self,
        runner: Optional[Runner] = None,
        pool: Optional[str] = None,
        bin_dir: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        **_ignored: Any,
    ) -> None:
        super().__init__(runner, bin_dir, env)
        self.pool = pool
        self._machines: Dict[str, str] = {}

    def _run(self, argv: Sequence[str], what: str) -> str:
        full = [argv[0]] + (["-pool", self.pool] if self.pool else []) + list(argv[1:])
        rc, out, err = self.run_command(full)
        if rc != 0:
            cmd = [os.path.join(self.bin_dir, argv[0]) if self.bin_dir else argv[0]] + full[1:]
            raise BatchError(explain((err or out).strip(), what), command=cmd, stderr=err)
        return out

    def bulk_status(self, node_names: Optional[Iterable[str]] = None) -> Dict[str, NodeStatus]:
        wanted = as_list(node_names)
        out = self._run(["condor_status", "-startd", "-json", "-attributes", ",".join(ATTRIBUTES)], "condor_status")
        try:
            nodes = parse_status_json(out)
        except ValueError as exc:
            raise BatchError(f"htcondor: condor_status -json printed no valid JSON ({exc}).") from exc
        for name, status in nodes.items():
            self._machines[name] = status.address
        if wanted:
            return {n: nodes.get(n) or NodeStatus(name=n, state=ABSENT) for n in wanted}
        return nodes

    def pending_jobs_output(self) -> str:
        """Every idle job as JSON ads, from ONE condor_q (parsed by ``_batch_queue``)."""
        return self._run(["condor_q", *CONDOR_Q_ARGS], "condor_q")

    def _machine(self, node: str) -> str:
        return self._machines.get(node, node)

    def drain(self, nodes: Iterable[str], reason: str) -> None:
        for node in as_list(nodes):
            argv = ["condor_drain", "-graceful"]
            if reason:
                argv += ["-reason", reason]
            self._run(argv + [self._machine(node)], f"draining {node}")

    def resume(self, nodes: Iterable[str]) -> None:
        for node in as_list(nodes):
            self._run(["condor_drain", "-cancel", self._machine(node)], f"resuming {node}")

    def remove(self, nodes: Iterable[str]) -> None:
        for node in as_list(nodes):
            self._run(["condor_off", "-peaceful", "-startd", "-name", self._machine(node)], f"removing {node}")

    def register(self, node: str, **params: Any) -> bool:
        status = params.get("status") or self.bulk_status([node])[node]
        if status.known:
            return False
        raise BatchError(
            f"htcondor: node {node} is not in the pool, and HTCondor execute nodes cannot be added from "
            "outside: they join by themselves when their startd starts (see cloud_init_registration). "
            "Check that the VM booted, that condor runs there and that CONDOR_HOST points at the pool."
        )
