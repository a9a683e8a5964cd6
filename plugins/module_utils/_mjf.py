# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: HEPiX Machine/Job Features (MJF) for a worker VM's contextualisation.

WLCG pilots (DIRAC and others) read ``$MACHINEFEATURES/<key>`` files: one value per file,
text, no newline needed. The slot module writes them through cloud-init ``write_files`` at the
VM's first boot and exports ``MACHINEFEATURES`` for every login and PAM session
(``/etc/environment``, ``/etc/profile.d``).

``$JOBFEATURES`` is per job: with Slurm and a ``slurm.conf`` the slot writes itself (not
configless), the VM's ``slurm.conf`` gets a ``TaskProlog`` (:data:`TASK_PROLOG`) that writes the
job's files under ``/run/jobfeatures/<job id>`` and prints ``export JOBFEATURES=<dir>`` (Slurm
puts that into the task's environment), and an ``Epilog`` that removes the directory when the
job ends. The wall limit comes from ``squeue`` in the VM (Slurm 22.05 puts no time limit in the
task's environment), so the image needs the Slurm client commands (``slurm-client``).

When a slot's drain starts early, :func:`shutdowntime` gives the moved time and the
``slot_drain`` module rewrites the file through the QEMU guest agent (``_guest_agent``).
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

DEFAULT_PATH = "/etc/machinefeatures"
DEFAULT_GRACE_SECS = 60  # the slot module's default shutdown_timeout at the end of a life


class MachineFeaturesError(FarmError, ValueError):
    """A machine_features option that cannot be published; ``option`` names it."""


def machine_features(
    shutdowntime: datetime.datetime,
    vcpus: int,
    grace_secs: int = DEFAULT_GRACE_SECS,
    hs06: Optional[float] = None,
    jobslots: Optional[int] = None,
) -> Dict[str, str]:
    """The ``$MACHINEFEATURES`` files (name -> content) of one worker VM.

    A VM sees its vCPUs as its cores: ``total_cpu``, ``log_cores`` and ``phys_cores`` are all
    ``vcpus``; ``jobslots`` defaults to one per vCPU; ``hs06`` only when configured.
    """
    if shutdowntime.tzinfo is None:
        raise MachineFeaturesError("shutdowntime must be timezone-aware (UTC)", "deadline")
    if vcpus < 1:
        raise MachineFeaturesError(f"vcpus must be at least 1, got {vcpus}", "vcpus")
    if grace_secs < 0:
        raise MachineFeaturesError(
            f"machine_features.grace_secs must be zero or more seconds, got {grace_secs}", "machine_features.grace_secs"
        )
    if hs06 is not None and hs06 <= 0:
        raise MachineFeaturesError(f"machine_features.hs06 must be positive, got {hs06}", "machine_features.hs06")
    files = {
        "shutdowntime": str(int(shutdowntime.timestamp())),
        "jobslots": str(jobslots if jobslots else vcpus),
        "total_cpu": str(vcpus),
        "log_cores": str(vcpus),
        "phys_cores": str(vcpus),
        "grace_secs": str(int(grace_secs)),
    }
    if hs06 is not None:
        files["hs06"] = ("%.2f" % hs06).rstrip("0").rstrip(".")
    return files


def shutdowntime(
    drain_at: datetime.datetime,
    deadline: datetime.datetime,
    drain_requested_at: Optional[datetime.datetime] = None,
) -> datetime.datetime:
    """When the VM goes away at the latest: the slot's deadline, or, when its drain was requested
    before its planned drain time, the request plus the same job walltime the deadline leaves
    after ``drain_at`` (``deadline - drain_at``), whichever is earlier."""
    if drain_requested_at is None or drain_requested_at >= drain_at:
        return deadline
    return min(deadline, drain_requested_at + (deadline - drain_at))


def shutdowntime_content(when: datetime.datetime) -> bytes:
    """The ``shutdowntime`` file's content, as cloud-init writes it at the first boot."""
    return (str(int(when.timestamp())) + "\n").encode("ascii")


def cloud_init_machine_features(files: Dict[str, str], path: str = DEFAULT_PATH) -> Dict[str, List[Any]]:
    """cloud-init ``write_files`` for the MJF files and the ``MACHINEFEATURES`` variable."""
    if not path.startswith("/") or any(c in path for c in "\n\"'$`\\ "):
        raise MachineFeaturesError(
            f"machine_features.path must be an absolute path without spaces or quotes, got {path!r}",
            "machine_features.path",
        )
    path = path.rstrip("/") or "/"
    write: List[Any] = [
        {"path": f"{path}/{key}", "content": value + "\n", "owner": "root:root", "permissions": "0644"}
        for key, value in sorted(files.items())
    ]
    write.append(
        {
            "path": "/etc/environment",
            "content": f"MACHINEFEATURES={path}\n",
            "append": True,
        }
    )
    write.append(
        {
            "path": "/etc/profile.d/machinefeatures.sh",
            "content": f"# written by batchvirt.farm at first boot (HEPiX Machine/Job Features)\n"
            f"export MACHINEFEATURES={path}\n",
            "owner": "root:root",
            "permissions": "0644",
        }
    )
    return {"write_files": write}


JOBFEATURES_DIR = "/run/jobfeatures"
TASK_PROLOG = "/etc/slurm/batchvirt-jobfeatures-prolog"
EPILOG = "/etc/slurm/batchvirt-jobfeatures-epilog"

_TASK_PROLOG_SCRIPT = r"""#!/bin/sh
# written by batchvirt.farm at first boot: HEPiX $JOBFEATURES of this job (Slurm TaskProlog, run
# as the job's user before each task; an "export" line on stdout goes into the task's environment)
PATH=${PATH:+$PATH:}/usr/local/bin:/usr/bin:/bin  # Slurm sets no search path for prologs
export PATH
[ -n "$SLURM_JOB_ID" ] || exit 0
dir=@DIR@/$SLURM_JOB_ID
mkdir -p "$dir" 2>/dev/null && [ -w "$dir" ] || exit 0
[ -s "$dir/jobstart_secs" ] || date +%s > "$dir/jobstart_secs"
echo "$SLURM_JOB_ID" > "$dir/job_id"
echo "${SLURM_CPUS_ON_NODE:-1}" > "$dir/allocated_cpu"
if [ -n "$SLURM_MEM_PER_NODE" ]; then echo $((SLURM_MEM_PER_NODE * 1048576)) > "$dir/max_rss_bytes"; fi
# the time limit: [days-]hours:minutes:seconds, minutes:seconds, or UNLIMITED (no file then)
limit=$(squeue -h -j "$SLURM_JOB_ID" -o %l 2>/dev/null | head -n 1)
case "$limit" in
  [0-9]*)
    case "$limit" in *-*) days=${limit%%-*}; rest=${limit#*-} ;; *) days=0; rest=$limit ;; esac
    echo "$rest" | awk -F: -v d="$days" '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s + d * 86400 }' \
      > "$dir/wall_limit_secs.tmp" && mv "$dir/wall_limit_secs.tmp" "$dir/wall_limit_secs"
    ;;
esac
echo "export JOBFEATURES=$dir"
exit 0
"""

_EPILOG_SCRIPT = r"""#!/bin/sh
# written by batchvirt.farm at first boot: remove the job's $JOBFEATURES (Slurm Epilog, root)
PATH=${PATH:+$PATH:}/usr/local/bin:/usr/bin:/bin  # Slurm sets no search path for epilogs
case "$SLURM_JOB_ID" in ''|*[!0-9_]*) exit 0 ;; esac
rm -rf "@DIR@/$SLURM_JOB_ID"
exit 0
"""


def slurm_conf_with_job_features(text: str) -> str:
    """The VM's ``slurm.conf`` with the job features ``TaskProlog`` and ``Epilog``; a site's own
    ``TaskProlog`` or ``Epilog`` is kept (then that one is not added)."""
    keys = {line.split("=", 1)[0].strip().lower() for line in text.splitlines() if "=" in line}
    extra = []
    if "taskprolog" not in keys:
        extra.append(f"TaskProlog={TASK_PROLOG}")
    if "epilog" not in keys:
        extra.append(f"Epilog={EPILOG}")
    if not extra:
        return text
    return text.rstrip("\n") + "\n# HEPiX $JOBFEATURES (batchvirt.farm)\n" + "\n".join(extra) + "\n"


def cloud_init_job_features() -> Dict[str, List[Any]]:
    """cloud-init ``write_files`` and ``runcmd`` for the job features scripts and their directory."""
    write: List[Any] = [
        {
            "path": TASK_PROLOG,
            "content": _TASK_PROLOG_SCRIPT.replace("@DIR@", JOBFEATURES_DIR),
            "owner": "root:root",
            "permissions": "0755",
        },
        {
            "path": EPILOG,
            "content": _EPILOG_SCRIPT.replace("@DIR@", JOBFEATURES_DIR),
            "owner": "root:root",
            "permissions": "0755",
        },
        {
            "path": "/etc/tmpfiles.d/batchvirt-jobfeatures.conf",
            "content": f"d {JOBFEATURES_DIR} 1777 root root -\n",
            "owner": "root:root",
            "permissions": "0644",
        },
    ]
    return {"write_files": write, "runcmd": [["install", "-d", "-m", "1777", JOBFEATURES_DIR]]}
