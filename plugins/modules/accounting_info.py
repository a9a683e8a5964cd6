#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: accounting_info
short_description: Read VM life records from a hypervisor's accounting database
version_added: 0.2.0
description:
  - Returns the records M(batchvirt.farm.accounting) keeps, oldest life first, filtered by every option given.
  - A hypervisor without a database returns no records (and C(exists=false)); the module never creates one.
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The accounting database.
    type: path
    default: /var/lib/batchvirt/accounting.sqlite
  slot:
    description: Only this slot.
    type: str
  hypervisor:
    description: Only this hypervisor.
    type: str
  worker_type:
    description: Only this worker type (V(default) for slots without one).
    type: str
  image_identifier:
    description: Only this image.
    type: str
  image_version:
    description: Only this image version.
    type: str
  end_reason:
    description: Only lives that ended for this reason.
    type: str
  status:
    description: All lives, only V(open) ones (not ended) or only V(ended) ones.
    type: str
    choices: [all, open, ended]
    default: all
  since:
    description: Only lives alive at or after this UTC ISO-8601 time (open lives, or ended at or after it).
    type: str
  until:
    description: Only lives created at or before this UTC ISO-8601 time.
    type: str
  limit:
    description: At most this many records (0, no limit).
    type: int
    default: 0
seealso:
  - module: batchvirt.farm.accounting
"""

EXAMPLES = r"""
- name: Lives that ended in a failure this month
  batchvirt.farm.accounting_info:
    status: ended
    end_reason: failed
    since: "2026-12-01T00:00:00Z"
  register: failed_lives
"""

RETURN = r"""
records:
  description:
    - The matching records, each with C(life_id), C(slot), C(hypervisor), C(worker_type), C(image_identifier),
      C(image_version), C(image_sha512), C(cores), C(memory_mib), C(created), C(registered), C(drain_started),
      C(ended), C(end_reason), C(jobs), C(batch_system), C(batch_node), C(recorded_at), C(updated_at).
  returned: success
  type: list
  elements: dict
count:
  description: Number of records returned.
  returned: success
  type: int
exists:
  description: Whether the database exists.
  returned: success
  type: bool
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import (
    INFO_ARGUMENT_SPEC,
    AccountingError,
    run_query,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule


def main() -> None:
    module = FarmModule(argument_spec=INFO_ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run_query(module.params)
    except AccountingError as exc:
        module.fail_from(exc, **exc.to_result())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
