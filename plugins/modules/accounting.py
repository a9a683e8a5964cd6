#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: accounting
short_description: Record a VM life in the hypervisor's accounting database, or export the records
version_added: 0.2.0
description:
  - Keeps one record per VM life (slot, hypervisor, worker type, image identifier, version and
    sha512, cores, memory, created, registered, drain started, ended, end reason, jobs) in an SQLite
    database on the hypervisor (O(path)), so the record outlives the VM, the play and the controller.
  - A life is keyed by hypervisor, slot and creation time. Writing the same life again merges into
    the one record (fields given replace stored ones, but C(registered) and C(drain_started) keep the
    earlier time; fields not given are kept); a write that changes nothing reports no change. Each write is one transaction with a synchronous WAL journal.
  - With O(domain) the record is read from the slot domain's metadata (and its vCPUs and memory);
    O(record) adds or overrides fields, for example C(registered) or C(jobs).
  - With O(state=exported) the records matching O(filters) are written to O(dest) as JSON lines or as
    an APEL-style CSV (cloud usage record columns).
  - To read records into a play, use M(batchvirt.farm.accounting_info).
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
  idempotent:
    support: full
    details: Recording the same life with the same fields, or exporting the same records, changes nothing.
options:
  path:
    description: The accounting database (created with its directory when missing).
    type: path
    default: /var/lib/batchvirt/accounting.sqlite
  state:
    description: V(present) records a life; V(exported) writes the records to O(dest).
    type: str
    choices: [present, exported]
    default: present
  domain:
    description: A slot domain on O(uri) whose metadata, vCPUs and memory make the record.
    type: str
  record:
    description:
      - Fields of the record (with O(domain) they add to or replace what the domain says).
      - C(slot), C(hypervisor) and C(created) are required (they are the key); further fields are
        C(worker_type) (default V(default)), C(image_identifier), C(image_version), C(image_sha512),
        C(cores), C(memory_mib), C(registered), C(drain_started), C(ended), C(end_reason), C(jobs),
        C(batch_system), C(batch_node). Times are UTC ISO-8601.
    type: dict
    default: {}
  end_reason:
    description:
      - End the life now (C(ended) is the current time unless O(record) gives it) for this reason.
    type: str
    choices: [recycled, rolling_update, expired, failed, removed, lost]
  now:
    description: The current time (UTC ISO-8601) for tests and what-if runs; E(BATCHVIRT_FARM_NOW) does the same.
    type: str
  dest:
    description: The export file, required with O(state=exported); replaced atomically when its content changes.
    type: path
  format:
    description: V(jsonl) (one JSON object per line, every field) or V(apel_csv) (APEL-style cloud usage records).
    type: str
    choices: [jsonl, apel_csv]
    default: jsonl
  site:
    description: C(SiteName) of the APEL-style CSV.
    type: str
    default: ""
  service:
    description: C(CloudComputeService) of the APEL-style CSV (default the hypervisor of each record).
    type: str
    default: ""
  filters:
    description: Which records O(state=exported) writes (as the options of M(batchvirt.farm.accounting_info)).
    type: dict
    default: {}
    suboptions:
      slot:
        description: Only this slot.
        type: str
      hypervisor:
        description: Only this hypervisor.
        type: str
      worker_type:
        description: Only this worker type.
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
        description: All lives, only V(open) ones or only V(ended) ones.
        type: str
        choices: [all, open, ended]
        default: all
      since:
        description: Only lives alive at or after this UTC time.
        type: str
      until:
        description: Only lives created at or before this UTC time.
        type: str
      limit:
        description: At most this many records (0, no limit).
        type: int
        default: 0
seealso:
  - module: batchvirt.farm.accounting_info
  - name: Observability (batchvirt.farm documentation)
    description: Accounting records, exports, metrics and the report page.
    link: https://github.com/batchvirt/farm/blob/main/docs/observability.md
"""

EXAMPLES = r"""
- name: Record the life of a slot before it is destroyed
  batchvirt.farm.accounting:
    domain: worker-03
    end_reason: recycled
    record:
      jobs: 42

- name: Export last month's records for APEL
  batchvirt.farm.accounting:
    state: exported
    format: apel_csv
    site: EXAMPLE-SITE
    dest: /var/spool/apel/batchvirt-{{ inventory_hostname }}.csv
    filters:
      status: ended
      since: "2026-11-01T00:00:00Z"
"""

RETURN = r"""
life_id:
  description: The key of the life (V(<hypervisor>/<slot>/<created>)).
  returned: state=present
  type: str
  sample: hv01/worker-03/2026-11-21T06:00:00Z
record:
  description: The record after the write.
  returned: state=present
  type: dict
dest:
  description: The export file.
  returned: state=exported
  type: str
count:
  description: Records exported.
  returned: state=exported
  type: int
format:
  description: The export format.
  returned: state=exported
  type: str
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import (
    ACCOUNTING_ARGUMENT_SPEC,
    AccountingError,
    run_accounting,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    LIBVIRT_ARGUMENT_SPEC,
    FarmLibvirtError,
    connect,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule


def main() -> None:
    # libvirt only for O(domain): the uri option without the early libvirt check
    module = FarmModule(
        argument_spec=ACCOUNTING_ARGUMENT_SPEC, common_specs=(LIBVIRT_ARGUMENT_SPEC,), supports_check_mode=True
    )
    try:
        result = run_accounting(
            module.params, module.check_mode, connect=lambda: connect(module.params["uri"], readonly=True)
        )
    except AccountingError as exc:
        module.fail_from(exc, **exc.to_result())
    except FarmLibvirtError as exc:
        module.fail_from(exc)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
