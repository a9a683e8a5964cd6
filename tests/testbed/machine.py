"""What a test may leave changed on the machine, as one comparable value: the system's Slurm
configuration and munge key, which system daemons run, the libvirt storage pools and the
entries under the directories the demo touches. A test takes it before and after and
compares."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Dict, List, Optional

WATCHED_DIRS = ["/var/lib/batchvirt", "/etc/batchvirt", "/var/lib/slurm/slurmctld", "/var/log/slurm"]
FILES = [
    "/etc/slurm/slurm.conf",
    "/etc/munge/munge.key",
    "/etc/tmpfiles.d/batchvirt-ksm.conf",
    "/etc/sysctl.d/60-batchvirt-hugepages.conf",
]
SYSTEM_SLURM_CONF = "/etc/slurm/slurm.conf"


def _digest(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0


def _entries(top: str) -> List[str]:
    out = []
    if not os.path.isdir(top):
        return out
    for root, dirs, files in os.walk(top):
        depth = root[len(top) :].count(os.sep)
        for name in dirs + files:
            out.append(os.path.join(root, name))
        if depth >= 1:
            dirs[:] = []
    return sorted(out)


def state() -> Dict[str, object]:
    return {
        "files": {path: _digest(path) for path in FILES},
        "running": {
            "slurmctld": _running("^/usr/sbin/slurmctld( |$)"),
            "munged": _running("^/usr/sbin/munged( |$)"),
            "libvirtd": _running("^/usr/sbin/libvirtd( |$)"),
        },
        "entries": {top: _entries(top) for top in WATCHED_DIRS},
    }


def diff(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    """Human-readable differences between two :func:`state` values."""
    out = []
    for key in ("files", "running"):
        for name, value in before[key].items():  # type: ignore[attr-defined]
            if after[key][name] != value:  # type: ignore[index]
                out.append(f"{key} {name}: {value} -> {after[key][name]}")  # type: ignore[index]
    for top, entries in before["entries"].items():  # type: ignore[attr-defined]
        now = set(after["entries"][top])  # type: ignore[index]
        added = sorted(now - set(entries))
        removed = sorted(set(entries) - now)
        if added:
            out.append(f"added under {top}: {added[:10]}")
        if removed:
            out.append(f"removed under {top}: {removed[:10]}")
    return out


# The shared daemons other test areas rely on once a session fixture has started them (libvirtd
# and virtlogd from the hypervisor role, munge from the Slurm fixtures), with their init scripts.
SHARED_DAEMONS = {"libvirtd": "libvirtd", "virtlogd": "virtlogd", "munged": "munge"}


def shared_daemons_running() -> Dict[str, bool]:
    return {name: _running(f"^/usr/sbin/{name}( |$)") for name in SHARED_DAEMONS}


def restart_shared_daemons(running_before: Dict[str, bool]) -> List[str]:
    """Start again the shared daemons that ran before a teardown stopped them (virtlogd before
    libvirtd); return the names started. A teardown that puts the machine back as it was before
    the demo also stops daemons that a session fixture started later for the tests after it."""
    started = []
    for name in ("virtlogd", "libvirtd", "munged"):
        if running_before.get(name) and not _running(f"^/usr/sbin/{name}( |$)"):
            subprocess.run(["service", SHARED_DAEMONS[name], "start"], capture_output=True, check=False)
            started.append(name)
    return started


def system_slurm_answers() -> bool:
    """The machine's own controller (the service reading /etc/slurm/slurm.conf) answers."""
    if not os.path.exists(SYSTEM_SLURM_CONF):
        return False
    proc = subprocess.run(
        ["scontrol", "ping"],
        capture_output=True,
        text=True,
        env=dict(os.environ, SLURM_CONF=SYSTEM_SLURM_CONF),
        timeout=30,
        check=False,
    )
    return "is UP" in proc.stdout
