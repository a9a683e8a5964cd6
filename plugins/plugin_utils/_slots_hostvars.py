# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The variables of one host of the slots inventory (controller side): where it runs, its
lifecycle state and image, its batch view, back-off, and how Ansible reaches it over SSH."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import (
    DomainRecord,
    HypervisorRead,
    backoff_until,
    slot_state,
    state_name,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import ENABLED_STATES, BatchView
from ansible_collections.batchvirt.farm.plugins.module_utils._version import version_key
from ansible_collections.batchvirt.farm.plugins.plugin_utils._slots_hypervisors import Hypervisor, is_loopback


def newest_versions(read: HypervisorRead) -> Dict[str, str]:
    """The newest version of each image that a slot of this hypervisor runs (the one version order)."""
    newest: Dict[str, str] = {}
    for dom in read.domains:
        if dom.slot is not None:
            image = dom.slot["image"]
            current = newest.get(image["identifier"])
            if current is None or version_key(image["version"]) > version_key(current):
                newest[image["identifier"]] = image["version"]
    return newest


def host_vars(
    dom: DomainRecord,
    hv: Hypervisor,
    now: Any,
    batch: Dict[str, Any],
    batch_known: bool,
    state_kwargs: Dict[str, Any],
    loopback_jump: bool,
) -> Dict[str, Any]:
    """The ``farm_*`` and ``ansible_*`` variables of the domain ``dom`` on ``hv``.

    ``batch`` is the bulk batch view by node; when ``batch_known``, a node missing from it is not
    registered. A foreign domain gets only where it runs. A slot on a remote hypervisor whose SSH
    address is a loopback one is reached through the hypervisor (``loopback_jump``: a ProxyJump)
    or at the hypervisor's address (its forwarded port).
    """
    variables: Dict[str, Any] = {
        "farm_hypervisor": hv.name,
        "farm_hypervisor_uri": hv.uri,
        "farm_domain": dom.domain,
        "farm_domain_state": state_name(dom.state),
    }
    slot = dom.slot
    if slot is None:
        return variables
    view: Optional[BatchView] = None
    if batch_known:  # a node the batch system does not know is not registered (yet)
        view = batch.get(slot["batch"]["node"]) or BatchView(registered=False, state="unknown")
    state, to_drain = slot_state(dom, now, view, **state_kwargs)
    golden = (slot.get("extra") or {}).get("purpose") == "golden"
    variables.update(
        {
            "farm_lifecycle": state,
            "farm_enabled": state in ENABLED_STATES and not golden,
            "farm_slot": slot,
            "farm_image": {"identifier": slot["image"]["identifier"], "version": slot["image"]["version"]},
            "farm_drain_at": slot["drain_at"],
            "farm_deadline": slot["deadline"],
            "farm_seconds_to_drain": to_drain,
        }
    )
    variables["farm_failures"] = int((slot.get("failures") or {}).get("consecutive") or 0)
    until = backoff_until(slot, now)
    if until:
        variables["farm_backoff_until"] = until
    if view is not None:
        variables["farm_batch_state"] = view.state
        variables["farm_batch_jobs"] = view.jobs
    ssh = slot.get("ssh") or {}
    address = ssh.get("host") or (slot.get("network") or {}).get("address") or ""
    if address:
        if is_loopback(address) and not hv.local:
            if loopback_jump:
                variables["ansible_host"] = address
                variables["ansible_ssh_common_args"] = f"-o ProxyJump={hv.proxy_jump}"
            else:
                variables["ansible_host"] = hv.ssh_host
        else:
            variables["ansible_host"] = address
    if ssh.get("port"):
        variables["ansible_port"] = int(ssh["port"])
    if ssh.get("user"):
        variables["ansible_user"] = ssh["user"]
    return variables
