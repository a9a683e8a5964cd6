#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slot_health
short_description: Count a slot's failed lives and put it in back-off, carry the count, or clear it
version_added: 0.1.0
description:
  - Keeps the failure record in a slot's metadata (schema 3) that C(playbooks/recycle.yml) uses to back off
    a slot that keeps failing instead of re-creating it on every run.
  - V(failed) counts one more failed life of the slot (its image version, the time, O(reason)). From
    O(backoff.threshold) consecutive failures on, the slot is in back-off until
    O(backoff.base) * 2 ** (count - O(backoff.threshold)) seconds from now (at most O(backoff.max)); its VM is
    then shut down (ACPI, O(shutdown_timeout), then destroyed) while the domain, its disk and its metadata
    stay for a post-mortem. The last lines of its console log are returned in any case.
  - V(recorded) writes the failure record of the life a slot replaced (O(failures), as returned by V(failed))
    on the new slot, without back-off. V(healthy) clears the record (the slot reached C(active)).
  - A slot whose drain is owned by a live rolling update or rebalance (another O(operation)) is left alone by
    V(failed).
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
  - batchvirt.farm.libvirt
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The slot metadata before and after.
  idempotent:
    support: partial
    details: V(recorded) and V(healthy) are idempotent; V(failed) counts one failure each time it runs.
options:
  name:
    description: The slot name.
    type: str
    required: true
  state:
    description:
      - V(failed) counts one more failure (and may start the back-off); V(recorded) writes O(failures) on the
        slot; V(healthy) clears the failure record.
    type: str
    choices: [failed, recorded, healthy]
    default: failed
  reason:
    description: Why the life failed (recorded with V(failed)), for example the batch system's node state.
    type: str
    default: ""
  failures:
    description:
      - The failure record to write with V(recorded) (keys C(consecutive), C(last_at), C(image), C(reason)), as
        returned in RV(failures) by V(failed).
    type: dict
  operation:
    description: The run that asks (the C(token) of its M(batchvirt.farm.operations_lock)).
    type: str
    default: ""
  backoff:
    description: The back-off (C(playbooks/vars/operations.yml) sets these from C(farm_recycle_backoff_*)).
    type: dict
    default: {}
    suboptions:
      threshold:
        description: Consecutive failures from which the slot backs off.
        type: int
        default: 3
      base:
        description: Seconds of the first back-off; each further failure doubles it.
        type: int
        default: 600
      max:
        description: The longest back-off, in seconds.
        type: int
        default: 86400
  stop_in_backoff:
    description: Shut the VM down when the slot enters back-off (V(failed)).
    type: bool
    default: true
  shutdown_timeout:
    description: Seconds the guest has to power off after the ACPI request before it is destroyed (0 destroys).
    type: int
    default: 30
  console_lines:
    description: How many of the last console log lines to return with V(failed) (0 for none).
    type: int
    default: 15
notes:
  - E(BATCHVIRT_FARM_NOW) replaces the clock, as for the C(slot) module.
seealso:
  - name: batchvirt.farm operations documentation
    description: Recycling failed slots and the back-off.
    link: https://github.com/batchvirt/farm/blob/main/docs/operations.md
"""

EXAMPLES = r"""
- name: Count the failure of a slot that recycle.yml is about to replace
  batchvirt.farm.slot_health:
    name: hv01-slot-03
    state: failed
    reason: "slurm: down"
    operation: "{{ farm_ops_lock.token }}"
  register: health

- name: Carry the count to the slot created in its place
  batchvirt.farm.slot_health:
    name: hv01-slot-03
    state: recorded
    failures: "{{ health.failures }}"

- name: The new slot is active, the count starts again
  batchvirt.farm.slot_health:
    name: hv01-slot-03
    state: healthy
"""

RETURN = r"""
failures:
  description: The failure record after the task (C(consecutive) is 0 when there is none).
  returned: always
  type: dict
  sample:
    consecutive: 3
    last_at: "2026-12-03T11:00:00Z"
    image: debian-12-worker/2026.12.1
    reason: "slurm: down"
    backoff_until: "2026-12-03T11:10:00Z"
backoff:
  description: Whether the slot is now in back-off (recycle.yml leaves it alone until RV(backoff_until)).
  returned: always
  type: bool
backoff_until:
  description: When the back-off ends (UTC ISO-8601), null when the slot is not in back-off.
  returned: always
  type: str
left_alone:
  description: Whether the slot was left alone because another live operation owns its drain.
  returned: always
  type: bool
end:
  description: How the VM was shut down when it entered back-off (C(how) V(acpi), V(destroyed) or V(stopped), C(seconds)).
  returned: when the slot entered back-off
  type: dict
console_tail:
  description: The last lines of the slot's console log (V(failed); empty when this host keeps none).
  returned: always
  type: list
  elements: str
msg:
  description: What was done.
  returned: always
  type: str
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import FarmLibvirtError, connect
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_health import run_module


def main() -> None:
    module = FarmModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["failed", "recorded", "healthy"], "default": "failed"},
            "reason": {"type": "str", "default": ""},
            "failures": {"type": "dict"},
            "operation": {"type": "str", "default": "", "no_log": False},
            "backoff": {
                "type": "dict",
                "default": {},
                "options": {
                    "threshold": {"type": "int", "default": 3},
                    "base": {"type": "int", "default": 600},
                    "max": {"type": "int", "default": 86400},
                },
            },
            "stop_in_backoff": {"type": "bool", "default": True},
            "shutdown_timeout": {"type": "int", "default": 30},
            "console_lines": {"type": "int", "default": 15},
        },
        needs_libvirt=True,
        supports_check_mode=True,
        required_if=[("state", "recorded", ("failures",))],
    )
    try:
        result = run_module(connect, module.params, module.check_mode, module._diff)
    except FarmLibvirtError as exc:
        module.fail_from(exc, option="uri")
    except FarmError as exc:
        module.fail_from(exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
