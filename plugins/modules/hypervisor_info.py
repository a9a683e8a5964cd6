#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hypervisor_info
short_description: What a hypervisor can hold, from libvirt
version_added: 0.1.0
description:
  - Reports a hypervisor's CPUs and memory, the memory and CPUs kept for the host (the
    reservation), what existing domains already take, the free capacity, the supported domain
    types (V(kvm), V(qemu)) and the default one, the storage pools with their free space, the
    libvirt networks and the collection's slots present with their lifecycle state.
  - The capacity model counts, for every VM, its guest memory plus the QEMU process overhead
    (O(qemu_overhead_mib)); a domain counts against the host when it runs, is set to autostart, or
    is one of the collection's slots (a stopped slot comes back).
  - With O(plan) it also says whether a planned number of VMs fits, and why not, for example that
    a 16 GiB host with 2 GiB reserved cannot run eight 2 GiB VMs.
  - The reservation comes from O(reserved_memory_mib) and O(reserved_cpus) when given, else from
    the file the P(batchvirt.farm.hypervisor#role) role writes (O(config_path)), else from the defaults
    (2048 MiB, 1 CPU).
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - batchvirt.farm.libvirt
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The module only reads; running it again returns the same unless the hypervisor changed.
options:
  config_path:
    description:
      - The JSON file in which the P(batchvirt.farm.hypervisor#role) role records the host reservation,
        the network mode and the pools.
      - A missing file is not an error; the defaults apply.
    type: path
    default: /etc/batchvirt/hypervisor.json
  reserved_memory_mib:
    description:
      - Memory in MiB kept for the host, overriding the recorded reservation.
    type: int
  reserved_cpus:
    description:
      - CPUs kept for the host, overriding the recorded reservation.
    type: int
  qemu_overhead_mib:
    description:
      - Host memory in MiB one VM costs beyond its guest memory (the QEMU process).
      - Defaults to the recorded value or 200 MiB, plus 128 MiB (the translation cache) when the
        default domain type is V(qemu) (software emulation).
    type: int
  overcommit_cpu:
    description:
      - How many vCPUs may share one usable host CPU. V(1.0) means no CPU overcommit, the rule
        for batch workers.
    type: float
    default: 1.0
  plan:
    description:
      - A planned layout to check against the free capacity.
    type: dict
    suboptions:
      count:
        description: Number of new VMs.
        type: int
        required: true
      memory_mib:
        description: Guest memory of each VM in MiB.
        type: int
        required: true
      vcpus:
        description: vCPUs of each VM.
        type: int
        default: 1
notes:
  - The module only reads; it never changes the hypervisor.
seealso:
  - name: Hypervisors (batchvirt.farm documentation)
    description: Networks, storage and the capacity model.
    link: https://github.com/batchvirt/farm/blob/main/docs/hypervisors.md
"""

EXAMPLES = r"""
- name: Read what the hypervisor can hold
  batchvirt.farm.hypervisor_info:
  register: hv

- name: Show the free capacity
  ansible.builtin.debug:
    msg: "{{ hv.capacity.free_memory_mib }} MiB and {{ hv.capacity.free_vcpus }} vCPUs free"

- name: Check that eight 2 GiB workers fit before defining them
  batchvirt.farm.hypervisor_info:
    plan:
      count: 8
      memory_mib: 2048
      vcpus: 1
  register: hv_plan
  failed_when: not hv_plan.plan.fits
"""

RETURN = r"""
hostname:
  description: The hypervisor's host name as libvirt reports it.
  returned: success
  type: str
  sample: hv01.example.org
cpu_model:
  description: The host CPU architecture as libvirt reports it.
  returned: success
  type: str
  sample: x86_64
cpus:
  description: Online host CPUs.
  returned: success
  type: int
  sample: 32
memory_mib:
  description: Host memory in MiB (MemTotal).
  returned: success
  type: int
  sample: 257000
reservation:
  description: Memory and CPUs kept for the host.
  returned: success
  type: dict
  contains:
    memory_mib:
      description: Memory kept for the host in MiB.
      type: int
      sample: 2048
    cpus:
      description: CPUs kept for the host.
      type: int
      sample: 1
    source:
      description: Where the values came from, V(option), V(config) or V(default) (two values separated by V(/) when they differ).
      type: str
      sample: config
domain_types:
  description: Domain types the host offers for x86_64 guests.
  returned: success
  type: list
  elements: str
  sample: [qemu, kvm]
default_domain_type:
  description: V(kvm) where the CPU has hardware virtualisation, else V(qemu) (software emulation).
  returned: success
  type: str
  sample: kvm
capacity:
  description: The capacity model's figures.
  returned: success
  type: dict
  contains:
    cpus:
      description: Host CPUs.
      type: int
    memory_mib:
      description: Host memory in MiB.
      type: int
    reserved_cpus:
      description: CPUs kept for the host.
      type: int
    reserved_memory_mib:
      description: Memory kept for the host in MiB.
      type: int
    qemu_overhead_mib:
      description: Memory one VM costs beyond its guest memory, in MiB.
      type: int
      sample: 200
    usable_cpus:
      description: Host CPUs minus the reserved ones.
      type: int
    usable_memory_mib:
      description: Host memory minus the reservation, in MiB.
      type: int
    used_memory_mib:
      description: Memory the counted domains take, each with its QEMU overhead, in MiB.
      type: int
    used_vcpus:
      description: vCPUs of the counted domains.
      type: int
    counted_domains:
      description: Number of domains that count against the host (running, autostart or slots).
      type: int
    free_memory_mib:
      description: Memory left for new VMs in MiB (negative when the host is overcommitted).
      type: int
    free_vcpus:
      description: vCPUs left for new VMs at O(overcommit_cpu).
      type: float
    overcommit_cpu:
      description: The CPU overcommit ratio used.
      type: float
domains:
  description: Every libvirt domain with what it takes.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    memory_mib:
      description: Maximum memory in MiB.
      type: int
    vcpus:
      description: Number of vCPUs.
      type: int
    active:
      description: Whether the domain runs.
      type: bool
    autostart:
      description: Whether libvirt starts it at boot.
      type: bool
    slot:
      description: Whether it is one of the collection's slots.
      type: bool
    counted:
      description: Whether it counts against the host's capacity.
      type: bool
pools:
  description: libvirt storage pools.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Pool name.
      type: str
      sample: batchvirt-images
    type:
      description: Pool type (V(dir), V(logical), ...).
      type: str
    path:
      description: Target path.
      type: str
      sample: /var/lib/batchvirt/images
    state:
      description: V(running), V(inactive), V(building), V(degraded) or V(inaccessible).
      type: str
    active:
      description: Whether the pool is started.
      type: bool
    autostart:
      description: Whether libvirt starts it at boot.
      type: bool
    capacity_mib:
      description: Size of the underlying storage in MiB (0 when inactive).
      type: int
    allocation_mib:
      description: Space allocated in MiB.
      type: int
    available_mib:
      description: Free space in MiB.
      type: int
networks:
  description: libvirt networks.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Network name.
      type: str
    mode:
      description: Forward mode (V(nat), V(bridge), V(isolated), ...).
      type: str
    bridge:
      description: Bridge device.
      type: str
    active:
      description: Whether the network is started.
      type: bool
    autostart:
      description: Whether libvirt starts it at boot.
      type: bool
network_mode:
  description: The slot network mode the hypervisor role recorded (V(bridge), V(nat), V(user)); empty when unknown.
  returned: success
  type: str
  sample: user
slots:
  description: The collection's slots on this hypervisor.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Slot name.
      type: str
    domain:
      description: Domain name.
      type: str
    state:
      description: The domain's run state (V(running), V(shutoff), ...).
      type: str
    lifecycle:
      description: The derived lifecycle state without the batch system's view (null when the metadata is unreadable).
      type: str
      sample: active
    image:
      description: Image identifier.
      type: str
    image_version:
      description: Image version.
      type: str
    drain_at:
      description: When the slot starts draining (UTC ISO-8601).
      type: str
    deadline:
      description: When the slot must be gone (UTC ISO-8601).
      type: str
    error:
      description: Why the metadata could not be read, when it could not.
      type: str
slots_by_lifecycle:
  description: How many slots are in each lifecycle state (V(unreadable) for slots whose metadata cannot be read).
  returned: success
  type: dict
  sample: {"active": 6, "expiring": 1, "stopped": 1}
config:
  description: The content of O(config_path) (empty when absent).
  returned: success
  type: dict
plan:
  description: The verdict on O(plan).
  returned: when O(plan) is given
  type: dict
  contains:
    fits:
      description: Whether the planned VMs fit.
      type: bool
    count:
      description: Planned number of VMs.
      type: int
    memory_mib:
      description: Guest memory of each.
      type: int
    vcpus:
      description: vCPUs of each.
      type: int
    max_vms:
      description: How many such VMs fit.
      type: int
    memory_needed_mib:
      description: Memory the plan needs including the QEMU overhead, in MiB.
      type: int
    memory_free_mib:
      description: Free memory in MiB.
      type: int
    vcpus_needed:
      description: vCPUs the plan needs.
      type: int
    vcpus_free:
      description: Free vCPUs.
      type: float
    reasons:
      description: Why the plan does not fit (empty when it fits).
      type: list
      elements: str
    message:
      description: One sentence for humans.
      type: str
      sample: "memory: 8 VM(s) x (2048 MiB + 200 MiB QEMU overhead) = 17984 MiB, but only 14336 MiB are free (...)"
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor_info import run_info_module  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule, run_module  # noqa: E402


def main() -> None:
    module = FarmModule(
        argument_spec={
            "config_path": {"type": "path", "default": "/etc/batchvirt/hypervisor.json"},
            "reserved_memory_mib": {"type": "int"},
            "reserved_cpus": {"type": "int"},
            "qemu_overhead_mib": {"type": "int"},
            "overcommit_cpu": {"type": "float", "default": 1.0},
            "plan": {
                "type": "dict",
                "options": {
                    "count": {"type": "int", "required": True},
                    "memory_mib": {"type": "int", "required": True},
                    "vcpus": {"type": "int", "default": 1},
                },
            },
        },
        needs_libvirt=True,
        supports_check_mode=True,
    )
    run_module(module, run_info_module, what="hypervisor_info")


if __name__ == "__main__":
    main()
