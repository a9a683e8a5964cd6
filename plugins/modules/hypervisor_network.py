#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hypervisor_network
short_description: The libvirt network slots attach to
version_added: 0.1.0
description:
  - Defines, starts and marks for autostart a libvirt network for slots, or removes it.
  - V(nat) is a libvirt NAT network with its own bridge, host address and DHCP range.
  - V(bridge) attaches slots to an existing host bridge (which enslaves a physical NIC), so that
    slots get addresses on the site's network. The module does not create the host bridge, which
    belongs to the host's network configuration (rewriting it remotely can cut the very
    connection Ansible runs over).
  - User-mode networking (loopback port forwards) needs no libvirt network and is not handled here.
  - A definition that differs from the wanted one is replaced (the network is restarted).
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
    description: Network name.
    type: str
    required: true
  mode:
    description: V(nat) or V(bridge). Required with O(state=present).
    type: str
    choices: [nat, bridge]
  bridge:
    description:
      - For V(nat), the bridge device libvirt creates (at most 15 characters).
      - For V(bridge), the existing host bridge.
      - Required with O(state=present).
    type: str
  address:
    description: For V(nat), the host's address on the network with its prefix, for example V(192.168.150.1/24).
    type: str
  dhcp:
    description: For V(nat), whether libvirt hands out the network's other addresses by DHCP.
    type: bool
    default: true
  state:
    description: V(present) or V(absent).
    type: str
    choices: [present, absent]
    default: present
  active:
    description: Whether the network should be started.
    type: bool
    default: true
  autostart:
    description: Whether libvirt should start the network at boot.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: A NAT network for slots
  batchvirt.farm.hypervisor_network:
    name: batchvirt-slots
    mode: nat
    bridge: bvt-nat0
    address: 192.168.150.1/24

- name: Slots on the site network through the host bridge br0
  batchvirt.farm.hypervisor_network:
    name: batchvirt-slots
    mode: bridge
    bridge: br0
"""

RETURN = r"""
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, start, autostart]
xml:
  description: The network definition the module wants (with O(state=present)).
  returned: when O(state=present)
  type: str
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import run_network_module  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule, run_module  # noqa: E402


def main() -> None:
    module = FarmModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "mode": {"type": "str", "choices": ["nat", "bridge"]},
            "bridge": {"type": "str"},
            "address": {"type": "str"},
            "dhcp": {"type": "bool", "default": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "active": {"type": "bool", "default": True},
            "autostart": {"type": "bool", "default": True},
        },
        needs_libvirt=True,
        supports_check_mode=True,
        required_if=[("state", "present", ("mode", "bridge")), ("mode", "nat", ("address",))],
    )
    run_module(module, run_network_module, what="network " + str(module.params["name"]), name_farm_errors=True)


if __name__ == "__main__":
    main()
