# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by every module that talks to libvirt (pairs with LIBVIRT_ARGUMENT_SPEC)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI of the hypervisor.
      - Use V(qemu:///system) on the hypervisor itself; a remote hypervisor can be reached with
        for example V(qemu+ssh://root@hv01.example.org/system), but modules normally run on the
        hypervisor (delegate or target it in the play).
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (python3-libvirt) on the host the module runs on
"""
