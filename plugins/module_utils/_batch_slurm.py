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

import datetime
import json
import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    ABSENT,
    ALLOCATED,
    COMPLETING,
    DOWN,
    DRAINED,
    DRAINING,
    FUTURE,
    IDLE,
    MIXED,
    NOT_RESPONDING,
    UNKNOWN,
    BatchAdapter,
    BatchError,
    NodeStatus,
    Runner,
    as_list,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._batch_queue import SQUEUE_PENDING_ARGS
from ansible_collections.batchvirt.farm.plugins.module_utils._logtail import tail

# Job states that hold a node (a drain waits for them).
ACTIVE_JOB_STATES = ("RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING", "STOPPED")

# sinfo's compact state names (%T) -> (base state, flags); suffix characters -> flags.
_TEXT_STATES = {
    "drained": ("idle", ("DRAIN",)),
    "draining": ("allocated", ("DRAIN",)),
    "drng": ("allocated", ("DRAIN",)),
    "drain": ("idle", ("DRAIN",)),
    "alloc": ("allocated", ()),
    "comp": ("idle", ("COMPLETING",)),
    "completing": ("idle", ("COMPLETING",)),
    "fail": ("down", ("DRAIN", "FAIL")),
    "failing": ("allocated", ("DRAIN", "FAIL")),
    "maint": ("idle", ("MAINTENANCE",)),
    "unk": ("unknown", ()),
    "inval": ("unknown", ("INVALID_REG",)),
    "powered_down": ("idle", ("POWERED_DOWN",)),
    "powering_up": ("idle", ("POWERING_UP",)),
    "powering_down": ("idle", ("POWERING_DOWN",)),
    "mix": ("mixed", ()),
}
_SUFFIX_FLAGS = {
    "*": "NOT_RESPONDING",
    "~": "POWERED_DOWN",
    "#": "POWERING_UP",
    "%": "POWERING_DOWN",
    "!": "POWER_DOWN",
    "$": "MAINTENANCE",
    "@": "REBOOT_REQUESTED",
    "^": "REBOOT_ISSUED",
    "-": "PLANNED",
}
_BASE_STATES = ("idle", "allocated", "mixed", "down", "future", "unknown", "error", "end")

# Known messages of Slurm's clients -> what they mean and what to do.
_ERRORS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (
        ("Munge encode failed", "Did you start munged"),
        "munged does not run on this host (Slurm cannot sign its request): start it "
        "(service munge start) and check /etc/munge/munge.key",
    ),
    (
        (
            "Zero Bytes were transmitted or received",
            "Protocol authentication error",
            "Invalid authentication credential",
            "Munge decode failed",
            "Invalid credential",
            "authentication error",
        ),
        "authentication failure: the controller rejected this host's munge credential. The munge key "
        "here (/etc/munge/munge.key) is not the controller's (a munge key mismatch), or the clocks "
        "differ: copy the controller's key (the batch_controller role distributes it), then restart munge",
    ),
    (
        ("Unable to contact slurm controller", "Connection refused", "connect failure", "Communication connection"),
        "the controller (slurmctld) does not answer: start it (service slurmctld start), check it with "
        "'scontrol ping', and check SlurmctldHost/SlurmctldPort in slurm.conf",
    ),
    (
        ("Could not establish a configuration source", "fetch_config", "resolve_ctls_from_dns_srv"),
        "this host has no Slurm configuration: give slurm_conf (the path of slurm.conf) or install "
        "/etc/slurm/slurm.conf",
    ),
    (
        ("command not found", "No such file or directory"),
        "a Slurm command is missing: install the Slurm client tools (slurm-client) or set bin_dir",
    ),
)


def explain(stderr: str, what: str) -> str:
    """A message for a failed Slurm command: what failed and what to do."""
    text = " ".join(stderr.split())
    for patterns, meaning in _ERRORS:
        if any(p.lower() in text.lower() for p in patterns):
            return f"slurm: {what} failed: {meaning}. (Slurm said: {text[-400:]})"
    return f"slurm: {what} failed: {text[-600:] or 'no error message'}"


# -- hostlists ---------------------------------------------------------------------------------
def _split_top(expr: str) -> List[str]:
    """Split a hostlist on the commas outside brackets."""
    parts: List[str] = []
    cur: List[str] = []
    depth = 0
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_hostlist(expr: str) -> List[str]:
    """Expand a Slurm hostlist (``n[01-03,7],gpu1``, ``r[1-2]-n[1-2]``) into names."""
    names: List[str] = []
    for part in _split_top(expr or ""):
        m = re.search(r"\[([^\]]*)\]", part)
        if not m:
            names.append(part)
            continue
        head, tail = part[: m.start()], part[m.end() :]
        for rng in m.group(1).split(","):
            if "-" in rng:
                lo, hi = rng.split("-", 1)
                width = len(lo) if lo.startswith("0") else 0
                for i in range(int(lo), int(hi) + 1):
                    names.extend(expand_hostlist(f"{head}{str(i).zfill(width)}{tail}"))
            else:
                names.extend(expand_hostlist(f"{head}{rng}{tail}"))
    return names


