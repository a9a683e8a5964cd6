# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: reading Slurm's output for the Slurm adapter (:mod:`_batch_slurm`).

Node states of ``sinfo --json`` and ``scontrol -o -F show node`` (both mapped to one
:class:`_batch.NodeStatus`), running jobs of ``squeue --json`` and ``squeue -h -o``, hostlist
expressions, the time in a node's reason, and the known error messages of Slurm's clients turned
into what to do. Pure functions of text: the table tests feed them recorded output.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
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
    BatchError,
    NodeStatus,
)

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


def check_json_errors(data: Dict[str, Any]) -> List[str]:
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
    errors = check_json_errors(data)
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
    errors = check_json_errors(data)
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
