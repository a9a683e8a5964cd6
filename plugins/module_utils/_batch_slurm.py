# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the Slurm adapter (scontrol, sinfo, squeue).

The bulk query is at most two commands whatever the number of nodes: the nodes
(``sinfo --json`` where the installed Slurm has the openapi plugins, else
``scontrol -o -F show node``), then the running jobs (``squeue --json``, else
``squeue -h -o`` with an explicit format), the latter only when a node is busy. Which form
works is detected once per ``bin_dir`` and cached. Slurm's FUTURE nodes and nodes outside
every partition are invisible to ``sinfo``; named nodes it does not list are looked up with
one ``scontrol -o -F show node``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    ABSENT,
    ALLOCATED,
    COMPLETING,
    DRAINING,
    MIXED,
    BatchAdapter,
    BatchError,
    NodeStatus,
    Runner,
    as_list,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import SQUEUE_PENDING_ARGS
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_slurm_parse import (
    ACTIVE_JOB_STATES,
    SQUEUE_FORMAT,
    auth_failures_hint,
    check_json_errors,
    classify,
    explain,
    parse_scontrol_nodes,
    parse_sinfo_json,
    parse_squeue_json,
    parse_squeue_text,
    parse_state,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._logtail import tail

# Detected once per bin_dir: does this Slurm answer --json?
_JSON_SUPPORT: Dict[str, bool] = {}


class SlurmAdapter(BatchAdapter):
    """Slurm through its command-line clients."""

    system = "slurm"
    updates_features = True

    def __init__(
        self,
        runner: Optional[Runner] = None,
        slurm_conf: Optional[str] = None,
        bin_dir: Optional[str] = None,
        use_json: Optional[bool] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(runner, bin_dir, dict(env or {}, **({"SLURM_CONF": slurm_conf} if slurm_conf else {})))
        self.slurm_conf = slurm_conf
        self._use_json = use_json

    # -- plumbing ------------------------------------------------------------------------------
    def _check(self, argv: Sequence[str], what: str, nodes: Sequence[str] = ()) -> str:
        rc, out, err = self.run_command(argv)
        if rc != 0:
            text = (err or out).strip()
            if "Invalid node name specified" in text or re.search(r"Node \S+ not found", text):
                raise BatchError(self.unknown_node_message(list(nodes)), command=argv, stderr=text)
            raise BatchError(explain(text, what), command=argv, stderr=text)
        return out

    def json_supported(self) -> bool:
        """Whether ``sinfo --json`` works here (asked once per bin_dir, then cached)."""
        if self._use_json is None:
            self._use_json = _JSON_SUPPORT.get(self.bin_dir)
        return bool(self._use_json)

    def _diagnose(self, what: str) -> BatchError:
        """JSON output says only 'Unspecified error': ask a text command for the real message."""
        _rc, out, err = self.run_command(["scontrol", "-o", "show", "partition"])
        text = " ".join((err or out or "").split())
        return BatchError(explain(text, what), stderr=text)

    # -- the bulk query ------------------------------------------------------------------------
    def _nodes(self, wanted: List[str]) -> Dict[str, NodeStatus]:
        nodes: Optional[Dict[str, NodeStatus]] = None
        if self._use_json is None and self.bin_dir not in _JSON_SUPPORT:
            rc, out, err = self.run_command(["sinfo", "--json"])
            try:
                if rc != 0:
                    raise ValueError(err)
                parsed = json.loads(out)
            except ValueError:
                # no openapi/data_parser plugin, or an old sinfo: use text forms from now on
                _JSON_SUPPORT[self.bin_dir] = False
                self._use_json = False
            else:
                _JSON_SUPPORT[self.bin_dir] = True
                self._use_json = True
                if check_json_errors(parsed):
                    raise self._diagnose("querying the nodes")
                nodes = parse_sinfo_json(out)
        elif self.json_supported():
            rc, out, err = self.run_command(["sinfo", "--json"])
            if rc != 0:
                raise BatchError(explain(err or out, "sinfo --json"), stderr=err)
            try:
                nodes = parse_sinfo_json(out)
            except BatchError:
                raise self._diagnose("querying the nodes") from None
            except ValueError as exc:
                raise BatchError(f"slurm: sinfo --json printed no valid JSON ({exc}).") from exc
        if nodes is not None and all(n in nodes for n in wanted):
            return nodes
        # FUTURE nodes and nodes outside every partition are only seen by scontrol -F
        out = self._check(["scontrol", "-o", "-F", "show", "node"], "querying the nodes")
        found = parse_scontrol_nodes(out)
        if nodes is not None:
            found.update(nodes)
        return found

    def _jobs(self) -> Dict[str, List[str]]:
        if self.json_supported():
            rc, out, err = self.run_command(["squeue", "--json"])
            if rc != 0:
                raise BatchError(explain(err or out, "squeue --json"), stderr=err)
            try:
                return parse_squeue_json(out)
            except BatchError:
                raise self._diagnose("querying the jobs") from None
            except ValueError as exc:
                raise BatchError(f"slurm: squeue --json printed no valid JSON ({exc}).") from exc
        out = self._check(["squeue", "-h", "-t", ",".join(ACTIVE_JOB_STATES), "-o", SQUEUE_FORMAT], "querying the jobs")
        return parse_squeue_text(out)

    def bulk_status(self, node_names: Optional[Iterable[str]] = None) -> Dict[str, NodeStatus]:
        wanted = as_list(node_names)
        nodes = self._nodes(wanted)
        selected = {n: nodes[n] for n in wanted if n in nodes} if wanted else dict(nodes)
        if any(s.state in (ALLOCATED, MIXED, COMPLETING, DRAINING) for s in selected.values()):
            jobs = self._jobs()
            for name, status in selected.items():
                ids = jobs.get(name, [])
                status.job_ids = list(ids)
                status.jobs = len(ids)
                status.state, status.registered, status.drain = classify(
                    parse_state(status.raw_state)[0], status.flags, status.jobs
                )
        if wanted:
            return {n: selected.get(n) or NodeStatus(name=n, state=ABSENT) for n in wanted}
        return selected

    def pending_jobs_output(self) -> str:
        """Every pending job, one line each, from ONE squeue (parsed by ``_batch_queue``)."""
        return self._check(["squeue", *SQUEUE_PENDING_ARGS], "reading the pending jobs")

    def controller_log(self) -> str:
        """The SlurmctldLogFile of the configuration (``scontrol show config``), or ''."""
        rc, out, _err = self.run_command(["scontrol", "show", "config"])
        if rc != 0:
            return ""
        for line in out.splitlines():
            key, _sep, value = line.partition("=")
            if key.strip() == "SlurmctldLogFile":
                value = value.strip()
                return "" if value in ("(null)", "") else value
        return ""

    def diagnose_registration(self, nodes: Sequence[str], since: float) -> str:
        """Read slurmctld's log (when it is on this host) for munge failures since ``since``."""
        path = self.controller_log()
        if not path or not os.access(path, os.R_OK):
            return (
                "If slurmd logs 'Unable to register: Zero Bytes were transmitted or received', the node's "
                "munge key is not the controller's (a munge key mismatch)."
            )
        return auth_failures_hint(tail(path, 256 * 1024), time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since)))

    # -- actions -------------------------------------------------------------------------------
    def drain(self, nodes: Iterable[str], reason: str) -> None:
        names = as_list(nodes)
        if not names:
            return
        if not reason or not reason.strip():
            raise BatchError("slurm: a drain needs a reason (Slurm refuses one without): give reason.")
        self._check(
            ["scontrol", "update", "nodename=" + ",".join(names), "state=DRAIN", "reason=" + reason],
            f"draining {', '.join(names)}",
            names,
        )

    def resume(self, nodes: Iterable[str]) -> None:
        names = as_list(nodes)
        if names:
            self._check(
                ["scontrol", "update", "nodename=" + ",".join(names), "state=RESUME"],
                f"resuming {', '.join(names)}",
                names,
            )

    def remove(self, nodes: Iterable[str]) -> None:
        names = as_list(nodes)
        if names:
            self._check(["scontrol", "delete", "nodename=" + ",".join(names)], f"removing {', '.join(names)}", names)

    def register(self, node: str, **params: Any) -> bool:
        """Make ``node`` known: create it as a dynamic node (``scontrol create``) when absent,
        update its address when ``address`` differs and its features when ``features`` differ
        (``availablefeatures=`` and ``activefeatures=`` together: Slurm refuses new available
        features that leave out an active one; a static node keeps them until slurmctld re-reads
        slurm.conf).

        Params: ``address``, ``features`` (list), ``cpus``, ``memory`` (MiB),
        ``node_state`` (``FUTURE`` or ``CLOUD``, for a node created here), ``status`` (a
        :class:`NodeStatus` from a bulk query, to save a query).
        """
        status = params.get("status") or self.bulk_status([node])[node]
        address = params.get("address")
        if status.known:
            changed = False
            if address and status.address != address:
                self._check(
                    ["scontrol", "update", f"nodename={node}", f"nodeaddr={address}"],
                    f"setting the address of {node}",
                    [node],
                )
                changed = True
            wanted = [str(f) for f in params.get("features") or []]
            if wanted and set(status.features) != set(wanted):
                # both at once: Slurm refuses available features that leave out an active one
                self._check(
                    [
                        "scontrol",
                        "update",
                        f"nodename={node}",
                        "availablefeatures=" + ",".join(wanted),
                        "activefeatures=" + ",".join(wanted),
                    ],
                    f"setting the features of {node}",
                    [node],
                )
                changed = True
            return changed
        argv = ["scontrol", "create", f"nodename={node}", "state=" + str(params.get("node_state") or "FUTURE")]
        if address:
            argv.append(f"nodeaddr={address}")
        features = params.get("features") or []
        if features:
            argv.append("feature=" + ",".join(features))
        if params.get("cpus"):
            argv.append(f"cpus={int(params['cpus'])}")
        if params.get("memory"):
            argv.append(f"realmemory={int(params['memory'])}")
        self._check(argv, f"creating the dynamic node {node} (the controller needs MaxNodeCount)", [node])
        return True
