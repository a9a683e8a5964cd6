# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: HEPiX Machine/Job Features (MJF) for a worker VM's contextualisation.

WLCG pilots (DIRAC and others) read ``$MACHINEFEATURES/<key>`` files: one value per file,
text, no newline needed. The slot module writes them through cloud-init ``write_files`` at the
VM's first boot and exports ``MACHINEFEATURES`` for every login and PAM session
(``/etc/environment``, ``/etc/profile.d``). ``$JOBFEATURES`` is per job and needs the batch
system's prolog configured on the controller; it is not written here.
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
