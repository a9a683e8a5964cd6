#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slot_drain
short_description: Record which operation owns a slot's drain, or clear it
version_added: 0.1.0
description:
  - Records in a slot's metadata a drain request with its owner (V(rolling_update), V(recycle),
    V(rebalance) or V(operator)), the reason, the time, the run that asked (O(operation)) and until
    when that ownership holds (O(expires_at)), or clears the drain request again.
  - A slot whose drain is owned by a live rolling update or rebalance (another O(operation), O(expires_at)
    not passed) is left alone; O(state=requested) does not claim it and reports the owner (or fails,
    O(on_owned=fail)). The check reads the metadata from libvirt at the time of the task.
  - The batch system is not asked here; drain the node with M(batchvirt.farm.batch_node). The
    C(slot) module's O(batchvirt.farm.slot#module:state=draining) records a drain owned by V(operator).
  - Metadata with a drain owner is written with schema 2; other metadata stays schema 1.
  - When a claim drains a slot before its planned drain time, C($MACHINEFEATURES/shutdowntime)
    inside the running VM moves to the new end (the request time plus the job walltime the slot's
    deadline leaves after its drain time, never later than the deadline); O(state=cleared) moves it
    back to the deadline. The file is rewritten through the QEMU guest agent (the slot's
    C(org.qemu.guest_agent.0) channel, C(qemu-guest-agent) in the image), best effort within
    O(agent_timeout); the result says per slot whether the guest got it (RV(slots[].machinefeatures)),
    and a guest without the agent never fails the task.
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
    support: full
options:
  name:
    description: The slot name, or a list of them.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(requested) records the drain request with its owner.
      - V(cleared) removes the drain request (the slot takes jobs again, for example after a patch);
        only the O(operation) that owns it may, unless O(force=true).
    type: str
    choices: [requested, cleared]
    default: requested
  owner:
    description: Who asks for the drain.
    type: str
    choices: [rolling_update, recycle, rebalance, operator]
    default: operator
  operation:
    description: The run that asks (the C(token) of its M(batchvirt.farm.operations_lock)).
    type: str
    default: ""
  reason:
    description: Why the slot is drained (required with O(state=requested)).
    type: str
    default: ""
  expires_at:
    description:
      - When the ownership lapses if the run never comes back, UTC ISO-8601 (the operations lock's
        C(expires_at)). Empty means it never lapses by itself.
    type: str
    default: ""
  on_owned:
    description:
      - What happens when a slot is owned by another live operation.
      - V(report) leaves it alone and returns it in RV(owned) (the task succeeds); V(fail) fails the task.
    type: str
    choices: [report, fail]
    default: report
  force:
    description: Claim or clear whoever owns the slot (an operator who knows that operation is gone).
    type: bool
    default: false
  machine_features_path:
    description:
      - The C($MACHINEFEATURES) directory inside the VMs (the C(slot) module's
        O(batchvirt.farm.slot#module:machine_features.path)). Only an existing C(shutdowntime) file
        there is rewritten.
    type: str
    default: /etc/machinefeatures
  machine_features_update:
    description: Move C(shutdowntime) inside the VM when the drain starts early or is cleared.
    type: bool
    default: true
  agent_timeout:
    description: Seconds each guest agent command may take before the guest is reported as V(no_agent).
    type: int
    default: 10
notes:
  - E(BATCHVIRT_FARM_NOW) replaces the clock, as for the C(slot) module.
seealso:
  - name: batchvirt.farm operations documentation
    description: Owners, the operations lock, and what a second play does.
    link: https://github.com/batchvirt/farm/blob/main/docs/operations.md
"""

EXAMPLES = r"""
- name: A rolling update claims the slot before it drains it in the batch system
  batchvirt.farm.slot_drain:
    name: hv01-slot-03
    owner: rolling_update
    operation: "{{ farm_ops_lock.token }}"
    reason: DSA-5999 kernel
    expires_at: "{{ farm_ops_lock.expires_at }}"
  register: claim

- name: After the patch, the slot takes jobs again
  batchvirt.farm.slot_drain:
    name: hv01-slot-03
    state: cleared
    owner: rolling_update
    operation: "{{ farm_ops_lock.token }}"
"""

RETURN = r"""
slots:
  description: One entry per slot.
  returned: always
  type: list
  elements: dict
  sample:
    - name: hv01-slot-03
      claimed: true
      changed: true
      msg: drain recorded
      machinefeatures: updated
      shutdowntime: 1796371200
      drain:
        requested: true
        reason: DSA-5999 kernel
        requested_at: "2026-12-03T08:00:00Z"
        owner: rolling_update
        operation: 3f1c2a9d5be84f0e9c1d0e6b7a8f9c10
        until: "2026-12-04T09:00:00Z"
  contains:
    machinefeatures:
      description:
        - What happened to C($MACHINEFEATURES/shutdowntime) inside the VM. V(updated) the guest agent
          rewrote it; V(unchanged) it does not move (no early drain, or a release that changed
          nothing); V(skipped) it would move (check mode, O(machine_features_update=false));
          V(not_running) the domain is shut off; V(no_agent) the domain has no agent channel or no
          agent answers; V(no_file) the VM has no such file (machine features not published there);
          V(failed) followed by the agent's error otherwise.
      type: str
      returned: always
    shutdowntime:
      description: The time the VM's C(shutdowntime) should show (Unix seconds) when it moves, else V(null).
      type: int
      returned: always
claimed:
  description: Whether every named slot is now owned by this request (V(requested)).
  returned: always
  type: bool
owned:
  description: The slots left alone because another live operation owns them, with their drain record.
  returned: always
  type: dict
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import FarmLibvirtError, connect
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_claim import run_module


def main() -> None:
    module = FarmModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["requested", "cleared"], "default": "requested"},
            "owner": {
                "type": "str",
                "choices": ["rolling_update", "recycle", "rebalance", "operator"],
                "default": "operator",
            },
            "operation": {"type": "str", "default": "", "no_log": False},
            "reason": {"type": "str", "default": ""},
            "expires_at": {"type": "str", "default": ""},
            "on_owned": {"type": "str", "choices": ["report", "fail"], "default": "report"},
            "force": {"type": "bool", "default": False},
            "machine_features_path": {"type": "str", "default": "/etc/machinefeatures"},
            "machine_features_update": {"type": "bool", "default": True},
            "agent_timeout": {"type": "int", "default": 10},
        },
        needs_libvirt=True,
        supports_check_mode=True,
    )
    try:
        result = run_module(connect, module.params, module.check_mode, module._diff)
    except FarmLibvirtError as exc:
        module.fail_from(exc, option="uri")
    except FarmError as exc:
        module.fail_from(exc)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
