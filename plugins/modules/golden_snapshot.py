#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: golden_snapshot
short_description: Turn a golden node's disk into a new, versioned worker image
version_added: 0.1.0
description:
  - Shuts the golden VM down cleanly (ACPI power-off, never a hard stop), flattens its disk and
    backing chain into a compressed qcow2 file C(<identifier>-<version>.qcow2) with a
    description file C(<identifier>-<version>.json) (sha512, size, boot information), starts the
    golden VM again, and keeps only the newest O(keep) versions.
  - The disk must be sealed before the snapshot (cloud-init state, SSH host keys and machine-id
    removed); the P(batchvirt.farm.golden_node#role) role does that inside the guest just before
    calling this module.
  - Publish the new version in the site's signed image list with M(batchvirt.farm.image_list).
author:
  - batchvirt.farm maintainers (@batchvirt)
extends_documentation_fragment:
  - batchvirt.farm.libvirt
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
    details: Reports the version that would be written; nothing is shut down or written.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: With an explicit O(version) that already exists nothing changes; without it every run writes a new version.
options:
  name:
    description: Name of the golden VM's libvirt domain.
    type: str
    required: true
  identifier:
    description:
      - Image identifier of the worker type, for example V(worker-el9). Becomes part of file names, so
        only letters, digits, V(.), V(_) and V(-) are accepted.
    type: str
    required: true
  version:
    description:
      - Version to write. Default is C(YYYYMMDD.N), the first free serial of today (UTC).
      - An existing version is never overwritten; naming one makes the module report no change.
    type: str
  directory:
    description: Directory the image versions are written to (the publisher's image directory).
    type: path
    default: /var/lib/batchvirt/golden
  shutdown_timeout:
    description:
      - Seconds to wait for the guest to power off. On timeout the module fails and leaves the golden
        VM running; nothing is snapshotted.
    type: int
    default: 300
  compression:
    description: qcow2 compression of the new version (V(none) for the fastest write).
    type: str
    choices: [zstd, zlib, none]
    default: zstd
  keep:
    description: How many versions of O(identifier) to keep in O(directory); older ones are removed.
    type: int
    default: 3
  restart:
    description: Start the golden VM again after the snapshot if it was running before.
    type: bool
    default: true
  disk:
    description: Target device of the disk to snapshot (for example V(vda)); default is the first disk.
    type: str
  boot:
    description:
      - Boot information recorded in the description file, with the keys of the base image's C(boot)
        entry (C(modes), C(kernel), C(initrd), C(cmdline)). Default is the image's own bootloader.
    type: dict
"""

EXAMPLES = r"""
- name: Snapshot the EL9 golden node into a new worker image version
  batchvirt.farm.golden_snapshot:
    name: golden-worker-el9
    identifier: worker-el9
    keep: 5
  register: snap

- name: Publish it in the site's image list
  batchvirt.farm.image_list:
    path: /srv/images/site.list
    identifier: site-worker-images
    images:
      - identifier: "{{ snap.image.identifier }}"
        version: "{{ snap.image.version }}"
        path: "{{ snap.image.path }}"
        uri: "https://images.example.org/{{ snap.image.path | basename }}"
"""

RETURN = r"""
image:
  description: The image version written (or that would be written in check mode).
  returned: always
  type: dict
  contains:
    identifier: {description: Image identifier., type: str, returned: always}
    version: {description: Version written., type: str, returned: always}
    path: {description: Absolute path of the qcow2 file., type: str, returned: always}
    size: {description: Size in bytes (0 in check mode)., type: int, returned: always}
    sha512: {description: SHA-512 of the file (empty in check mode)., type: str, returned: always}
    description: {description: Path of the JSON description file., type: str, returned: always}
removed:
  description: Versions removed by the retention of O(keep).
  returned: always
  type: list
  elements: str
shut_down:
  description: Whether the golden VM was running and was shut down for the snapshot.
  returned: always
  type: bool
versions:
  description:
    - Every version of O(identifier) kept in O(directory), oldest first, ready to be handed to
      M(batchvirt.farm.image_list) (its sha512 and size need no second read of the files).
  returned: always
  type: list
  elements: dict
  contains:
    identifier: {description: Image identifier., type: str, returned: always}
    version: {description: Version., type: str, returned: always}
    path: {description: Absolute path of the qcow2 file., type: str, returned: always}
    size: {description: Size in bytes., type: int, returned: always}
    sha512: {description: SHA-512 of the file., type: str, returned: always}
    format: {description: Image format., type: str, returned: always}
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._golden import run_snapshot
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule, run_module


def main() -> None:
    module = FarmModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            identifier=dict(type="str", required=True),
            version=dict(type="str"),
            directory=dict(type="path", default="/var/lib/batchvirt/golden"),
            shutdown_timeout=dict(type="int", default=300),
            compression=dict(type="str", choices=["zstd", "zlib", "none"], default="zstd"),
            keep=dict(type="int", default=3),
            restart=dict(type="bool", default=True),
            disk=dict(type="str"),
            boot=dict(type="dict"),
        ),
        needs_libvirt=True,
        supports_check_mode=True,
    )
    run_module(module, lambda m: run_snapshot(m.params, m.check_mode, connect))


if __name__ == "__main__":
    main()
