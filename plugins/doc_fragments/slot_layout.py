# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot module's many-slots options: O(slots) (a list of slots) and O(layout) (a hypervisor's
slots laid out from a profile or a mix of worker types, with their addresses)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  slots:
    description:
      - Many slots in one call. Each entry is a slot name plus what differs from the module's
        top-level options, which are the defaults for every entry.
    type: list
    elements: dict
    suboptions:
      name:
        description: The slot name.
        type: str
        required: true
      vcpus:
        description: vCPUs of this slot.
        type: int
      memory_mib:
        description: Memory of this slot in MiB.
        type: int
      disk_size_gib:
        description: Overlay size of this slot in GiB.
        type: int
      network:
        description: Keys of O(network) that differ for this slot (for example C(address), C(mac), C(ssh_port)).
        type: dict
      worker_type:
        description: The worker type of this slot.
        type: str
      batch_node:
        description: The batch node name of this slot (default the slot name).
        type: str
      cloud_init:
        description:
          - The cloud-config of this slot (replaces O(cloud_init)).
          - Kept out of the logs (it may carry passwords); its string values are masked in the output too.
        type: dict
  layout:
    description:
      - Lay out this hypervisor's slots in one call, named C(<hypervisor>-slot-NN), from the host's
        capacity (its memory after the host reservation and the QEMU overhead per VM, and its CPUs).
      - Fails, without creating anything, when an explicit O(layout.count) does not fit.
    type: dict
    suboptions:
      count:
        description:
          - How many slots, or V(auto) for as many as fit (one per usable CPU within memory).
        type: str
        default: auto
      index:
        description:
          - This hypervisor's address block (0, 1, ...) when none is recorded yet; slot C(n) takes the pool
            address number I(block) * O(layout.stride) + C(n), so addresses never collide across hypervisors.
          - The first run with O(layout.address_pool) records the block in O(layout.block_record); from then on
            the recorded block is used and a different O(layout.index) only gives a warning, so a slot's
            address never moves when hypervisors are added, reordered or left out with C(--limit).
        type: int
        default: 0
      stride:
        description:
          - Addresses kept per hypervisor; the same for the whole farm, at least the slot count.
          - Refused when it differs from the stride recorded with the hypervisor's block (every address would move).
        type: int
        default: 32
      block_record:
        description:
          - The file on the host running the module where the hypervisor's address block is recorded (JSON).
        type: path
        default: /etc/batchvirt/slot-block.json
      address_pool:
        description: The site pool static addresses come from (bridge or libvirt network mode).
        type: dict
        suboptions:
          network:
            description: The IPv4 network, for example V(192.0.2.0/24).
            type: str
            required: true
          first:
            description: The first address to use (default the network's first host).
            type: str
          last:
            description: The last address to use (default the network's last host).
            type: str
          ranges:
            description:
              - The addresses to use instead of O(layout.address_pool.first) to O(layout.address_pool.last),
                as addresses, ranges V(192.0.2.10-192.0.2.99) or CIDRs inside O(layout.address_pool.network).
            type: list
            elements: str
          exclude:
            description:
              - Addresses, ranges or CIDRs never given to a slot (routers, printers, reserved hosts).
              - Changing it moves the addresses after the excluded ones; existing slots refuse the move,
                so exclude only addresses beyond the ones in use, or recreate the slots.
            type: list
            elements: str
          gateway:
            description: The default gateway (never given to a slot).
            type: str
          dns:
            description: Name servers.
            type: list
            elements: str
      ssh_port_base:
        description: User-mode networking only; slot C(n) forwards 127.0.0.1:(O(layout.ssh_port_base) + n - 1) to its SSH port.
        type: int
      reserved_memory_mib:
        description: Memory kept for the host (default 2048).
        type: int
      reserved_cpus:
        description: CPUs kept for the host (default 1).
        type: int
      qemu_overhead_mib:
        description: Host memory per VM beyond its guest memory (default 200, plus the 128 MiB TCG cache for V(qemu) domains).
        type: int
      overcommit_cpu:
        description: vCPUs per usable host CPU.
        type: float
        default: 1.0
      mix:
        description:
          - A mix of worker types on this hypervisor instead of one O(layout.count) of one size. The parts
            take the slot numbers in order (the first part's slots are C(-slot-01) on), each planned within
            what the parts before it left of the host's capacity.
          - Changing a mix on a running farm re-types nothing in place. A slot whose type, size or image
            differs keeps its definition until it is re-created (recycling does that with its own type).
        type: list
        elements: dict
        suboptions:
          worker_type:
            description: The worker type of these slots (recorded in their metadata).
            type: str
            required: true
          count:
            description: How many slots of the type, or V(auto) for as many as fit in what is left.
            type: str
            default: auto
          vcpus:
            description: vCPUs of each slot of the type (default O(vcpus)).
            type: int
          memory_mib:
            description: Memory of each slot of the type (default O(memory_mib)).
            type: int
          disk_size_gib:
            description: Overlay size of each slot of the type (default O(disk_size_gib)).
            type: int
          image:
            description: The staged image of the type (C(identifier), C(version)); default O(image).
            type: dict
          features:
            description: The batch features of the type's slots (replace O(batch.features)); put the type's name first.
            type: list
            elements: str
"""