# -- states ------------------------------------------------------------------------------------
def parse_state(raw: str, flags: Iterable[str] = ()) -> Tuple[str, Tuple[str, ...]]:
    """Split a Slurm node state (``IDLE+DRAIN``, ``idle*``, ``drained``, JSON state + flags)."""
    text = (raw or "").strip()
    found = [str(f).upper() for f in flags]
    while text and text[-1] in _SUFFIX_FLAGS:
        found.append(_SUFFIX_FLAGS[text[-1]])
        text = text[:-1]
    words = [w for w in text.replace("|", "+").split("+") if w]
    base = ""
    for word in words:
        low = word.lower()
        if not base and low in _BASE_STATES:
            base = low
        elif not base and low in _TEXT_STATES:
            base, extra = _TEXT_STATES[low]
            found.extend(extra)
        else:
            found.append(word.upper())
    if not base:
        base = "unknown"
    return base, tuple(dict.fromkeys(found))


def classify(base: str, flags: Sequence[str], jobs: int = 0) -> Tuple[str, bool, bool]:
    """(normalised state, registered, drain) of a node from its base state and flags."""
    fl = set(flags)
    drain = "DRAIN" in fl or "FAIL" in fl
    busy = base in ("allocated", "mixed") or "COMPLETING" in fl or jobs > 0
    future = base == "future" or "DYNAMIC_FUTURE" in fl or ("CLOUD" in fl and "POWERED_DOWN" in fl)
    down = base in ("down", "error") or "NOT_RESPONDING" in fl or "INVALID_REG" in fl
    registered = not future and not down and base != "unknown" and "POWERED_DOWN" not in fl
    if drain:
        return (DRAINING if busy else DRAINED), registered, True
    if future:
        return FUTURE, False, False
    if base in ("down", "error"):
        return DOWN, False, False
    if "NOT_RESPONDING" in fl:
        return NOT_RESPONDING, False, False
    if base == "unknown":
        return UNKNOWN, False, False
    if "COMPLETING" in fl:
        return COMPLETING, registered, False
    if base == "mixed":
        return MIXED, registered, False
    if base == "allocated":
        return ALLOCATED, registered, False
    return IDLE, registered, False


def _status(
    name: str,
    raw: str,
    flags: Iterable[str],
    reason: str,
    address: str,
    port: Any,
    features: str,
    since: Optional[datetime.datetime] = None,
) -> NodeStatus:
    base, fl = parse_state(raw, flags)
    state, registered, drain = classify(base, fl)
    feats = tuple(f for f in (features or "").split(",") if f and f != "(null)")
    try:
        port_num = int(port or 0)
    except (TypeError, ValueError):
        port_num = 0
    return NodeStatus(
        name=name,
        state=state,
        raw_state="+".join((base.upper(),) + fl),
        flags=fl,
        reason="" if reason in ("none", "(null)") else reason,
        address=address or "",
        port=port_num,
        features=feats,
        registered=registered,
        drain=drain,
        dynamic=any(f.startswith("DYNAMIC") for f in fl),
        since=since,
    )


def reason_time(reason: str) -> Optional[datetime.datetime]:
    """The time in a Slurm reason's ``[user@2026-12-03T09:10:11]`` suffix, in UTC.

    Slurm prints it in the controller's local time zone, which is this process's when the
    query runs on the controller (as the adapter does). None when there is no such suffix.
    """
    match = _REASON_TIME.search(reason or "")
    if not match:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(match.group(1))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a naive time is local time
    return parsed.astimezone(datetime.timezone.utc)


