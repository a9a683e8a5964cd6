#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: batch_node
short_description: Register, drain, resume or remove batch system nodes (Slurm, HTCondor)
version_added: 0.1.0
description:
  - Brings one batch node or a list of them to a state, asking the batch system for all of them
    with one bulk query (and one bulk query per poll while waiting), never one query per node.
  - V(drained) stops new jobs and lets running jobs end; this module never kills a job.
  - Run it where the batch system's client tools work (for Slurm, a host with C(scontrol),
    the cluster's C(slurm.conf) and its munge key, usually the controller).
  - HTCondor support uses C(condor_status), C(condor_drain) and C(condor_off); it has been tested
    against typical command output only, not against HTCondor daemons.
  - A drain made here is recorded by the batch system only, not in the slot's metadata (this module
    runs where the batch commands work and does not reach the hypervisors). The lifecycle plays
    first record who owns the drain with M(batchvirt.farm.slot_drain); a drain made with this module
    alone shows in the inventory without an owner and counts as an operator's drain.
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows each node's state before and after.
  idempotent:
    support: full
    details: Draining a node already draining with the same reason, or resuming a node that is not drained, changes nothing.
options:
  name:
    description:
      - The node name, or a list of node names (a slot's batch node name).
    type: list
    elements: str
    required: true
    aliases: [nodes]
  state:
    description:
      - V(present) makes the nodes known to the batch system; for Slurm, a node that is not known
        is created as a dynamic node (C(scontrol create), the controller needs C(MaxNodeCount)),
        and its address is updated when O(address) differs. HTCondor nodes join by themselves;
        V(present) then only checks.
      - V(drained) drains the nodes with O(reason); running jobs go on to their end.
      - V(resumed) lets drained (or down) nodes take jobs again.
      - V(absent) removes the nodes from the batch system; refused for a node with running jobs
        unless O(force=true).
    type: str
    choices: [present, drained, resumed, absent]
    default: present
  reason:
    description:
      - The drain reason recorded by the batch system (O(state=drained)).
      - A node already drained with another reason gets this one.
    type: str
    default: drained by batchvirt.farm
  system:
    description:
      - The batch system.
    type: str
    choices: [slurm, htcondor]
    default: slurm
  wait:
    description:
      - With O(state=drained), wait until no job runs on any of the nodes and they are drained.
      - With O(state=present), wait until every node has registered and is up.
      - With O(state=resumed), wait until every node is back in service (responding, not drained).
      - On timeout the task fails, lists the nodes still running jobs with their job counts, and
        leaves the nodes draining; nothing is killed.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait when O(wait=true).
    type: int
    default: 600
  poll_interval:
    description:
      - Seconds between two bulk queries while waiting.
    type: float
    default: 5
  force:
    description:
      - With O(state=absent), remove nodes even when jobs run on them.
    type: bool
    default: false
  address:
    description:
      - With O(state=present), the node's address (Slurm C(NodeAddr)).
    type: str
  features:
    description:
      - With O(state=present), the features of a node created here (for example the worker type).
      - With O(state=present) and O(system=slurm), also the features of a node Slurm knows already
        when they differ (available and active features together), for a static node re-created
        as another worker type. Slurm keeps them until C(slurmctld) re-reads C(slurm.conf).
    type: list
    elements: str
    default: []
  cpus:
    description:
      - With O(state=present), the CPU count of a Slurm node created here.
    type: int
  memory:
    description:
      - With O(state=present), the memory (MiB) of a Slurm node created here.
    type: int
  slurm_conf:
    description:
      - Path of the C(slurm.conf) the Slurm commands read (passed as E(SLURM_CONF)).
      - Default is the Slurm commands' own default, C(/etc/slurm/slurm.conf).
    type: path
  bin_dir:
    description:
      - Directory of the batch system's commands, when they are not on E(PATH).
    type: path
  pool:
    description:
      - HTCondor central manager to query (C(-pool)); default is the local configuration's.
    type: str
notes:
  - For Slurm the bulk query is C(sinfo --json) (or C(scontrol -o -F show node) where the openapi
    plugins are missing) plus C(squeue) only when a node is busy.
seealso:
  - module: batchvirt.farm.slot_drain
    description: Record which operation owns a slot's drain in its metadata.
  - name: batchvirt.farm batch documentation
    description: Adapters, controller and client roles, self-registration of VMs.
    link: https://github.com/batchvirt/farm/blob/main/docs/batch.md
"""

EXAMPLES = r"""
- name: Drain two slots before a kernel update, waiting up to 2 h for their jobs
  batchvirt.farm.batch_node:
    name: [slot-hv01-03, slot-hv01-04]
    state: drained
    reason: kernel update 2024-06
    wait: true
    wait_timeout: 7200

- name: Let them take jobs again
  batchvirt.farm.batch_node:
    name: [slot-hv01-03, slot-hv01-04]
    state: resumed

- name: Wait until a new slot has registered itself
  batchvirt.farm.batch_node:
    name: slot-hv01-05
    state: present
    wait: true
    wait_timeout: 300

- name: Remove a drained dynamic node
  batchvirt.farm.batch_node:
    name: slot-hv01-03
    state: absent

- name: Drain an HTCondor execute node
  batchvirt.farm.batch_node:
    name: wn042.example.org
    system: htcondor
    state: drained
    reason: retiring
"""

RETURN = r"""
nodes:
  description:
    - Each node as the batch system sees it after the task, keyed by node name.
    - C(state) is one of V(absent), V(future), V(idle), V(allocated), V(mixed), V(completing),
      V(draining), V(drained), V(down), V(not_responding), V(unknown).
  returned: always
  type: dict
  sample:
    slot-hv01-03:
      name: slot-hv01-03
      state: draining
      raw_state: ALLOCATED+DRAIN
      reason: kernel update 2024-06
      registered: true
      drain: true
      jobs: 1
      job_ids: ["4711"]
      address: 127.0.0.1
      features: [worker-el9]
changed_nodes:
  description: The nodes this task acted on (or would act on in check mode).
  returned: always
  type: list
  elements: str
  sample: [slot-hv01-03]
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    DEFAULT_REASON,
    BatchError,
    get_adapter,
    manage_nodes,
    module_runner,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule


def main() -> None:
    module = FarmModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True, "aliases": ["nodes"]},
            "state": {"type": "str", "choices": ["present", "drained", "resumed", "absent"], "default": "present"},
            "reason": {"type": "str", "default": DEFAULT_REASON},
            "system": {"type": "str", "choices": ["slurm", "htcondor"], "default": "slurm"},
            "wait": {"type": "bool", "default": False},
            "wait_timeout": {"type": "int", "default": 600},
            "poll_interval": {"type": "float", "default": 5},
            "force": {"type": "bool", "default": False},
            "address": {"type": "str"},
            "features": {"type": "list", "elements": "str", "default": []},
            "cpus": {"type": "int"},
            "memory": {"type": "int"},
            "slurm_conf": {"type": "path"},
            "bin_dir": {"type": "path"},
            "pool": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    env = {"SLURM_CONF": p["slurm_conf"]} if p["slurm_conf"] else None
    options = {"runner": module_runner(module, env), "bin_dir": p["bin_dir"]}
    if p["system"] == "htcondor":
        options["pool"] = p["pool"]
    register = {k: p[k] for k in ("address", "features", "cpus", "memory") if p[k]}
    try:
        adapter = get_adapter(p["system"], **options)
        result = manage_nodes(
            adapter,
            p["name"],
            p["state"],
            reason=p["reason"],
            wait=p["wait"],
            wait_timeout=p["wait_timeout"],
            poll_interval=p["poll_interval"],
            force=p["force"],
            register_params=register,
            check_mode=module.check_mode,
        )
    except BatchError as exc:
        module.fail_from(exc, msg=exc.message, nodes=exc.nodes, command=exc.command, stderr=exc.stderr)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
