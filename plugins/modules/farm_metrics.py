#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: farm_metrics
short_description: Write a hypervisor's farm metrics for node_exporter's textfile collector
version_added: 0.2.0
description:
  - Reads the hypervisor's slots (lifecycle state, worker type, image version, vCPUs, memory), its
    free capacity, its image cache, its accounting records and the recorded runs of the lifecycle
    plays, and writes them in the Prometheus text exposition format (with C(prometheus_client)) to
    O(textfile_dir)/O(filename), which C(prometheus-node-exporter) serves with its textfile collector.
  - The file is replaced atomically (a temporary file renamed into place). It is only rewritten when
    its content changes; times are exported as Unix timestamps, never as ages, so a second run with
    nothing changed reports no change.
  - With O(play) the module also records the end of a lifecycle play run (its outcome, duration and
    time) in O(state_path), which every later run exports; with O(failures) it counts failures.
  - The metric names are listed in the collection's docs/observability.md.
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
    support: partial
    details:
      - Without O(play) and O(failures) a second run changes nothing unless the farm changed.
      - Each O(play) or O(failures) is an event and is counted every time.
requirements:
  - prometheus-client (python3-prometheus-client) on the hypervisor
options:
  hypervisor:
    description:
      - The value of the C(hypervisor) label. Defaults to libvirt's host name of the hypervisor.
      - Give the inventory name (V({{ inventory_hostname }})) to match the slot metadata and the inventory.
    type: str
  textfile_dir:
    description: The directory node_exporter's textfile collector reads (C(--collector.textfile.directory)); it must exist.
    type: path
    default: /var/lib/prometheus/node-exporter
  filename:
    description: The metrics file in O(textfile_dir); it must end in C(.prom).
    type: str
    default: batchvirt_farm.prom
  state_path:
    description: The JSON file holding the last run of each play and the failure counters.
    type: path
    default: /var/lib/batchvirt/metrics-state.json
  image_root:
    description:
      - The image cache root (as for M(batchvirt.farm.image)); V("") leaves the image cache metrics out.
      - A root without a cache database counts as an empty cache and is not created.
    type: path
    default: /var/lib/batchvirt/images
  accounting_path:
    description: The accounting database (M(batchvirt.farm.accounting)); a missing one leaves those metrics out.
    type: path
    default: /var/lib/batchvirt/accounting.sqlite
  config_path:
    description: The hypervisor role's record of the host reservation (as for M(batchvirt.farm.hypervisor_info)).
    type: path
    default: /etc/batchvirt/hypervisor.json
  now:
    description:
      - Compute lifecycle states and record the play as if it were this UTC ISO-8601 time (tests, what-if);
        E(BATCHVIRT_FARM_NOW) does the same.
    type: str
  play:
    description: Record the end of a run of a lifecycle play.
    type: dict
    suboptions:
      name:
        description: The play, for example V(recycle), V(rolling_update), V(slots), V(prestage).
        type: str
        required: true
      outcome:
        description: How the run ended.
        type: str
        required: true
        choices: [success, failure]
      started:
        description: When the run started (UTC ISO-8601), for its duration.
        type: str
  failures:
    description: Failures to add to C(batchvirt_farm_failures_total).
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: What failed.
        type: str
        required: true
        choices: [slot_create, slot_boot, registration, image_stage, drain, destroy, other]
      count:
        description: How many.
        type: int
        default: 1
seealso:
  - name: Observability (batchvirt.farm documentation)
    description: The metrics, the Grafana dashboard, accounting and the report page.
    link: https://github.com/batchvirt/farm/blob/main/docs/observability.md
"""

EXAMPLES = r"""
- name: Refresh the farm metrics
  batchvirt.farm.farm_metrics:
    hypervisor: "{{ inventory_hostname }}"

- name: Record that the recycle play ended well
  batchvirt.farm.farm_metrics:
    hypervisor: "{{ inventory_hostname }}"
    play:
      name: recycle
      outcome: success
      started: "{{ farm_play_started }}"
"""

RETURN = r"""
path:
  description: The metrics file.
  returned: success
  type: str
  sample: /var/lib/prometheus/node-exporter/batchvirt_farm.prom
metrics:
  description: Lines in the metrics file.
  returned: success
  type: int
hypervisor:
  description: The C(hypervisor) label.
  returned: success
  type: str
time:
  description: The time the states were computed for.
  returned: success
  type: str
slots:
  description: Every slot with C(name), C(lifecycle), C(domain_state), C(worker_type), C(image), C(image_version), C(vcpus), C(memory_mib).
  returned: success
  type: list
  elements: dict
slots_by_lifecycle:
  description: Slots per lifecycle state.
  returned: success
  type: dict
accepting:
  description: C(slots), C(vcpus) and C(memory_mib) of the slots accepting jobs.
  returned: success
  type: dict
capacity:
  description: The hypervisor's capacity (as M(batchvirt.farm.hypervisor_info) returns it).
  returned: success
  type: dict
images:
  description: The image cache entries.
  returned: success
  type: list
  elements: dict
image_failures:
  description: Failed staging attempts in the image cache history.
  returned: success
  type: int
newest_ready_at:
  description: When the newest ready image was staged, or null.
  returned: success
  type: str
accounting:
  description: C(ended) (lives by end reason) and C(open) from the accounting database.
  returned: success
  type: dict
plays:
  description: The recorded last run of each play.
  returned: success
  type: dict
failures:
  description: Recorded failures by kind.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect
from ansible_collections.batchvirt.farm.plugins.module_utils._metrics import (
    HAS_PROMETHEUS_CLIENT,
    METRICS_ARGUMENT_SPEC,
    run_metrics,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule


def main() -> None:
    module = FarmModule(argument_spec=METRICS_ARGUMENT_SPEC, needs_libvirt=True, supports_check_mode=True)
    if not HAS_PROMETHEUS_CLIENT:
        module.fail_json(msg=missing_required_lib("prometheus-client"))
    try:
        conn = connect(module.params["uri"], readonly=True)
        try:
            result = run_metrics(conn, module.params, module.check_mode)
        finally:
            conn.close()
    except FarmError as exc:  # HypervisorError and FarmLibvirtError are FarmErrors too
        module.fail_from(exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