def _epoch(value: Any) -> Optional[datetime.datetime]:
    """``reason_changed_at`` of ``sinfo --json`` (seconds, or ``{"number": n, "set": true}``)."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) else None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc) if seconds > 0 else None


def _check_json_errors(data: Dict[str, Any]) -> List[str]:
    out = []
    for err in data.get("errors") or []:
        if isinstance(err, dict):
            out.append(str(err.get("description") or err.get("error") or err))
        else:
            out.append(str(err))
    return out


def parse_sinfo_json(text: str) -> Dict[str, NodeStatus]:
    """Nodes from ``sinfo --json`` (openapi v0.0.38 and later)."""
    data = json.loads(text)
    errors = _check_json_errors(data)
    if errors:
        raise BatchError("slurm: sinfo --json reported: " + "; ".join(errors), stderr="; ".join(errors))
    nodes: Dict[str, NodeStatus] = {}
    for node in data.get("nodes") or []:
        name = node.get("name") or node.get("hostname")
        if not name or name in nodes:
            continue
        state = node.get("state")
        flags = list(node.get("state_flags") or [])
        if isinstance(state, list):  # newer data_parser: state is a list of words
            flags = [str(s) for s in state[1:]] + flags
            state = state[0] if state else ""
        nodes[name] = _status(
            name,
            str(state or ""),
            flags,
            node.get("reason") or "",
            node.get("address") or "",
            node.get("port"),
            node.get("features") if isinstance(node.get("features"), str) else ",".join(node.get("features") or []),
            _epoch(node.get("reason_changed_at")),
        )
    return nodes


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z_]*)=")
_REASON_SUFFIX = re.compile(r"\s*\[[^\]@]*@[^\]]*\]\s*$")
_REASON_TIME = re.compile(r"\[[^\]@]*@([^\]]*)\]\s*$")


def parse_keyvalues(line: str) -> Dict[str, str]:
    """``Key=value Key2=value with blanks`` -> dict (a value ends where the next ``Key=`` starts)."""
    matches = list(_KEY.finditer(line))
    out: Dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out.setdefault(m.group(1), line[m.end() : end].strip())
    return out


def parse_scontrol_nodes(text: str) -> Dict[str, NodeStatus]:
    """Nodes from ``scontrol -o -F show node`` (one line per node)."""
    nodes: Dict[str, NodeStatus] = {}
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        kv = parse_keyvalues(line)
        name = kv.get("NodeName", "")
        reason = _REASON_SUFFIX.sub("", kv.get("Reason", ""))
        nodes[name] = _status(
            name,
            kv.get("State", ""),
            (),
            reason,
            kv.get("NodeAddr", ""),
            kv.get("Port"),
            kv.get("AvailableFeatures", ""),
            reason_time(kv.get("Reason", "")),
        )
    return nodes


def parse_squeue_json(text: str) -> Dict[str, List[str]]:
    """Node -> ids of the jobs that hold it, from ``squeue --json``."""
    data = json.loads(text)
    errors = _check_json_errors(data)
    if errors:
        raise BatchError("slurm: squeue --json reported: " + "; ".join(errors), stderr="; ".join(errors))
    out: Dict[str, List[str]] = {}
    for job in data.get("jobs") or []:
        state = job.get("job_state")
        if isinstance(state, list):
            state = state[0] if state else ""
        if str(state).upper() not in ACTIVE_JOB_STATES:
            continue
        names: List[str] = []
        alloc = (job.get("job_resources") or {}).get("allocated_nodes")
        if isinstance(alloc, dict):
            alloc = list(alloc.values())
        for entry in alloc or []:
            if isinstance(entry, dict) and entry.get("nodename"):
                names.append(str(entry["nodename"]))
        if not names:
            names = expand_hostlist(str(job.get("nodes") or ""))
        for name in dict.fromkeys(names):
            out.setdefault(name, []).append(str(job.get("job_id")))
    return out


SQUEUE_FORMAT = "%i|%T|%N"


def parse_squeue_text(text: str) -> Dict[str, List[str]]:
    """Node -> job ids from ``squeue -h -o '%i|%T|%N'``."""
    out: Dict[str, List[str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or parts[1].upper() not in ACTIVE_JOB_STATES:
            continue
        for name in dict.fromkeys(expand_hostlist(parts[2])):
            out.setdefault(name, []).append(parts[0])
    return out


_AUTH_LINE = re.compile(
    r"^\[(?P<time>[0-9T:.-]+)\] error: .*?\[(?P<peer>[^\]]*\]?:\d+)\] auth_g_verify: "
    r"(?P<msg>[A-Z_]+) has authentication error"
)


def auth_failures_hint(log_text: str, since: str) -> str:
    """A hint from slurmctld log lines that show rejected munge credentials after ``since``."""
    peers: Dict[str, int] = {}
    kinds: Dict[str, None] = {}
    for line in log_text.splitlines():
        m = _AUTH_LINE.match(line)
        if not m or m.group("time")[:19] < since:
            continue
        peer = m.group("peer").rsplit(":", 1)[0].strip("[]")
        peers[peer] = peers.get(peer, 0) + 1
        kinds.setdefault(m.group("msg"), None)
    if not peers:
        return ""
    return (
        "slurmctld rejected munge credentials (authentication error, "
        + ", ".join(kinds)
        + ") from "
        + ", ".join(sorted(peers))
        + " during the wait: a munge key mismatch. Give the node the controller's /etc/munge/munge.key "
        "(the batch_controller role exposes it) and restart munge and slurmd there."
    )


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
                if _check_json_errors(parsed):
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
