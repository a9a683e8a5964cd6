#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hypervisor_pool
short_description: A libvirt storage pool for images or slot disks
version_added: 0.1.0
description:
  - Defines, starts and marks for autostart a libvirt storage pool of type V(dir) (a directory)
    or V(logical) (an LVM volume group), or removes its definition.
  - For a V(dir) pool the path is checked first. The pool directory and its parent are created
    when missing; a path further from an existing directory is refused (a filesystem that is not
    mounted, or a typo), and so is a filesystem with less than O(min_free_mib) MiB available.
  - For a V(logical) pool a missing volume group is created on O(source_devices) with
    C(pvcreate) and C(vgcreate); an existing group is used as it is.
  - Removing a pool (O(state=absent)) removes only its definition, never its files or volumes.
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
    support: full
options:
  name:
    description: Pool name.
    type: str
    required: true
  type:
    description: V(dir) for a directory, V(logical) for an LVM volume group.
    type: str
    choices: [dir, logical]
    default: dir
  path:
    description:
      - The pool directory for a V(dir) pool (required then).
      - Ignored for a V(logical) pool, whose path is C(/dev/VG).
    type: path
  source_name:
    description: The volume group of a V(logical) pool (required then).
    type: str
  source_devices:
    description: Block devices to create the volume group on when it does not exist yet.
    type: list
    elements: path
    default: []
  min_free_mib:
    description: Refuse a V(dir) pool whose filesystem has less than this many MiB available. V(0) skips the check.
    type: int
    default: 0
  state:
    description: V(present) defines the pool, V(absent) removes its definition.
    type: str
    choices: [present, absent]
    default: present
  active:
    description: Whether the pool should be started.
    type: bool
    default: true
  autostart:
    description: Whether libvirt should start the pool at boot.
    type: bool
    default: true
notes:
  - The V(logical) type needs device-mapper and the LVM tools; it is not exercised by the
    collection's integration tests (their machine has no device-mapper), only its commands and
    XML are unit-tested.
"""

EXAMPLES = r"""
- name: The image cache pool
  batchvirt.farm.hypervisor_pool:
    name: batchvirt-images
    path: /var/lib/batchvirt/images
    min_free_mib: 10240

- name: Slot disks on an LVM volume group built on two NVMe drives
  batchvirt.farm.hypervisor_pool:
    name: batchvirt-slots
    type: logical
    source_name: batchvirt
    source_devices: [/dev/nvme0n1, /dev/nvme1n1]
"""

RETURN = r"""
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [mkdir /var/lib/batchvirt, mkdir /var/lib/batchvirt/images, define, start, autostart]
pool:
  description: The pool after the change (not in check mode, not when removed).
  returned: when O(state=present) and not in check mode
  type: dict
  contains:
    name:
      description: Pool name.
      type: str
    type:
      description: Pool type.
      type: str
    path:
      description: Target path.
      type: str
    state:
      description: libvirt's pool state (V(running), V(inactive), ...).
      type: str
    active:
      description: Whether the pool is started.
      type: bool
    autostart:
      description: Whether libvirt starts it at boot.
      type: bool
    capacity_mib:
      description: Size of the underlying storage in MiB.
      type: int
    allocation_mib:
      description: Space allocated in MiB.
      type: int
    available_mib:
      description: Free space in MiB.
      type: int
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import run_pool_module  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule, run_module  # noqa: E402


def main() -> None:
    module = FarmModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "type": {"type": "str", "choices": ["dir", "logical"], "default": "dir"},
            "path": {"type": "path"},
            "source_name": {"type": "str"},
            "source_devices": {"type": "list", "elements": "path", "default": []},
            "min_free_mib": {"type": "int", "default": 0},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "active": {"type": "bool", "default": True},
            "autostart": {"type": "bool", "default": True},
        },
        needs_libvirt=True,
        supports_check_mode=True,
        required_if=[("type", "dir", ("path",)), ("type", "logical", ("source_name",))],
    )
    run_module(module, run_pool_module, what="pool " + str(module.params["name"]), name_farm_errors=True)


if __name__ == "__main__":
    main()
