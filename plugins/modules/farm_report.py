#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: farm_report
short_description: Write the farm report, one self-contained HTML page with plots
version_added: 0.2.0
description:
  - Draws, with plotly, a map of the hypervisors and their slots coloured by lifecycle state and shaped by
    worker type, the rollout of image versions over time, the capacity accepting jobs over time, and the
    drains and failures over time, and writes them with a summary table to one HTML page (O(dest)).
  - The page holds plotly.js inline; it needs no network access to be opened.
  - The slots come from O(snapshots) (results of M(batchvirt.farm.farm_metrics)), the history from O(records)
    (from M(batchvirt.farm.accounting_info)). C(playbooks/report.yml) gathers both from every hypervisor.
  - Runs where plotly is installed, normally the controller (delegate it to V(localhost)).
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
    support: partial
    details: The page says when it was made; with the same O(now) and inputs a second run changes nothing.
requirements:
  - plotly
options:
  dest:
    description: The HTML file to write (its directory must exist); replaced atomically when its content changes.
    type: path
    required: true
  snapshots:
    description: The M(batchvirt.farm.farm_metrics) results of the hypervisors (each with C(hypervisor) and C(slots)).
    type: list
    elements: dict
    default: []
  records:
    description: Accounting records of VM lives (M(batchvirt.farm.accounting_info)'s C(records)), from every hypervisor.
    type: list
    elements: dict
    default: []
  title:
    description: The page title.
    type: str
    default: batchvirt.farm report
  now:
    description: The time the report is made for (UTC ISO-8601); E(BATCHVIRT_FARM_NOW) does the same.
    type: str
seealso:
  - module: batchvirt.farm.farm_metrics
  - module: batchvirt.farm.accounting_info
"""

EXAMPLES = r"""
- name: Write the report from gathered results
  batchvirt.farm.farm_report:
    dest: /var/www/farm/index.html
    snapshots: "{{ groups.hypervisors | map('extract', hostvars, 'farm_report_state') | list }}"
    records: "{{ groups.hypervisors | map('extract', hostvars, ['farm_report_lives', 'records']) | flatten }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
dest:
  description: The page written.
  returned: success
  type: str
bytes:
  description: Size of the page (plotly.js inline is about 4.5 MB of it).
  returned: success
  type: int
summary:
  description: C(hypervisors), C(slots), C(slots_by_lifecycle), C(accepting), C(lives), C(lives_open), C(lives_failed), C(jobs).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule
from ansible_collections.batchvirt.farm.plugins.module_utils._report import (
    HAS_PLOTLY,
    REPORT_ARGUMENT_SPEC,
    ReportError,
    run_report,
)


def main() -> None:
    module = FarmModule(argument_spec=REPORT_ARGUMENT_SPEC, supports_check_mode=True)
    if not HAS_PLOTLY:
        module.fail_json(msg=missing_required_lib("plotly"))
    try:
        result = run_report(module.params, module.check_mode)
    except ReportError as exc:
        module.fail_from(exc, **exc.to_result())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
