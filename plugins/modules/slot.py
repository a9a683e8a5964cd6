#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot module: VM slots on a hypervisor (one, a list, or a whole layout in one call)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: slot
short_description: VM slots on a hypervisor, booted from a copy-on-write overlay of a staged image
version_added: 0.1.0
description:
  - Defines, starts, drains and removes the worker VM slots of one hypervisor.
  - Each slot is a libvirt domain booting from a qcow2 overlay (in the storage pool O(pool)) whose
    backing file is a staged image, so creating a slot costs the same for a 1 GiB or a 20 GiB image.
  - Each slot gets a cloud-init NoCloud seed ISO (user-data, meta-data, network-config) and carries its
    lifetime (C(created_at), C(drain_at), C(deadline)) and an operator drain request in its own libvirt
    metadata; its lifecycle state (see C(docs/slots.md)) is derived from that metadata and the clock.
  - One slot with O(name); many in one call with O(slots) or O(layout). The C(vm_slots) role uses
    O(layout), so a hypervisor costs one module call, not one per slot.
  - The UUID and MAC address of a slot derive from O(hypervisor) and the slot name, so they are the
    same on every run. A rerun changes nothing when the definition is up to date and never moves a
    slot's metadata times.
  - The clock can be set with the environment variable C(BATCHVIRT_FARM_NOW) (an ISO-8601 UTC time),
    for tests and dry runs of the lifecycle.
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - batchvirt.farm.libvirt
  - batchvirt.farm.slot_layout
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The domain XML before and after, and the metadata before and after a drain request.
  idempotent:
    support: full
    details: The metadata times (created, drain, deadline) never move on a rerun.
