# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: slots
short_description: Every worker VM slot of a libvirt farm, with its lifecycle state
version_added: 0.1.0
description:
  - Reads the VM slots of every hypervisor of a farm in bulk (one C(getAllDomainStats) call and one
    metadata read per domain, hypervisors in parallel) and turns them into hosts whose groups and
    variables carry the slot lifecycle computed by the collection's shared model.
  - Hosts are named after the slot. Each host gets C(farm_lifecycle), C(farm_enabled) (false for
    V(draining), V(drained), V(expired) and V(stopped), for AWX's C(enabled_var)), C(farm_slot) (the slot
    metadata), C(farm_hypervisor), C(farm_hypervisor_uri), C(farm_domain), C(farm_domain_state),
    C(farm_image) (C(identifier), C(version)), C(farm_drain_at), C(farm_deadline),
    C(farm_seconds_to_drain), C(farm_batch_state) and C(farm_batch_jobs) when O(batch) is set,
    C(farm_failures) (consecutive failed lives of the slot, 0 when none), C(farm_backoff_until) (only while
    the slot is in back-off after failures, UTC ISO-8601), and
    C(ansible_host), C(ansible_port), C(ansible_user) from the slot's SSH address.
  - Groups C(farm_lifecycle_<state>) exist for every lifecycle state, even when empty; further groups
    are C(farm_hypervisor_<name>), C(farm_image_<identifier>), C(farm_image_<identifier>_<version>),
    C(farm_image_outdated) (the slot runs an older version of its image than the newest one any slot
    of the same hypervisor runs), C(farm_image_withdrawn) (the slot runs an image version that the
    image lists its hypervisor subscribes to withdrew, or whose entry expired; it is never deployed
    again, and a rolling update can target these slots at once) and, with O(include_foreign),
    C(farm_foreign), and C(farm_backoff) (always present, the slots in back-off after repeated failures, which
    C(playbooks/recycle.yml) leaves alone until C(farm_backoff_until)). Names are sanitised (every character but letters, digits and C(_) becomes C(_)).
  - Each slot also gets C(farm_image_withdrawn) (true or false). The image cache of a hypervisor marks
    a withdrawn, still staged image with a volume C(<identifier>_<version>.withdrawn) in its pool
    (O(image_pool)); the plugin lists that pool once per hypervisor.
  - The group C(all) gets C(farm_unreachable_hypervisors), a list of C(name), C(uri), C(error) for every
    hypervisor that could not be read (empty when all answered), and C(farm_inventory_time).
  - Slots of the whole farm that share a static address are reported in a warning, put in the group
    C(farm_address_conflict) (always present, empty when there is none) and listed in C(farm_address_conflicts)
    on C(all) (address to slot names).
  - A slot's SSH forward on 127.0.0.1 belongs to its hypervisor. For a remote hypervisor the plugin
    sets C(ansible_host=127.0.0.1) and C(ansible_ssh_common_args=-o ProxyJump=<hypervisor>) by default
    (see O(loopback_access)), so a play reaches the VM through the hypervisor.
  - The configuration file name must end with C(.farm.slots.yml) or C(.farm.slots.yaml), or be
    C(farm_slots.yml) / C(farm_slots.yaml).
author:
  - batchvirt.farm contributors (@batchvirt)
