#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: operations_lock
short_description: Take or release the farm-wide operations lock (one lifecycle play at a time)
version_added: 0.1.0
description:
  - Lets one lifecycle play (rolling update, recycle, rebalance) work on the farm at a time.
  - The lock is a small JSON record in O(path) on the host this module runs on. Run it on ONE
    designated host that every run reaches (the collection's plays use the batch controller,
    C(farm_ops_lock_host)), because AWX runs each job in a fresh container and a lock kept where the play
    runs would be seen by no other job.
  - Changes of the record are atomic between processes on that host (an exclusive C(flock) of
    O(path) with C(.guard) appended, and C(rename) of the record), so of two runs asking at once
    exactly one gets the lock.
  - The record names its holder (operation, AWX job id, host, pid, start) and expires after
    O(ttl) seconds, so a crashed play does not block the farm for ever; once expired, the next run
    takes it over (and reports whose lock it took over).
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the lock is free (or whose it is) without writing it.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: Acquiring with the O(token) that holds the lock renews it (a new expiry); releasing a free lock changes nothing.
options:
  state:
    description:
      - V(acquired) takes the lock, or renews it when O(token) holds it.
      - V(released) removes the lock when O(token) holds it; a lock held by another run is refused
        unless O(force=true).
    type: str
    choices: [acquired, released]
    default: acquired
  path:
    description:
      - The lock record on this host; its directory is created when missing. Keep it on a local
        file system (C(flock) is not reliable over every network file system).
    type: path
    default: /var/lib/batchvirt/operations.lock
  operation:
    description:
      - What takes the lock, for example V(rolling_update), V(recycle) or V(rebalance). Required with O(state=acquired).
    type: str
  holder:
    description:
      - Who holds it, recorded for whoever finds the farm busy, for example C(play), C(awx_job_id),
        C(host) and C(pid) of the control process (the collection's plays fill these in).
    type: dict
    default: {}
  token:
    description:
      - The token an earlier O(state=acquired) returned (RV(token)), to renew the lock or to release it.
      - Empty with O(state=acquired) takes a new lock with a new token.
    type: str
    default: ""
  ttl:
    description:
      - Seconds until the lock expires unless renewed. Longer than the longest step of the play
        between two renewals (a drain wait), so that a live play never loses it.
    type: int
    default: 3600
  wait_timeout:
    description:
      - Seconds to wait for a busy lock to become free (or expire) before giving up.
    type: int
    default: 0
  poll_interval:
    description:
      - Seconds between two attempts while waiting.
    type: float
    default: 5
  on_busy:
    description:
      - What happens when the lock is still held after O(wait_timeout).
      - V(fail) fails the task, naming the holder.
      - V(report) succeeds with RV(acquired=false) and the holder in RV(holder), so the play can end cleanly.
    type: str
    choices: [fail, report]
    default: fail
  force:
    description:
      - With O(state=released), remove the lock whoever holds it (an operator who knows the holder is gone).
    type: bool
    default: false
seealso:
  - name: batchvirt.farm operations documentation
    description: Which plays take the lock and what a second play does.
    link: https://github.com/batchvirt/farm/blob/main/docs/operations.md
"""

EXAMPLES = r"""
- name: Take the lock for a rolling update on the batch controller, waiting up to 10 minutes
  batchvirt.farm.operations_lock:
    operation: rolling_update
    holder:
      play: rolling_update.yml
      awx_job_id: "{{ awx_job_id | default('') }}"
    ttl: 90000
    wait_timeout: 600
    on_busy: report
  delegate_to: slurm-ctl.example.org
  run_once: true
  register: farm_lock

- name: Release it
  batchvirt.farm.operations_lock:
    state: released
    token: "{{ farm_lock.token }}"
  delegate_to: slurm-ctl.example.org
  run_once: true
  when: farm_lock.acquired

- name: An operator frees the farm after a crashed play, without waiting for the expiry
  batchvirt.farm.operations_lock:
    state: released
    force: true
"""

RETURN = r"""
acquired:
  description: Whether this run holds the lock after the task.
  returned: always
  type: bool
token:
  description: The token of this run's lock; pass it to renew or release.
  returned: success
  type: str
  sample: 3f1c2a9d5be84f0e9c1d0e6b7a8f9c10
lock:
  description: This run's lock record when it holds the lock.
  returned: always
  type: dict
  sample:
    operation: rolling_update
    token: 3f1c2a9d5be84f0e9c1d0e6b7a8f9c10
    holder: {play: rolling_update.yml, awx_job_id: "42", host: awx-ee-7f9c, pid: 17}
    acquired_at: "2026-12-03T08:00:00Z"
    renewed_at: "2026-12-03T08:00:00Z"
    expires_at: "2026-12-04T09:00:00Z"
holder:
  description: The other run's lock record when the lock is busy (or the released record).
  returned: always
  type: dict
taken_over:
  description: The expired record of a crashed run that this run replaced.
  returned: always
  type: dict
waited:
  description: Seconds waited for the lock.
  returned: always
  type: float
msg:
  description: What happened, naming the holder when busy.
  returned: always
  type: str
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule
from ansible_collections.batchvirt.farm.plugins.module_utils._oplock import DEFAULT_PATH, run_module


def main() -> None:
    module = FarmModule(
        argument_spec={
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "path": {"type": "path", "default": DEFAULT_PATH},
            "operation": {"type": "str"},
            "holder": {"type": "dict", "default": {}},
            "token": {"type": "str", "default": "", "no_log": False},
            "ttl": {"type": "int", "default": 3600},
            "wait_timeout": {"type": "int", "default": 0},
            "poll_interval": {"type": "float", "default": 5},
            "on_busy": {"type": "str", "choices": ["fail", "report"], "default": "fail"},
            "force": {"type": "bool", "default": False},
        },
        required_if=[("state", "acquired", ("operation",))],
        supports_check_mode=True,
    )
    try:
        result = run_module(module.params, module.check_mode)
    except FarmError as exc:
        module.fail_from(exc, **exc.to_result())
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
