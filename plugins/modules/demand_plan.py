#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: demand_plan
short_description: Plan which worker types the farm should run, from the batch queue
version_added: 0.2.0
description:
  - Reads the batch system's pending jobs with ONE command (Slurm C(squeue), HTCondor C(condor_q)),
    takes the farm as given (the slots with their worker type and lifecycle state, as the
    C(batchvirt.farm.slots) inventory gives them, and the places of each hypervisor), and returns a
    plan as data; it changes nothing.
  - The plan says which idle slots to drain so that they can be re-created as another worker type,
    which drained, expired, stopped or empty places to fill with which type, and why.
  - Targets per type never exceed the places, never go below a type's O(worker_types[].min_slots) or
    above its O(worker_types[].max_slots); when demand exceeds the places they are shared by
    O(worker_types[].weight). Re-typing is damped by O(policy).
  - A job asks for a worker type with its features (Slurm C(sbatch --constraint=<type>)); jobs
    without a constraint are served by any type and do not steer the plan.
  - See the collection's C(docs/demand.md) for the rules and a worked example.
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
    details: The module never changes anything; check mode gives the same plan.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: It only reads; C(changed) is always false.
options:
  worker_types:
    description:
      - The worker types of the farm, declared once. The first one is the default type of
        hypervisors that name none.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The type's name; also its first batch feature (letters, digits, C(-), C(_), C(.)).
        type: str
        required: true
      image:
        description: The image identifier the type's slots boot from.
        type: str
        required: true
      image_version:
        description: V(newest), or one pinned version of O(worker_types[].image).
        type: str
        default: newest
      vcpus:
        description: vCPUs of one slot; pending cores are turned into slots with it.
        type: int
        default: 1
      memory_mib:
        description: Guest memory of one slot, in MiB.
        type: int
        default: 2048
      disk_gib:
        description: Disk of one slot, in GiB.
        type: int
        default: 20
      features:
        description: Further batch features of the type's nodes (its name is always one).
        type: list
        elements: str
        default: []
      partition:
        description: The batch partition of the type's nodes; a type with one serves only jobs of that partition.
        type: str
        default: ""
      lifetime:
        description: Seconds a slot of this type lives before it drains.
        type: int
        default: 86400
      lifetime_spread:
        description: Seconds by which a slot's drain is brought forward (spread), less than O(worker_types[].lifetime).
        type: int
        default: 0
      max_job_walltime:
        description: The longest job walltime, in seconds (the slot's deadline after its drain).
        type: int
        default: 0
      min_slots:
        description: The fewest slots of this type the farm keeps, whatever the demand.
        type: int
        default: 0
      max_slots:
        description: The most slots of this type; no maximum but the places when unset.
        type: int
      weight:
        description: The type's share weight when demand exceeds the places.
        type: float
        default: 1.0
  slots:
    description:
      - The farm's slots. Each item is either the hostvars of a slot of the C(batchvirt.farm.slots)
        inventory (C(farm_slot), C(farm_hypervisor), C(farm_lifecycle), C(farm_batch_jobs)) or a
        mapping with C(name), C(hypervisor), C(worker_type), C(state), C(jobs), C(created_at).
      - A slot without a worker type is of its hypervisor's default type. A slot whose job count is
        unknown (no C(farm_batch_jobs)) is never drained.
    type: list
    elements: dict
    default: []
  hypervisors:
    description:
      - The hypervisors with C(name), C(places) (how many slots each holds) and optionally
        C(default_type). A hypervisor named only by its slots has as many places as slots.
    type: list
    elements: dict
    default: []
  default_type:
    description: The default type of hypervisors that name none (default the first declared type).
    type: str
  policy:
    description: The damping knobs.
    type: dict
    default: {}
    suboptions:
      max_retypes_per_run:
        description: At most this many slots are drained for re-typing per run.
        type: int
        default: 2
      hold_seconds:
        description: Pending jobs younger than this do not count (a burst that the running slots clear goes unanswered).
        type: float
        default: 600
      min_slot_age_seconds:
        description:
          - Slots younger than this are never drained for re-typing.
          - V(0) turns the age check off, also for a slot whose creation time is ahead of the controller's clock.
        type: float
        default: 3600
  queue:
    description:
      - The pending jobs as data (C(job_id), C(constraint), C(partition), C(cores), C(submitted_at)),
        instead of reading the batch system. For tests and what-if questions.
    type: list
    elements: dict
  now:
    description: The time the plan is made for (ISO-8601 UTC); default the current time.
    type: str
  system:
    description: The batch system to read the queue from.
    type: str
    choices: [slurm, htcondor]
    default: slurm
  slurm_conf:
    description: Path of the C(slurm.conf) the Slurm commands read (passed as E(SLURM_CONF)).
    type: path
  bin_dir:
    description: Directory of the batch system's commands, when they are not on E(PATH).
    type: path
  pool:
    description: HTCondor central manager to query (C(-pool)).
    type: str
notes:
  - Run it where the batch system's client tools work (for Slurm, a host with C(squeue), the
    cluster's C(slurm.conf) and its munge key, usually the controller).
  - HTCondor jobs ask for a type with C(+FarmWorkerType = "<type>") or with
    C(stringListMember("<type>", FARM_FEATURES)) in their requirements; HTCondor support is tested
    against typical C(condor_q) output only.
seealso:
  - module: batchvirt.farm.batch_node
  - name: batchvirt.farm demand documentation
    description: The rules of the plan, the policy knobs and a worked example.
    link: https://github.com/batchvirt/farm/blob/main/docs/demand.md
"""

EXAMPLES = r"""
- name: Plan from the queue and the farm the slots inventory shows
  batchvirt.farm.demand_plan:
    worker_types:
      - {name: el9, image: worker-el9, vcpus: 2, memory_mib: 4096, min_slots: 4}
      - {name: el8, image: worker-el8, vcpus: 2, memory_mib: 4096, max_slots: 16, weight: 0.5}
    slots: "{{ groups['all'] | map('extract', hostvars) | selectattr('farm_slot', 'defined') | list }}"
    hypervisors:
      - {name: hv01, places: 8, default_type: el9}
      - {name: hv02, places: 8, default_type: el9}
    policy:
      max_retypes_per_run: 2
      hold_seconds: 600
      min_slot_age_seconds: 3600
  register: plan
  delegate_to: slurm-controller

- name: Show what would be drained
  ansible.builtin.debug:
    msg: "{{ plan.drain | map(attribute='slot') | list }}"
"""

RETURN = r"""
targets:
  description: Per type, its target, serving and busy slots, count after the plan, need, counted pending jobs and cores.
  returned: success
  type: dict
  sample:
    el9:
      target: 6
      serving: 8
      busy: 5
      after_plan: 8
      need: 5
      pending_jobs: 0
      pending_cores: 0
      young_jobs: 0
      min_slots: 4
      max_slots: null
      weight: 1.0
drain:
  description: Idle slots to drain for re-typing, with their type, the type they make room for (C(for)) and why.
  returned: success
  type: list
  elements: dict
  sample: [{slot: slot-hv01-03, hypervisor: hv01, type: el9, for: el8, reason: "idle for re-typing: ..."}]
fill:
  description:
    - The places to fill. C(slot) names a drained, expired or stopped slot to re-create, or is empty for
      an empty place on C(hypervisor); C(type) is the type to create, C(previous_type) the place's type.
  returned: success
  type: list
  elements: dict
  sample: [{slot: slot-hv02-01, hypervisor: hv02, type: el8, previous_type: el9, reason: "el8 has 0 slot(s) ..."}]
capacity:
  description: Places, slots, fillable places, draining slots and places no type needs (C(unassigned)).
  returned: success
  type: dict
queue:
  description: Pending job counts (C(pending), C(eligible), C(counted), C(young), C(untyped), C(unmatched)).
  returned: success
  type: dict
notes:
  description: Why more was not done (a limit reached, slots too young, jobs no type serves).
  returned: success
  type: list
  elements: str
retypes:
  description: The number of slots the plan drains for re-typing.
  returned: success
  type: int
commands_run:
  description: Commands run against the batch system (1, or 0 with O(queue)).
  returned: success
  type: int
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import BatchError, get_adapter, module_runner
from ansible_collections.batchvirt.farm.plugins.module_utils._demand import plan_from_params
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule

_TYPE_SPEC = {
    "name": {"type": "str", "required": True},
    "image": {"type": "str", "required": True},
    "image_version": {"type": "str", "default": "newest"},
    "vcpus": {"type": "int", "default": 1},
    "memory_mib": {"type": "int", "default": 2048},
    "disk_gib": {"type": "int", "default": 20},
    "features": {"type": "list", "elements": "str", "default": []},
    "partition": {"type": "str", "default": ""},
    "lifetime": {"type": "int", "default": 86400},
    "lifetime_spread": {"type": "int", "default": 0},
    "max_job_walltime": {"type": "int", "default": 0},
    "min_slots": {"type": "int", "default": 0},
    "max_slots": {"type": "int"},
    "weight": {"type": "float", "default": 1.0},
}
_POLICY_SPEC = {
    "max_retypes_per_run": {"type": "int", "default": 2},
    "hold_seconds": {"type": "float", "default": 600},
    "min_slot_age_seconds": {"type": "float", "default": 3600},
}


def main() -> None:
    module = FarmModule(
        argument_spec={
            "worker_types": {"type": "list", "elements": "dict", "required": True, "options": _TYPE_SPEC},
            "slots": {"type": "list", "elements": "dict", "default": []},
            "hypervisors": {"type": "list", "elements": "dict", "default": []},
            "default_type": {"type": "str"},
            "policy": {"type": "dict", "default": {}, "options": _POLICY_SPEC},
            "queue": {"type": "list", "elements": "dict"},
            "now": {"type": "str"},
            "system": {"type": "str", "choices": ["slurm", "htcondor"], "default": "slurm"},
            "slurm_conf": {"type": "path"},
            "bin_dir": {"type": "path"},
            "pool": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        adapter = None
        if p["queue"] is None:
            env = {"SLURM_CONF": p["slurm_conf"]} if p["slurm_conf"] else None
            options = {"runner": module_runner(module, env), "bin_dir": p["bin_dir"]}
            if p["system"] == "htcondor":
                options["pool"] = p["pool"]
            adapter = get_adapter(p["system"], **options)
        result = plan_from_params(p, adapter)
    except BatchError as exc:
        module.fail_from(exc, msg=exc.message, command=exc.command, stderr=exc.stderr)
    except FarmError as exc:
        module.fail_from(exc, **exc.to_result())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
