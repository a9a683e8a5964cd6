# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only module: returns the facts it is given, to play a host of another OS family."""

from __future__ import annotations

DOCUMENTATION = r"""
module: bvt_fake_facts
short_description: Test helper that sets facts
description: Returns O(facts) as C(ansible_facts) (tests only).
author: batchvirt.farm contributors (@batchvirt)
options:
  facts:
    description: The facts to set.
    type: dict
    required: true
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - after the module documentation


def main() -> None:
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