requirements:
  - libvirt-python (python3-libvirt) on the controller (the AWX execution environment)
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it must be V(batchvirt.farm.slots).
    required: true
    type: str
    choices: [batchvirt.farm.slots]
  hypervisors:
    description:
      - The hypervisors to read, each a libvirt URI such as V(qemu+ssh://root@hv01.example.org/system)
        or a dictionary with C(uri) (required), C(name) (default the URI's host name, the file name
        of a C(test:///) URI, or V(localhost)), C(ssh_host), C(ssh_user) and C(ssh_port) (how the
        controller reaches the hypervisor itself with SSH; default the URI's host and user).
      - Give this, O(hypervisor_group), or both.
    type: list
    elements: raw
    default: []
  hypervisor_group:
    description:
      - Read every host of this group, as loaded by an inventory source listed B(before) this file
        (C(-i hypervisors.yml -i farm.farm.slots.yml), or earlier in an inventory directory, which
        Ansible reads in alphabetical order), as a hypervisor.
      - Its URI comes from O(uri_template); its name is its inventory host name; C(ansible_host),
        C(ansible_user) and C(ansible_port) of the host are used to reach it with SSH.
      - The host's variables are its inventory variables combined with those of its groups (the
        host's own win), as loaded by the earlier sources; C(group_vars/) and C(host_vars/)
        directories (vars plugins) are not read.
    type: str
  uri_template:
    description:
      - The libvirt URI of each host of O(hypervisor_group), a template over that host's variables.
    type: str
    default: "qemu+ssh://root@{{ ansible_host | default(inventory_hostname) }}/system"
  image_pool:
    description:
      - The libvirt storage pool of the hypervisors' image cache (the role C(image_cache)'s
        C(farm_image_cache_pool)), where withdrawn images are marked; V("") does not look.
    type: str
    default: batchvirt-images
  connect_concurrency:
    description: How many hypervisors are read at the same time.
    type: int
    default: 20
  timeout:
    description:
      - Seconds to wait for one hypervisor (connecting and reading all its slots) before giving up on
        it and treating it as unreachable.
    type: float
    default: 10
  fail_on_errors:
    description:
      - When V(true), an unreachable hypervisor, unreadable slot metadata or a failed batch system query
        fails the inventory refresh.
      - When V(false), each is reported in a warning; the slots of an unreachable hypervisor are left out
        and the hypervisor is listed in C(farm_unreachable_hypervisors).
    type: bool
    default: false
  include_foreign:
    description:
      - Also list domains that are not slots of this collection (no C(farm:slot) metadata), in the group
        C(farm_foreign) with C(farm_hypervisor), C(farm_domain) and C(farm_domain_state) only.
    type: bool
    default: false
  batch:
    description:
      - Merge the batch system's view of the slots' nodes (registered, draining, running jobs) into the
        lifecycle, with one bulk query per refresh for all nodes of the farm.
      - C(system) (required, for example V(slurm)) selects the adapter; every other key is passed to the
        adapter as an option.
      - Without it, a slot whose drain has started is V(draining) (never V(drained)), and a running slot
        is V(provisioning) during its boot grace.
    type: dict
  loopback_access:
    description:
      - How to reach a slot whose SSH address is a loopback address (a user-mode port forward on its
        hypervisor) when the hypervisor is remote.
      - V(proxyjump) keeps C(ansible_host) at the loopback address and sets C(ansible_ssh_common_args)
        to C(-o ProxyJump=[user@]hypervisor[:port]); this works with forwards bound to 127.0.0.1.
      - V(hypervisor_address) sets C(ansible_host) to the hypervisor's address, only for forwards bound
        to an address the controller can reach.
    type: str
    choices: [proxyjump, hypervisor_address]
    default: proxyjump
  now:
    description:
      - Compute the lifecycle as if it were this UTC ISO-8601 time (what-if runs, tests). The environment
        variable E(BATCHVIRT_FARM_NOW) does the same; this option wins.
    type: str
  expiring_window:
    description: Seconds before C(drain_at) in which an accepting slot is V(expiring) rather than V(active).
    type: int
    default: 7200
  boot_grace:
    description: Seconds after C(created_at) during which a running slot unknown to the batch system is V(provisioning).
    type: int
    default: 900
  health_grace:
    description:
      - Seconds a registered node may be reported down or failed by the batch system (since the time the batch
        system gives) before its slot is V(failed).
      - A node that only misses pings (Slurm's C(NOT_RESPONDING)) keeps its state until the batch system sets it
        down (Slurm does after C(SlurmdTimeout)); the grace runs from then.
    type: int
    default: 300
"""

EXAMPLES = r"""
# farm.farm.slots.yml: two hypervisors by URI
plugin: batchvirt.farm.slots
hypervisors:
  - qemu+ssh://root@hv01.example.org/system
  - uri: qemu+tls://hv02.example.org/system
    name: hv02
    ssh_host: 192.0.2.12
timeout: 5
---
# farm.farm.slots.yml: every host of the group "hypervisors" from an earlier inventory source,
# with Slurm's view merged, cached for five minutes
plugin: batchvirt.farm.slots
hypervisor_group: hypervisors
uri_template: "qemu+ssh://root@{{ ansible_host | default(inventory_hostname) }}/system"
batch:
  system: slurm
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/tmp/farm-inventory
cache_timeout: 300
keyed_groups:
  - key: farm_slot.worker_type
    prefix: worker
"""

import os
from typing import Any, Dict, List, Optional, Tuple

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.helpers import get_group_vars
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.vars import combine_vars

from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import (
    DomainRecord,
    HypervisorRead,
    batch_view_from_json,
    batch_view_to_json,
    farm_now,
    image_volume_stem,
    read_farm,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import HAS_LIBVIRT
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import STATES
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import format_time
from ansible_collections.batchvirt.farm.plugins.plugin_utils._slots_host_data import host_data, trusted
from ansible_collections.batchvirt.farm.plugins.plugin_utils._slots_hostvars import host_vars, newest_versions
from ansible_collections.batchvirt.farm.plugins.plugin_utils._slots_hypervisors import (
    Hypervisor,
    hypervisor_from_entry,
    make_hypervisor,
    safe_group,
)

CACHE_FORMAT = 2  # 2: hypervisors carry "withdrawn"
_SUFFIXES = (".farm.slots.yml", ".farm.slots.yaml")
_BASENAMES = ("farm_slots.yml", "farm_slots.yaml")


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "batchvirt.farm.slots"

    def verify_file(self, path: str) -> bool:
        if not super().verify_file(path):
            return False
        base = os.path.basename(path)
        return base.endswith(_SUFFIXES) or base in _BASENAMES

    # -- configuration ------------------------------------------------------------------
    def _hypervisors(self) -> List[Hypervisor]:
        entries = self.get_option("hypervisors") or []
        if not isinstance(entries, list):
            raise AnsibleParserError(f"hypervisors: expected a list of libvirt URIs, got {entries!r}")
        result = [hypervisor_from_entry(entry, i) for i, entry in enumerate(entries)]
        group = self.get_option("hypervisor_group")
        if group:
            result.extend(self._hypervisors_from_group(group))
        if not result:
            raise AnsibleParserError(
                "no hypervisors to read: set the option hypervisors (a list of libvirt URIs) or hypervisor_group"
            )
        seen: Dict[str, str] = {}
        for hv in result:
            if hv.name in seen:
                raise AnsibleParserError(
                    f"hypervisors: the name {hv.name!r} is used by {seen[hv.name]} and {hv.uri}; "
                    "give each entry a distinct 'name'"
                )
            seen[hv.name] = hv.uri
        if self.get_option("connect_concurrency") < 1:
            raise AnsibleParserError("connect_concurrency: must be at least 1")
        if self.get_option("timeout") <= 0:
            raise AnsibleParserError("timeout: must be a positive number of seconds")
        return result

    def _hypervisors_from_group(self, group: str) -> List[Hypervisor]:
        if group not in self.inventory.groups:
            raise AnsibleParserError(
                f"hypervisor_group: the group {group!r} is not in the inventory loaded so far; "
                "list the inventory source that defines it before this file (-i hypervisors.yml -i this file)"
            )
        template = trusted(self.get_option("uri_template"))
        result = []
        for host in self.inventory.groups[group].get_hosts():
            # group variables (the SSH user and port of a site's hypervisors usually live there),
            # overridden by the host's own, as Ansible combines them for a play
            variables = combine_vars(get_group_vars(host.get_groups()), host.get_vars())
            self.templar.available_variables = variables
            try:
                uri = str(self.templar.template(template))
            except Exception as exc:
                raise AnsibleParserError(f"uri_template: cannot render it for host {host.name!r}: {exc}") from None
            port = variables.get("ansible_port") or 0
            result.append(
                make_hypervisor(
                    uri, host.name, variables.get("ansible_host", host.name), variables.get("ansible_user"), int(port)
                )
            )
        return result

    def _batch_option(self) -> Optional[Tuple[str, Dict[str, Any]]]:
        batch = self.get_option("batch")
        if not batch:
            return None
        options = dict(batch)
        system = options.pop("system", None)
        if not system or not isinstance(system, str):
            raise AnsibleParserError("batch.system: required when batch is set, for example 'system: slurm'")
        return system, options

    # -- cache (the amazon.aws model) -----------------------------------------------------
    def get_cached_result(self, path: str, cache: bool) -> Tuple[bool, Any]:
        """``(True, data)`` when caching is on, not flushed and the cache holds this source."""
        if not cache or not self.get_option("cache"):
            return False, None
        try:
            data = self._cache[self.get_cache_key(path)]
        except KeyError:
            return False, None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return False, None
        return True, data

    def update_cached_result(self, path: str, hit: bool, result: Any) -> None:
        """Store a fresh result; a result that came from the cache is not written back (no TTL reset).

        A fresh result always replaces what the cache held: an entry of an old format (or a
        broken one) is never a hit, so it must be overwritten, not kept to be refetched for ever."""
        if not self.get_option("cache") or hit:
            return
        self._cache[self.get_cache_key(path)] = result

    # -- fetching -------------------------------------------------------------------------
    def _fetch(self, hypervisors: List[Hypervisor]) -> Dict[str, Any]:
        if not HAS_LIBVIRT:
            raise AnsibleError(
                "batchvirt.farm.slots needs the Python module 'libvirt' (libvirt-python) on the controller: "
                "install python3-libvirt or 'pip install libvirt-python' (in AWX, in the execution environment)"
            )
        reads = read_farm(
            [(hv.name, hv.uri) for hv in hypervisors],
            concurrency=self.get_option("connect_concurrency"),
            timeout=float(self.get_option("timeout")),
            include_foreign=self.get_option("include_foreign"),
            image_pool=self.get_option("image_pool") or "",
        )
        data: Dict[str, Any] = {
            "format": CACHE_FORMAT,
            "hypervisors": [r.to_json() for r in reads],
            "batch": None,
            "batch_error": "",
        }
        batch = self._batch_option()
        if batch is not None:
            system, options = batch
            adapter = self._batch_adapter(system, options)
            nodes = sorted(
                {
                    d.slot["batch"]["node"]
                    for r in reads
                    for d in r.domains
                    if d.slot is not None and d.slot["batch"].get("system", system) == system
                }
            )
            try:
                views = adapter.bulk_view(nodes) if nodes else {}
                data["batch"] = {node: batch_view_to_json(view) for node, view in views.items()}
            except AnsibleError:
                raise
            except Exception as exc:
                data["batch_error"] = f"batch: the {system} query failed: {exc}"
        return data

    def _batch_adapter(self, system: str, options: Dict[str, Any]) -> Any:
        """The batch adapter (``module_utils._batch.get_adapter``); one bulk query per refresh."""
        try:
            from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter
        except ImportError as exc:
            raise AnsibleError(f"batch: this batchvirt.farm has no batch adapter module ({exc})") from None
        try:
            return get_adapter(system, **options)
        except Exception as exc:  # unknown system (BatchError), unknown option (TypeError)
            raise AnsibleParserError(
                f"batch: cannot use batch system {system!r} with options {options!r}: {exc}"
            ) from None

    # -- populating -----------------------------------------------------------------------
    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        hypervisors = self._hypervisors()
        self._batch_option()
        try:
            now = farm_now(self.get_option("now"))
        except ValueError as exc:
            raise AnsibleParserError(str(exc)) from None
        hit, data = self.get_cached_result(path, cache)
        if not hit:
            data = self._fetch(hypervisors)
            self._check_errors(data)
        self.update_cached_result(path, hit, data)
        self._populate(data, hypervisors, now)

    def _check_errors(self, data: Dict[str, Any]) -> None:
        if not self.get_option("fail_on_errors"):
            return
        problems = []
        for hv in data["hypervisors"]:
            if hv["error"]:
                problems.append(f"{hv['name']}: {hv['error']}")
            for dom in hv["domains"]:
                if dom.get("error"):
                    problems.append(f"{hv['name']}/{dom['domain']}: {dom['error']}")
        if data.get("batch_error"):
            problems.append(data["batch_error"])
        if problems:
            raise AnsibleError("batchvirt.farm.slots: refresh failed (fail_on_errors is true): " + "; ".join(problems))

    def _populate(self, data: Dict[str, Any], hypervisors: List[Hypervisor], now: Any) -> None:
        inventory = self.inventory
        by_name = {hv.name: hv for hv in hypervisors}
        reads = [HypervisorRead.from_json(h) for h in data["hypervisors"]]
        batch = {k: batch_view_from_json(v) for k, v in (data.get("batch") or {}).items()}
        batch_known = data.get("batch") is not None
        if data.get("batch_error"):
            self.display.warning(data["batch_error"] + "; the lifecycle is computed without the batch view")
        state_kwargs = {
            "expiring_window": self.get_option("expiring_window"),
            "boot_grace": self.get_option("boot_grace"),
            "health_grace": self.get_option("health_grace"),
        }
        loopback_jump = self.get_option("loopback_access") == "proxyjump"
        include_foreign = self.get_option("include_foreign")
        compose = self.get_option("compose")
        groups = self.get_option("groups")
        keyed = self.get_option("keyed_groups")
        strict = self.get_option("strict")
        constructed = bool(compose or groups or keyed)

        for state in STATES:
            inventory.add_group("farm_lifecycle_" + state)
        inventory.add_group("farm_image_outdated")
        inventory.add_group("farm_image_withdrawn")
        inventory.add_group("farm_backoff")
        if include_foreign:
            inventory.add_group("farm_foreign")

        unreachable = []
        by_address: Dict[str, List[str]] = {}  # static address -> slots, to report duplicates
        seen: Dict[str, str] = {}
        memo: Dict[str, Any] = {}  # equal strings of all hosts share one (tagged) object
        for read in reads:
            hv = by_name.get(read.name) or make_hypervisor(read.uri, read.name)
            hv_group = inventory.add_group("farm_hypervisor_" + safe_group(hv.name))
            if read.error:
                self.display.warning(f"batchvirt.farm.slots: hypervisor {hv.name} left out: {read.error}")
                unreachable.append({"name": hv.name, "uri": hv.uri, "error": read.error})
                continue
            newest = newest_versions(read)
            withdrawn = set(read.withdrawn)
            for dom in read.domains:
                if dom.error:
                    self.display.warning(
                        f"batchvirt.farm.slots: domain {dom.domain} on {hv.name} left out: {dom.error}"
                    )
                    continue
                if dom.slot is None and not include_foreign:
                    continue
                name = dom.slot["name"] if dom.slot is not None else dom.domain
                if name in seen:
                    self.display.warning(
                        f"batchvirt.farm.slots: slot {name} on {hv.name} left out: "
                        f"a slot of that name was already read from {seen[name]}"
                    )
                    continue
                seen[name] = hv.name
                address = ((dom.slot or {}).get("network") or {}).get("address") or ""
                if address:
                    by_address.setdefault(address.split("/", 1)[0], []).append(name)
                variables = host_vars(dom, hv, now, batch, batch_known, state_kwargs, loopback_jump)
                if dom.slot is not None:
                    image = dom.slot["image"]
                    variables["farm_image_withdrawn"] = (
                        image_volume_stem(image["identifier"], image["version"]) in withdrawn
                    )
                variables = host_data(variables, memo)
                inventory.add_host(name, group=hv_group)
                host = inventory.get_host(name)
                for key, value in variables.items():
                    host.set_variable(key, value)
                self._add_slot_groups(name, dom, variables, newest)
                if constructed:
                    self._set_composite_vars(compose, variables, name, strict=strict)
                    self._add_host_to_composed_groups(groups, variables, name, strict=strict)
                    self._add_host_to_keyed_groups(keyed, variables, name, strict=strict)

        conflicts = {address: names for address, names in sorted(by_address.items()) if len(names) > 1}
        inventory.add_group("farm_address_conflict")
        for address, names in conflicts.items():
            self.display.warning(f"batchvirt.farm.slots: the slots {', '.join(names)} share the address {address}")
            for name in names:
                inventory.add_child("farm_address_conflict", name)
        inventory.set_variable("all", "farm_address_conflicts", host_data(conflicts))
        inventory.set_variable("all", "farm_unreachable_hypervisors", host_data(unreachable))
        inventory.set_variable("all", "farm_inventory_time", format_time(now))

    def _add_slot_groups(self, name: str, dom: DomainRecord, variables: Dict[str, Any], newest: Dict[str, str]) -> None:
        """The lifecycle, image, outdated and withdrawn groups of one host (a golden node and a
        foreign domain get only their own group: they are never drained or recycled)."""
        inventory = self.inventory
        if dom.slot is None:
            inventory.add_child("farm_foreign", name)
            return
        if (dom.slot.get("extra") or {}).get("purpose") == "golden":
            inventory.add_child(inventory.add_group("farm_golden"), name)
            return
        inventory.add_child("farm_lifecycle_" + variables["farm_lifecycle"], name)
        image = dom.slot["image"]
        ident = safe_group(image["identifier"])
        inventory.add_child(inventory.add_group("farm_image_" + ident), name)
        inventory.add_child(inventory.add_group("farm_image_" + ident + "_" + safe_group(image["version"])), name)
        if image["version"] != newest[image["identifier"]]:
            inventory.add_child("farm_image_outdated", name)
        if variables.get("farm_image_withdrawn"):
            inventory.add_child("farm_image_withdrawn", name)
        if variables.get("farm_backoff_until"):
            inventory.add_child("farm_backoff", name)
