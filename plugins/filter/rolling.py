# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rolling update's plan and the lifecycle plays' lock holder, as Jinja filters.

``rolling_batch_size`` and ``rolling_plan`` are ``plugins/module_utils/_rolling.py`` (one rule,
no Jinja copy of it); ``operation_holder`` names the control process that takes the operations
lock (documentation: the ``.yml`` files next to this one).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from typing import Any, Callable, Dict, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.batchvirt.farm.plugins.module_utils._rolling import RollingPlanError, batch_size, plan

# Environment variables that carry the AWX (or automation controller) job id inside its execution environment.
AWX_JOB_ENV = ("JOB_ID", "AWX_JOB_ID", "TOWER_JOB_ID")


def _count(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return len(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{name} must be a number or a list of slots, got {value!r}") from None


def rolling_batch_size(targets: Any, accepting: Any, min_capacity_share: Any, serial: Any = "") -> int:
    """The ``serial`` of the rolling update: at least 1 (Ansible reads 0 as "every host at once")."""
    try:
        size = batch_size(_count(accepting, "accepting"), float(min_capacity_share), _count(targets, "targets"), serial)
    except (RollingPlanError, ValueError) as exc:
        raise AnsibleFilterError(str(exc)) from None
    return max(1, size)


def rolling_plan(targets: Sequence[str], accepting: Any, min_capacity_share: Any, serial: Any = "") -> Dict[str, Any]:
    """The plan the rolling update shows: batch size, batches, capacity share kept, below the floor."""
    try:
        result = plan(list(targets or []), _count(accepting, "accepting"), float(min_capacity_share), serial)
    except (RollingPlanError, ValueError) as exc:
        raise AnsibleFilterError(str(exc)) from None
    out = result.as_dict()
    out["capacity_share_kept"] = round(result.capacity_share_kept, 3)
    return out


def operation_holder(play: str, awx_job_id: Any = "", **extra: Any) -> Dict[str, Any]:
    """Who takes the operations lock: the play, the AWX job id (the argument, else the job's
    environment), the control host and the pid of the ansible-playbook process."""
    job = str(awx_job_id or "").strip()
    if not job:
        job = next((os.environ[k] for k in AWX_JOB_ENV if os.environ.get(k)), "")
    # Task arguments are templated in a forked worker: its parent is ansible-playbook itself.
    in_worker = multiprocessing.current_process().name != "MainProcess"
    holder: Dict[str, Any] = {
        "play": str(play),
        "awx_job_id": job,
        "host": socket.gethostname(),
        "pid": os.getppid() if in_worker else os.getpid(),
    }
    holder.update({k: v for k, v in extra.items() if v not in (None, "")})
    return holder


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {
            "rolling_batch_size": rolling_batch_size,
            "rolling_plan": rolling_plan,
            "operation_holder": operation_holder,
        }