options:
  name:
    description:
      - The name of one slot (the libvirt domain name).
      - Mutually exclusive with O(slots) and O(layout).
    type: str
  state:
    description:
      - V(present) the slot is defined (not started); V(running) defined and running (a stopped slot is started,
        a missing one created); V(draining) records an operator drain request with O(drain_reason) in its metadata;
        V(absent) removes the domain, its overlay and its seed ISO.
      - V(resolved) changes nothing (also outside check mode); it only resolves O(image) on the hypervisor as a
        new slot would get it, V(latest) with O(image.avoid) included, and returns it in RV(image). Playbooks
        ask it before they remove a slot to re-create it (C(playbooks/tasks/recreate_slot.yml)), so a slot for
        which no version is left is kept instead of being removed and lost. It is a state of this module, not a
        check-mode run of V(running), because a check-mode run on an existing slot compares it with its
        definition (it does not say which version a new one would get) and goes through the same rule in
        the same code (C(resolve_image)) as the creation that follows.
      - V(draining) before the slot's planned drain time also moves C($MACHINEFEATURES/shutdowntime) inside
        the running VM to the new time, through the QEMU guest agent, as M(batchvirt.farm.slot_drain) does
        (see O(machine_features)); the result's C(machinefeatures) says what happened.
      - V(absent) refuses a slot that is neither stopped, drained nor past its deadline unless O(force=true);
        a V(failed) slot is accepted without O(force) when O(batch) is given and the batch system shows no
        job on its node (down, not responding or never registered), or libvirt reports its domain crashed.
    type: str
    choices: [present, running, draining, absent, resolved]
    default: running
  hypervisor:
    description:
      - The hypervisor's name as the farm knows it (recorded in the metadata, part of the UUID and MAC derivation).
      - Default the host's short host name as libvirt reports it.
    type: str
  image:
    description: The image the overlay is backed by.
    type: dict
    suboptions:
      identifier:
        description: The image identifier (as in the image list); with O(image.version), a staged image of the cache.
        type: str
      version:
        description:
          - The image version; V(latest) is the newest version the image cache on the hypervisor holds
            ready (what a rolling update replaces slots with).
        type: str
      path:
        description: An image file on the hypervisor instead of a cached one.
        type: path
      format:
        description: The image's format (default from the cache or the file header).
        type: str
        choices: [qcow2, raw]
      sha512:
        description: The image's sha512, recorded in the metadata when O(image.path) is used.
        type: str
      cache_root:
        description: The image cache's directory.
        type: path
        default: /var/lib/batchvirt/images
      avoid:
        description:
          - Versions that V(latest) skips, for example the versions whose slots are in back-off on this
            hypervisor after repeated failures (C(docs/operations.md)); the newest other deployable version
            is taken.
          - When no other version is left, the task fails naming O(image.avoid) and the versions avoided,
            and creates nothing.
          - Only with O(image.version=latest); a pinned O(image.version) listed here is refused.
        type: list
        elements: str
  vcpus:
    description: vCPUs per slot.
    type: int
    default: 1
  memory_mib:
    description: Memory per slot in MiB.
    type: int
    default: 2048
  disk_size_gib:
    description: Virtual size of the overlay in GiB, at least the image's virtual size (default the image's).
    type: int
  domain_type:
    description: The libvirt domain type; default V(kvm) where the host offers it with hardware virtualisation, else V(qemu).
    type: str
    choices: [kvm, qemu]
  boot:
    description: How the slot boots.
    type: dict
    suboptions:
      mode:
        description: V(bootloader) (the image's own) or V(kernel) (direct kernel boot).
        type: str
        choices: [bootloader, kernel]
        default: bootloader
      kernel:
        description: The kernel file on the hypervisor (default from the image description).
        type: path
      initrd:
        description: The initrd file on the hypervisor.
        type: path
      cmdline:
        description: The kernel command line.
        type: str
      description:
        description: The image description JSON with a C(boot) section (default the image path with C(.json)).
        type: path
  network:
    description: The slot's network.
    type: dict
    suboptions:
      mode:
        description:
          - V(user) QEMU user-mode networking with an SSH forward on O(network.ssh_host):O(network.ssh_port) (laptops, CI);
            V(bridge) a host bridge with a static address; V(network) a libvirt network.
        type: str
        choices: [user, bridge, network]
        default: user
      bridge:
        description: The host bridge (V(bridge) mode); it must exist.
        type: str
      network:
        description: The libvirt network (V(network) mode); it must exist.
        type: str
      address:
        description:
          - The static address with its prefix, for example V(192.0.2.10/24) (written to network-config).
          - Fixed when the slot is created; a rerun that gives an existing slot another address fails
            (recreate the slot to change it).
        type: str
      gateway:
        description: The default gateway for a static address.
        type: str
      dns:
        description: Name servers for a static address.
        type: list
        elements: str
      mac:
        description:
          - The MAC address (default derived from the hypervisor and slot name).
          - Fixed when the slot is created, like O(network.address).
        type: str
      ssh_host:
        description: The host address the SSH forward binds to (V(user) mode).
        type: str
        default: 127.0.0.1
      ssh_port:
        description: The host port of the SSH forward (V(user) mode); none when unset.
        type: int
      ssh_user:
        description: The user to SSH in as (reported in the result).
        type: str
        default: root
      forwards:
        description:
          - V(user) mode only; more TCP forwards from the hypervisor to the guest, each
            C([host:]host_port:guest_port) (host default O(network.ssh_host)), for example the port of the
            guest's C(slurmd) that the batch controller connects to.
        type: list
        elements: str
  cloud_init:
    description:
      - The site's cloud-config (a dict), merged with O(ssh_authorized_keys) and the batch registration.
      - Kept out of the logs (it may carry passwords); its string values are masked in the output too.
    type: dict
  ssh_authorized_keys:
    description: SSH public keys for the guest's default user.
    type: list
    elements: str
  lifetime:
    description: Seconds from creation until the slot starts draining; must be positive.
    type: int
    default: 604800
  lifetime_spread:
    description: Up to this many seconds less lifetime, stable per slot name, so a farm does not drain at once.
    type: int
    default: 0
  max_job_walltime:
    description: The longest job walltime in seconds; C(deadline) is C(drain_at) plus this.
    type: int
    default: 172800
  worker_type:
    description: The worker type (recorded in the metadata, for inventory groups).
    type: str
  purpose:
    description:
      - V(worker) for a batch worker, V(golden) for a golden node (see P(batchvirt.farm.golden_node#role)).
      - A golden node is recorded as such in the metadata, and the P(batchvirt.farm.slots#inventory)
        inventory puts it in the group C(farm_golden) only, never in a lifecycle group, so rolling
        updates and recycling never touch it.
    type: str
    choices: [worker, golden]
    default: worker
  batch:
    description:
      - The batch system. With O(batch.controller), the user-data makes the VM register itself at boot.
      - With O(batch.system), V(absent) asks the batch system (one bulk query) whether the slot still runs jobs.
    type: dict
    suboptions:
      system:
        description: The batch system.
        type: str
        choices: [slurm, htcondor]
        default: slurm
      node_name:
        description: The node name in the batch system (default the slot name).
        type: str
      controller:
        description: The controller's address as the guest reaches it.
        type: str
      munge_key:
        description: The munge key (base64 text, as slurped) for Slurm.
        type: str
      features:
        description: Node features.
        type: list
        elements: str
      slurm_conf:
        description: The text of slurm.conf for the guest (else configless mode).
        type: str
      dynamic:
        description: Register as a dynamic Slurm node.
        type: bool
        default: true
      controller_port:
        description: The controller's port.
        type: int
        default: 6817
  drain_reason:
    description: Why the slot is drained (required with O(state=draining)).
    type: str
  force:
    description: Remove a slot even while it may run jobs (O(state=absent)).
    type: bool
    default: false
  machine_features:
    description:
      - HEPiX Machine/Job Features published inside each worker VM from its first boot (cloud-init
        C(write_files)), for the pilots that read C($MACHINEFEATURES) - C(shutdowntime) (the slot's
        deadline, Unix seconds), C(jobslots), C(total_cpu), C(log_cores), C(phys_cores) (the slot's
        vCPUs), C(grace_secs) and C(hs06) when configured. C(MACHINEFEATURES) is exported in
        C(/etc/environment) and C(/etc/profile.d/machinefeatures.sh).
      - Golden nodes (O(purpose=golden)) never get them (their disk becomes an image).
    type: dict
    suboptions:
      enabled:
        description: Publish the files.
        type: bool
        default: true
      path:
        description: The C($MACHINEFEATURES) directory inside the VM.
        type: str
        default: /etc/machinefeatures
      hs06:
        description: The VM's HEP-SPEC06 rating; C(hs06) is written only when given.
        type: float
      jobslots:
        description: The job slots the VM offers (default one per vCPU).
        type: int
      grace_secs:
        description: Seconds jobs get between the shutdown request and the hard stop (match O(shutdown_timeout)).
        type: int
        default: 60
      job_features:
        description:
          - Publish C($JOBFEATURES) per job (Slurm with O(batch.slurm_conf) only; a configless VM takes the
            controller's C(slurm.conf) as it is). The VM's C(slurm.conf) gets a C(TaskProlog) that writes
            C(job_id), C(allocated_cpu), C(jobstart_secs), C(wall_limit_secs) (the job's time limit, from
            C(squeue), so the image needs C(slurm-client)) and C(max_rss_bytes) (with C(--mem)) under
            C(/run/jobfeatures/<job id>) and exports C(JOBFEATURES) into the job's tasks, and an C(Epilog)
            that removes the directory. A C(TaskProlog) or C(Epilog) already in O(batch.slurm_conf) is kept.
        type: bool
        default: true
  shutdown_timeout:
    description:
      - With O(state=absent), a running slot first gets an ACPI shutdown request (its power button)
        and this many seconds to power off, so the guest's shutdown runs (C(slurmd) leaves cleanly);
        what still runs afterwards is destroyed. All slots of one call share the same grace.
      - V(0) destroys at once.
    type: int
    default: 60
  end_reason:
    description:
      - With O(state=absent), the reason code reported for the end of each slot (RV(slots[].end)),
        from the table in C(docs/slots.md) modelled on Vac's shutdown messages.
      - Without it the reason follows the slot's lifecycle state at removal - V(600) deadline reached
        for C(expired), V(500) lost heartbeat / failed for C(failed), V(300) no more work for
        C(drained) (and C(draining) with O(force=true)), V(200) intended work completed for a
        C(stopped) slot, V(100) shutdown as requested for any other slot removed with O(force=true).
    type: int
    choices: [100, 200, 300, 400, 500, 600]
  start_concurrency:
    description:
      - How many slots are started at once (libvirtd starts domains in parallel; starting is most of
        a slot's creation time).
    type: int
    default: 4
  pool:
    description: The libvirt storage pool for overlays and seed ISOs.
    type: str
    default: batchvirt-slots
  overlay:
    description:
      - The overlay; V(qcow2) in O(pool), or V(lvm), a snapshot of the image's logical volume (untested on
        hosts without device-mapper).
    type: dict
    suboptions:
      type:
        description: The overlay kind.
        type: str
        choices: [qcow2, lvm]
        default: qcow2
      volume_group:
        description: The LVM volume group (V(lvm)).
        type: str
      origin:
        description: The image's logical volume in O(overlay.volume_group) (V(lvm)).
        type: str
notes:
  - Runs on the hypervisor (seed ISOs and console logs are written locally).
seealso:
  - name: Slots
    description: The lifecycle table, metadata schema and examples (docs/slots.md in the collection).
    link: https://github.com/batchvirt/farm/blob/main/docs/slots.md
"""

EXAMPLES = r"""
- name: One slot with user-mode networking and an SSH forward on 127.0.0.1:10022
  batchvirt.farm.slot:
    name: hv01-slot-01
    image:
      identifier: worker-el9
      version: "20261101.1"
    vcpus: 2
    memory_mib: 4096
    network:
      mode: user
      ssh_port: 10022
    ssh_authorized_keys:
      - "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    lifetime: 86400
    lifetime_spread: 3600
    max_job_walltime: 172800

- name: Lay out this hypervisor's slots on a bridge, addresses from the site pool
  batchvirt.farm.slot:
    hypervisor: "{{ inventory_hostname_short }}"
    layout:
      count: auto
      index: "{{ groups['hypervisors'].index(inventory_hostname) }}"
      address_pool:
        network: 192.0.2.0/24
        first: 192.0.2.10
        gateway: 192.0.2.1
    image:
      identifier: worker-el9
      version: "20261101.1"
    network:
      mode: bridge
      bridge: br0

- name: Drain a slot for a kernel update
  batchvirt.farm.slot:
    name: hv01-slot-01
    state: draining
    drain_reason: kernel update 2026-11

- name: Remove it once drained
  batchvirt.farm.slot:
    name: hv01-slot-01
    state: absent
"""

RETURN = r"""
slots:
  description: One entry per slot, in the order asked.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The slot name.
      type: str
    changed:
      description: Whether this slot changed.
      type: bool
    actions:
      description: What was done (or would be, in check mode).
      type: list
      elements: str
    lifecycle:
      description: The derived lifecycle state (stopped, expired, drained, draining, provisioning, expiring, active).
      type: str
    running:
      description: Whether the domain runs.
      type: bool
    metadata:
      description: The slot metadata (times as UTC ISO-8601).
      type: dict
    addresses:
      description: Static addresses of the slot.
      type: list
      elements: str
    ssh:
      description: The SSH endpoint (host, port, user).
      type: dict
    end:
      description:
        - How and why a removed slot ended (O(state=absent)); C(how) is V(acpi) (the guest powered off
          after the ACPI request), V(destroyed) (still running after O(shutdown_timeout), or at once
          with V(0)) or V(stopped) (it was not running); C(seconds) is the time waited; C(reason_code)
          and C(reason) come from the table in C(docs/slots.md); C(console_tail) holds the last lines of
          the guest's console log (local hypervisor only) as it ended, before the log is deleted.
      type: dict
      sample: {how: acpi, seconds: 4.5, reason_code: 600, reason: "600 Deadline reached"}
    machinefeatures:
      description:
        - With O(state=draining), what happened to C($MACHINEFEATURES/shutdowntime) inside the VM. V(updated)
          the guest agent rewrote it; V(unchanged) the time did not move (no early drain, asked before, or the
          VM does not run); V(skipped) check mode or O(machine_features.enabled=false); V(no_agent) or
          V(no_file) the guest cannot take it; V(failed) with the agent's message otherwise.
      type: str
      returned: with O(state=draining)
      sample: updated
    shutdowntime:
      description: With O(state=draining), the time C(shutdowntime) shows after the drain (Unix seconds) when it moves, else V(null).
      type: int
      returned: with O(state=draining)
      sample: 1796371200
  sample:
    - name: hv01-slot-01
      changed: true
      actions: [create overlay, create seed ISO, define, start]
      lifecycle: provisioning
      running: true
      addresses: []
      ssh: {host: 127.0.0.1, port: 10022, user: root}
name:
  description: The slot name (with O(name)).
  returned: when O(name) is given
  type: str
  sample: hv01-slot-01
lifecycle:
  description: The slot's lifecycle state (with O(name)).
  returned: when O(name) is given
  type: str
  sample: provisioning
metadata:
  description: The slot metadata (with O(name)).
  returned: when O(name) is given
  type: dict
  sample:
    name: hv01-slot-01
    hypervisor: hv01
    created_at: "2026-11-21T06:00:00Z"
    drain_at: "2026-11-22T06:00:00Z"
    deadline: "2026-11-24T06:00:00Z"
addresses:
  description: Static addresses (with O(name)).
  returned: when O(name) is given
  type: list
  elements: str
  sample: ["192.0.2.10/24"]
ssh:
  description: The SSH endpoint (with O(name)).
  returned: when O(name) is given
  type: dict
  sample: {host: 127.0.0.1, port: 10022, user: root}
image:
  description:
    - The image a new slot would get (O(state=resolved) with O(name); each entry of RV(slots) has it too),
      V(latest) resolved with O(image.avoid).
  returned: when O(state=resolved)
  type: dict
  contains:
    identifier:
      description: The image identifier.
      type: str
    version:
      description: The version.
      type: str
    path:
      description: The image file on the hypervisor.
      type: str
  sample: {identifier: worker-el9, version: "20261101.1", path: /var/lib/batchvirt/images/worker-el9_20261101.1.qcow2}
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule, run_module  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._slot import run_slot_module  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_args import ARGUMENT_SPEC  # noqa: E402


def main() -> None:
    module = FarmModule(
        argument_spec=ARGUMENT_SPEC,
        needs_libvirt=True,
        supports_check_mode=True,
        mutually_exclusive=[("name", "slots", "layout")],
        required_one_of=[("name", "slots", "layout")],
        required_if=[("state", "draining", ("drain_reason",))],
    )
    run_module(module, run_slot_module, what="slot")


if __name__ == "__main__":
    main()
