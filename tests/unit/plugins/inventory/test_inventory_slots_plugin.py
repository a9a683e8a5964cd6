"""Unit tests of the batchvirt.farm.slots inventory plugin: configuration checks, grouping,
host variables, the partial-failure policy, the batch merge and the cache.

The farm data is plain Python (the records the libvirt reader returns); the tests that go
through ``parse()`` use libvirt's in-process test driver (no daemon)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import pytest
from ansible import constants as C
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring

from ansible_collections.batchvirt.farm.plugins.inventory import slots as slots_plugin
from ansible_collections.batchvirt.farm.plugins.module_utils import _inventory
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import STATES, BatchView
from ansible_collections.batchvirt.farm.plugins.module_utils._version import version_key
from ansible_collections.batchvirt.farm.plugins.plugin_utils._slots_hypervisors import (
    hypervisor_from_entry,
    make_hypervisor,
)
from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node

NOW = EPOCH + 12 * HOUR  # 2026-11-21T12:00:00Z
NAME = "batchvirt.farm.slots"


@pytest.fixture(scope="module", autouse=True)
def _plugin_config():
    """Register the plugin's options (with the constructed and inventory_cache fragments) as
    the plugin loader would; the loader itself cannot run once pytest imported the collection."""
    doc = get_docstring(slots_plugin.__file__, fragment_loader, is_module=False)[0]
    C.config.initialize_plugin_configuration_definitions("inventory", NAME, doc["options"])


def new_plugin():
    plugin = slots_plugin.InventoryModule()
    plugin._load_name = NAME
    plugin.ansible_name = NAME
    return plugin


def make_plugin(**options):
    plugin = new_plugin()
    plugin.inventory = InventoryData()
    plugin.set_options(direct={"plugin": NAME, **options})
    return plugin


def record(name, hv="hv1", running=True, **kwargs):
    meta = slot(name, hv, **kwargs)
    return {"domain": name, "state": 1 if running else 5, "slot": meta.to_dict(), "error": ""}


def farm_data(*hypervisors, batch=None, batch_error=""):
    return {
        "format": slots_plugin.CACHE_FORMAT,
        "hypervisors": [
            {"name": name, "uri": uri, "domains": domains, "error": error, "seconds": 0.0}
            for name, uri, domains, error in hypervisors
        ],
        "batch": batch,
        "batch_error": batch_error,
    }


def populate(plugin, data, hypervisors=None):
    hvs = hypervisors or [make_hypervisor(h["uri"], h["name"]) for h in data["hypervisors"]]
    plugin._populate(data, hvs, NOW)
    return plugin.inventory


def group_hosts(inventory, group):
    return sorted(h.name for h in inventory.groups[group].get_hosts())


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("farm.farm.slots.yml", True),
        ("site.farm.slots.yaml", True),
        ("farm_slots.yml", True),
        ("farm_slots.yaml", True),
        ("farm.yml", False),
        ("slots.yml", False),
        ("farm.farm.slots.yml.bak", False),
    ],
)
def test_verify_file_checks_the_suffix(tmp_path, path, expected):
    target = tmp_path / path
    target.write_text("plugin: batchvirt.farm.slots\n")
    assert make_plugin().verify_file(str(target)) is expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (42, "hypervisors[0]: expected a libvirt URI or a dictionary with 'uri', got int"),
        ("hv01.example.org", "hypervisors[0].uri: 'hv01.example.org' is not a libvirt URI"),
        ({"name": "hv1"}, "hypervisors[0].uri: None is not a libvirt URI"),
        ({"uri": "qemu:///system", "host": "x"}, "hypervisors[0]: unknown key(s) host; allowed keys are name,"),
        ({"uri": "qemu:///system", "ssh_port": "ssh"}, "hypervisors[0].ssh_port: 'ssh' is not a port number"),
    ],
)
def test_bad_hypervisor_entries_name_the_option(entry, message):
    with pytest.raises(AnsibleParserError) as exc:
        hypervisor_from_entry(entry, 0)
    assert message in str(exc.value)


def test_no_hypervisors_is_refused_with_what_to_set():
    plugin = make_plugin()
    with pytest.raises(AnsibleParserError, match="set the option hypervisors"):
        plugin._hypervisors()


def test_duplicate_hypervisor_names_are_refused():
    plugin = make_plugin(hypervisors=["qemu+ssh://root@hv1/system", {"uri": "qemu+tls://hv1/system"}])
    with pytest.raises(AnsibleParserError, match="the name 'hv1' is used by qemu\\+ssh://root@hv1/system and"):
        plugin._hypervisors()


def test_batch_needs_a_system():
    plugin = make_plugin(hypervisors=["test:///default"], batch={"partition": "vm"})
    with pytest.raises(AnsibleParserError, match="batch.system: required when batch is set"):
        plugin._batch_option()


def test_hypervisor_group_must_be_loaded_before():
    plugin = make_plugin(hypervisor_group="hypervisors")
    with pytest.raises(AnsibleParserError, match="hypervisor_group: the group 'hypervisors' is not in the inventory"):
        plugin._hypervisors()


def test_hypervisor_group_renders_the_uri_template():
    plugin = make_plugin(hypervisor_group="hvs")
    plugin.templar = _templar()
    inv = plugin.inventory
    inv.add_group("hvs")
    inv.add_host("hv01", group="hvs")
    inv.set_variable("hv01", "ansible_host", "192.0.2.1")
    inv.set_variable("hv01", "ansible_user", "admin")
    inv.add_host("hv02", group="hvs")
    hvs = plugin._hypervisors()
    assert [(h.name, h.uri, h.ssh_host, h.ssh_user) for h in hvs] == [
        ("hv01", "qemu+ssh://root@192.0.2.1/system", "192.0.2.1", "admin"),
        ("hv02", "qemu+ssh://root@hv02/system", "hv02", "root"),
    ]


def test_hypervisor_group_takes_group_variables():
    """A site sets the SSH user and port once, on the hypervisors' group (#19); the host's own win."""
    plugin = make_plugin(
        hypervisor_group="hvs",
        uri_template="qemu+ssh://{{ ansible_user }}@{{ ansible_host }}:{{ ansible_port }}/system",
    )
    plugin.templar = _templar()
    inv = plugin.inventory
    inv.add_group("hvs")
    inv.set_variable("hvs", "ansible_user", "admin")
    inv.set_variable("hvs", "ansible_port", 2222)
    inv.set_variable("all", "ansible_port", 22)
    inv.add_host("hv01", group="hvs")
    inv.set_variable("hv01", "ansible_host", "192.0.2.1")
    inv.add_host("hv02", group="hvs")
    inv.set_variable("hv02", "ansible_host", "192.0.2.2")
    inv.set_variable("hv02", "ansible_user", "root")
    hvs = plugin._hypervisors()
    assert [(h.name, h.uri, h.ssh_user, h.ssh_port) for h in hvs] == [
        ("hv01", "qemu+ssh://admin@192.0.2.1:2222/system", "admin", 2222),
        ("hv02", "qemu+ssh://root@192.0.2.2:2222/system", "root", 2222),
    ]


def trusted(template):
    """Config files are trusted templates (``_read_config_data`` tags them); mimic that."""
    try:
        from ansible.template import trust_as_template
    except ImportError:  # ansible-core < 2.19
        return template
    return trust_as_template(template)


def _templar():
    from ansible.template import Templar

    return Templar(loader=DataLoader())


@pytest.mark.parametrize(
    ("uri", "name", "ssh_host", "ssh_user", "local"),
    [
        ("qemu+ssh://root@hv01.example.org/system", "hv01.example.org", "hv01.example.org", "root", False),
        ("qemu+tls://hv02:16514/system", "hv02", "hv02", "", False),
        ("qemu:///system", "localhost", "", "", True),
        ("test:///var/tmp/farm/hv07.xml", "hv07", "", "", True),
        ("qemu+tcp://127.0.0.1:16509/system", "127.0.0.1", "127.0.0.1", "", True),
    ],
)
def test_hypervisor_names_and_addresses_from_the_uri(uri, name, ssh_host, ssh_user, local):
    hv = make_hypervisor(uri)
    assert (hv.name, hv.ssh_host, hv.ssh_user, hv.local) == (name, ssh_host, ssh_user, local)


def test_bad_now_names_the_option(monkeypatch):
    monkeypatch.setenv("BATCHVIRT_FARM_NOW", "yesterday")
    with pytest.raises(ValueError, match="BATCHVIRT_FARM_NOW: 'yesterday' is not an ISO-8601 time"):
        _inventory.farm_now()
    assert _inventory.farm_now("2026-11-21T12:00:00Z") == NOW


# -- grouping and variables -----------------------------------------------------------------------


def test_every_lifecycle_group_exists_even_empty():
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", [record("s1")], "")))
    for state in STATES:
        assert "farm_lifecycle_" + state in inv.groups
    assert group_hosts(inv, "farm_lifecycle_active") == ["s1"]
    assert group_hosts(inv, "farm_lifecycle_stopped") == []


def test_lifecycle_groups_and_enabled_flag():
    domains = [
        record("active1"),
        record("expiring1", lifetime_h=13),  # drain_at in 1 h
        record("draining1", lifetime_h=11),  # drain started, no batch view
        record("requested1", drain_requested=True),
        record("expired1", lifetime_h=6, walltime_h=1),
        record("stopped1", running=False),
        record("provisioning1", created_at=NOW - datetime.timedelta(minutes=5)),
    ]
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", domains, "")))
    expected = {
        "active1": "active",
        "expiring1": "expiring",
        "draining1": "draining",
        "requested1": "draining",
        "expired1": "expired",
        "stopped1": "stopped",
        "provisioning1": "provisioning",
    }
    for name, state in expected.items():
        host = inv.get_host(name)
        assert host.vars["farm_lifecycle"] == state, name
        assert name in group_hosts(inv, "farm_lifecycle_" + state)
        assert host.vars["farm_enabled"] is (state in ("active", "expiring", "provisioning")), name


def test_golden_nodes_stay_out_of_every_lifecycle_group():
    golden = record("golden-el9")
    golden["slot"]["extra"] = {"purpose": "golden"}
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", [record("s1"), golden], "")))
    assert group_hosts(inv, "farm_golden") == ["golden-el9"]
    for state in STATES:
        assert "golden-el9" not in group_hosts(inv, "farm_lifecycle_" + state)
    assert inv.get_host("golden-el9").vars["farm_enabled"] is False
    assert group_hosts(inv, "farm_lifecycle_active") == ["s1"]


def test_host_variables():
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", [record("s1", ssh_port=10022)], "")))
    hv = inv.get_host("s1").vars
    assert hv["farm_hypervisor"] == "hv1"
    assert hv["farm_hypervisor_uri"] == "test:///x/hv1.xml"
    assert hv["farm_domain"] == "s1"
    assert hv["farm_domain_state"] == "running"
    assert hv["farm_image"] == {"identifier": "worker-el9", "version": "2026.11.1"}
    assert hv["farm_drain_at"] == "2026-11-22T00:00:00Z"
    assert hv["farm_deadline"] == "2026-11-22T12:00:00Z"
    assert hv["farm_seconds_to_drain"] == 12 * 3600
    assert hv["farm_slot"]["image"]["sha512"] == "ab" * 64
    assert hv["farm_slot"]["name"] == "s1"
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("127.0.0.1", 10022, "root")
    assert "ansible_ssh_common_args" not in hv  # local hypervisor: the forward is reachable as is
    assert "farm_batch_state" not in hv and "farm_batch_jobs" not in hv
    assert inv.groups["all"].vars["farm_unreachable_hypervisors"] == []
    assert inv.groups["all"].vars["farm_inventory_time"] == "2026-11-21T12:00:00Z"


def test_loopback_forward_on_a_remote_hypervisor_goes_through_proxyjump():
    hv = make_hypervisor("qemu+ssh://admin@hv9.example.org:2222/system", "hv9", ssh_port=2222)
    data = farm_data(("hv9", hv.uri, [record("s1", "hv9", ssh_port=10022)], ""))
    inv = populate(make_plugin(), data, [hv])
    hostvars = inv.get_host("s1").vars
    assert hostvars["ansible_host"] == "127.0.0.1"
    assert hostvars["ansible_port"] == 10022
    assert hostvars["ansible_ssh_common_args"] == "-o ProxyJump=admin@hv9.example.org:2222"

    inv = populate(make_plugin(loopback_access="hypervisor_address"), data, [hv])
    hostvars = inv.get_host("s1").vars
    assert hostvars["ansible_host"] == "hv9.example.org"
    assert "ansible_ssh_common_args" not in hostvars


def test_hypervisor_and_image_groups_and_outdated():
    domains1 = [
        record("a", version="2026.11.1"),
        record("b", version="2026.11.10"),
        record("c", identifier="gpu.worker", version="1.0-rc1"),
    ]
    domains2 = [record("d", "hv.two", version="2026.11.2")]
    inv = populate(
        make_plugin(),
        farm_data(("hv1", "test:///x/hv1.xml", domains1, ""), ("hv.two", "test:///x/hv2.xml", domains2, "")),
    )
    assert group_hosts(inv, "farm_hypervisor_hv1") == ["a", "b", "c"]
    assert group_hosts(inv, "farm_hypervisor_hv_two") == ["d"]
    assert group_hosts(inv, "farm_image_worker_el9") == ["a", "b", "d"]
    assert group_hosts(inv, "farm_image_worker_el9_2026_11_1") == ["a"]
    assert group_hosts(inv, "farm_image_gpu_worker_1_0_rc1") == ["c"]
    # 2026.11.10 is newer than 2026.11.1 (natural order); hv.two's newest is its own 2026.11.2
    assert group_hosts(inv, "farm_image_outdated") == ["a"]


def test_version_key_is_natural():
    versions = ["1.10", "1.9", "1.9.1", "2026.01.5", "1.0-rc1"]
    assert sorted(versions, key=version_key) == ["1.0-rc1", "1.9", "1.9.1", "1.10", "2026.01.5"]


def test_foreign_domains_only_when_asked():
    domains = [record("s1"), {"domain": "web", "state": 1, "slot": None, "error": ""}]
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", domains, "")))
    assert "web" not in inv.hosts and "farm_foreign" not in inv.groups
    inv = populate(make_plugin(include_foreign=True), farm_data(("hv1", "test:///x/hv1.xml", domains, "")))
    assert group_hosts(inv, "farm_foreign") == ["web"]
    assert "farm_lifecycle" not in inv.get_host("web").vars


def test_constructed_compose_groups_and_keyed_groups():
    plugin = make_plugin(
        compose={"slot_hours_left": trusted("farm_seconds_to_drain // 3600")},
        groups={"long_lived": trusted("farm_seconds_to_drain > 3600")},
        keyed_groups=[{"key": trusted("farm_image.version"), "prefix": "v"}],
    )
    plugin.templar = _templar()
    inv = populate(plugin, farm_data(("hv1", "test:///x/hv1.xml", [record("s1"), record("s2", lifetime_h=12.5)], "")))
    assert inv.get_host("s1").vars["slot_hours_left"] == 12
    assert group_hosts(inv, "long_lived") == ["s1"]
    assert group_hosts(inv, "v_2026_11_1") == ["s1", "s2"]


def test_strict_fails_on_a_bad_compose():
    plugin = make_plugin(compose={"x": trusted("farm_no_such_var + 1")}, strict=True)
    plugin.templar = _templar()
    with pytest.raises(AnsibleError, match="Could not set x for host s1"):
        populate(plugin, farm_data(("hv1", "test:///x/hv1.xml", [record("s1")], "")))


# -- failure policy ------------------------------------------------------------------------------


def test_unreachable_hypervisor_warns_and_is_listed(monkeypatch):
    warnings = []
    plugin = make_plugin()
    monkeypatch.setattr(plugin.display, "warning", warnings.append)
    data = farm_data(("hv1", "test:///x/hv1.xml", [record("s1")], ""), ("hv2", "qemu+tcp://hv2/system", [], "boom"))
    inv = populate(plugin, data)
    assert inv.groups["all"].vars["farm_unreachable_hypervisors"] == [
        {"name": "hv2", "uri": "qemu+tcp://hv2/system", "error": "boom"}
    ]
    assert warnings == ["batchvirt.farm.slots: hypervisor hv2 left out: boom"]
    assert group_hosts(inv, "farm_hypervisor_hv2") == []
    assert "s1" in inv.hosts


def test_fail_on_errors_fails_the_refresh():
    data = farm_data(("hv1", "test:///x/hv1.xml", [record("s1")], ""), ("hv2", "qemu+tcp://hv2/system", [], "boom"))
    make_plugin()._check_errors(data)  # default: no failure
    with pytest.raises(AnsibleError, match=r"refresh failed \(fail_on_errors is true\): hv2: boom"):
        make_plugin(fail_on_errors=True)._check_errors(data)


def test_bad_metadata_and_duplicate_names_are_left_out_with_a_warning(monkeypatch):
    warnings = []
    plugin = make_plugin()
    monkeypatch.setattr(plugin.display, "warning", warnings.append)
    bad = {"domain": "broken", "state": 1, "slot": None, "error": "slot metadata: <deadline> is missing"}
    data = farm_data(
        ("hv1", "test:///x/hv1.xml", [record("s1"), bad], ""), ("hv2", "test:///x/hv2.xml", [record("s1", "hv2")], "")
    )
    inv = populate(plugin, data)
    assert "broken" not in inv.hosts
    assert inv.get_host("s1").vars["farm_hypervisor"] == "hv1"
    assert warnings == [
        "batchvirt.farm.slots: domain broken on hv1 left out: slot metadata: <deadline> is missing",
        "batchvirt.farm.slots: slot s1 on hv2 left out: a slot of that name was already read from hv1",
    ]
    with pytest.raises(AnsibleError, match="hv1/broken: slot metadata: <deadline> is missing"):
        make_plugin(fail_on_errors=True)._check_errors(data)


# -- batch merge ---------------------------------------------------------------------------------


class FakeAdapter:
    def __init__(self, views, fail=None):
        self.views = views
        self.fail = fail
        self.calls = []

    def bulk_view(self, node_names):
        self.calls.append(list(node_names))
        if self.fail:
            raise RuntimeError(self.fail)
        return {n: v for n, v in self.views.items() if n in node_names}


def _farm_file(tmp_path, domains):
    return write_test_node(str(tmp_path / "hv1.xml"), domains)


def test_batch_view_is_merged_with_one_bulk_query(tmp_path, monkeypatch):
    uri = _farm_file(
        tmp_path,
        [
            ("s1", slot("s1", "hv1", lifetime_h=11), True),  # drain started: drained once no job runs
            ("s2", slot("s2", "hv1", lifetime_h=11), True),  # draining: a job runs
            ("s3", slot("s3", "hv1", created_at=NOW - HOUR / 6), True),  # not registered yet: provisioning
            ("s4", slot("s4", "hv1", created_at=NOW - HOUR / 6), True),  # unknown to the batch system yet
        ],
    )
    adapter = FakeAdapter(
        {
            "s1": BatchView(True, drain=True, jobs=0, state="drained"),
            "s2": BatchView(True, drain=True, jobs=2, state="draining"),
            "s3": BatchView(False, state="future"),
        }
    )
    plugin = make_plugin(hypervisors=[uri], batch={"system": "slurm", "partition": "vm"})
    seen = []
    monkeypatch.setattr(plugin, "_batch_adapter", lambda system, opts: seen.append((system, opts)) or adapter)
    data = plugin._fetch(plugin._hypervisors())
    inv = populate(plugin, data)
    assert seen == [("slurm", {"partition": "vm"})]
    assert adapter.calls == [["s1", "s2", "s3", "s4"]]
    states = {h: inv.get_host(h).vars["farm_lifecycle"] for h in ("s1", "s2", "s3", "s4")}
    assert states == {"s1": "drained", "s2": "draining", "s3": "provisioning", "s4": "provisioning"}
    assert inv.get_host("s2").vars["farm_batch_jobs"] == 2
    assert inv.get_host("s2").vars["farm_batch_state"] == "draining"
    assert inv.get_host("s4").vars["farm_batch_state"] == "unknown"


def test_slots_the_batch_system_lost_are_failed_and_not_enabled(tmp_path, monkeypatch):
    uri = _farm_file(
        tmp_path,
        [
            ("never", slot("never", "hv1"), True),  # 12 h old, never registered
            ("down", slot("down", "hv1"), True),  # registered once, now reported down
            ("fine", slot("fine", "hv1"), True),
        ],
    )
    adapter = FakeAdapter(
        {
            "never": BatchView(False, state="future"),
            "down": BatchView(False, state="down"),
            "fine": BatchView(True, state="idle"),
        }
    )
    plugin = make_plugin(hypervisors=[uri], batch={"system": "slurm"})
    monkeypatch.setattr(plugin, "_batch_adapter", lambda system, opts: adapter)
    inv = populate(plugin, plugin._fetch(plugin._hypervisors()))
    assert {h: inv.get_host(h).vars["farm_lifecycle"] for h in ("never", "down", "fine")} == {
        "never": "failed",
        "down": "failed",
        "fine": "active",
    }
    assert sorted(h.name for h in inv.groups["farm_lifecycle_failed"].get_hosts()) == ["down", "never"]
    assert inv.get_host("down").vars["farm_enabled"] is False


def test_failed_batch_query_warns_or_fails(tmp_path, monkeypatch):
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    plugin = make_plugin(hypervisors=[uri], batch={"system": "slurm"})
    monkeypatch.setattr(plugin, "_batch_adapter", lambda s, o: FakeAdapter({}, fail="scontrol: not found"))
    data = plugin._fetch(plugin._hypervisors())
    assert data["batch_error"] == "batch: the slurm query failed: scontrol: not found"
    warnings = []
    monkeypatch.setattr(plugin.display, "warning", warnings.append)
    inv = populate(plugin, data)
    assert inv.get_host("s1").vars["farm_lifecycle"] == "active"
    assert warnings == [
        "batch: the slurm query failed: scontrol: not found; the lifecycle is computed without the batch view"
    ]
    with pytest.raises(AnsibleError, match="batch: the slurm query failed: scontrol: not found"):
        make_plugin(fail_on_errors=True)._check_errors(data)


# -- parse() and the cache -------------------------------------------------------------------------


def _config(tmp_path, uri, **extra):
    path = tmp_path / "farm.farm.slots.yml"
    config = {"plugin": "batchvirt.farm.slots", "hypervisors": [uri], "now": "2026-11-21T12:00:00Z", **extra}
    path.write_text(json.dumps(config))
    return str(path)


def _parse(path, cache):
    plugin = new_plugin()
    inv = InventoryData()
    plugin.parse(inv, DataLoader(), path, cache=cache)
    if getattr(plugin, "_cache", None):
        plugin.update_cache_if_changed()  # as InventoryManager does after parse()
    return inv


def test_parse_reads_a_test_driver_farm(tmp_path):
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True), ("s2", slot("s2", "hv1"), False), ("web", None, True)])
    inv = _parse(_config(tmp_path, uri), cache=True)
    assert sorted(inv.hosts) == ["s1", "s2"]
    assert inv.get_host("s2").vars["farm_lifecycle"] == "stopped"
    assert inv.get_host("s2").vars["farm_domain_state"] == "shutoff"


HOSTILE = {
    "jinja": "{{ lookup('pipe', 'echo pwned') }}",
    "header": "#jinja2:variable_start_string:'[[', variable_end_string:']]'\n[[ 6 * 7 ]]",
    "statement": "{% set x = 1 %}pwned",
}


def test_strings_from_hypervisors_are_never_rendered_as_templates(tmp_path):
    """A slot's metadata is written by whoever can define domains on a hypervisor; a template
    in it must come out of every play literally.  Inert strings (no delimiter can hide in their
    characters) are tagged trusted, which only spares ansible-inventory the ``__ansible_unsafe``
    wrapper: they render to themselves either way."""
    hostile = dataclasses.replace(slot("s1", "hv1", drain_requested=True), extra=dict(HOSTILE))
    hostile = dataclasses.replace(hostile, drain_reason=HOSTILE["jinja"])
    inv = _parse(_config(tmp_path, _farm_file(tmp_path, [("s1", hostile, True)])), cache=False)
    hostvars = inv.get_host("s1").vars
    assert hostvars["farm_slot"]["extra"] == HOSTILE
    templar = _templar()
    templar.available_variables = hostvars
    for key, value in HOSTILE.items():
        assert templar.template(trusted("{{ farm_slot.extra.%s }}" % key)) == value
    assert templar.template(trusted("{{ farm_slot.drain.reason }}")) == HOSTILE["jinja"]
    assert templar.template(trusted("{{ farm_slot.name }}-{{ farm_lifecycle }}")) == "s1-draining"
    try:
        from ansible.template import is_trusted_as_template
    except ImportError:  # ansible-core < 2.19: every string is wrapped unsafe instead
        return
    assert not is_trusted_as_template(hostvars["farm_slot"]["drain"]["reason"])
    assert not any(is_trusted_as_template(v) for v in hostvars["farm_slot"]["extra"].values())
    assert is_trusted_as_template(hostvars["farm_slot"]["name"])
    assert is_trusted_as_template(hostvars["farm_slot"]["created_at"])


def test_cache_is_used_refreshed_on_flush_and_ttl_not_reset(tmp_path):
    cache_dir = tmp_path / "cache"
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    path = _config(
        tmp_path, uri, cache=True, cache_plugin="jsonfile", cache_connection=str(cache_dir), cache_timeout=3600
    )
    assert sorted(_parse(path, cache=True).hosts) == ["s1"]
    files = list(cache_dir.iterdir())
    assert len(files) == 1
    # the farm changes; a cached refresh still shows the old farm and does not rewrite the cache
    _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True), ("s2", slot("s2", "hv1"), True)])
    os.utime(files[0], None)
    mtime = files[0].stat().st_mtime
    assert sorted(_parse(path, cache=True).hosts) == ["s1"]
    assert files[0].stat().st_mtime == mtime, "a cache hit must not rewrite the entry (TTL reset)"
    # --flush-cache (cache=False) reads the farm again and refreshes the entry
    assert sorted(_parse(path, cache=False).hosts) == ["s1", "s2"]
    assert sorted(_parse(path, cache=True).hosts) == ["s1", "s2"]


def test_cache_holds_raw_data_so_the_lifecycle_follows_the_clock(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    config = {"cache": True, "cache_plugin": "jsonfile", "cache_connection": str(cache_dir)}
    assert _parse(_config(tmp_path, uri, **config), cache=True).get_host("s1").vars["farm_lifecycle"] == "active"
    later = _config(tmp_path, uri, now="2026-11-22T06:00:00Z", **config)
    assert _parse(later, cache=True).get_host("s1").vars["farm_lifecycle"] == "draining"


def test_unknown_batch_system_names_the_option(tmp_path):
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    plugin = make_plugin(hypervisors=[uri], batch={"system": "pbs"})
    with pytest.raises(
        AnsibleParserError, match="batch: cannot use batch system 'pbs' with options {}: system='pbs' is not supported"
    ):
        plugin._fetch(plugin._hypervisors())


def test_real_slurm_adapter_failure_is_a_warning(tmp_path):
    """The real adapter (module_utils._batch) with commands that do not exist: one failed query."""
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    plugin = make_plugin(hypervisors=[uri], batch={"system": "slurm", "bin_dir": str(tmp_path / "nowhere")})
    data = plugin._fetch(plugin._hypervisors())
    assert data["batch"] is None
    assert data["batch_error"].startswith("batch: the slurm query failed: ")


# -- withdrawn images, old cache entries, group variables (issue 14) ------------------------------


def _stem(rec):
    image = rec["slot"]["image"]
    return "%s_%s" % (image["identifier"], image["version"])


def test_slots_on_a_withdrawn_image_are_grouped_and_flagged():
    old, new, golden = record("old", version="2026.11.1"), record("new", version="2026.11.2"), record("g")
    golden["slot"]["extra"] = {"purpose": "golden"}
    data = farm_data(("hv1", "test:///x/hv1.xml", [old, new, golden], ""))
    data["hypervisors"][0]["withdrawn"] = [_stem(old)]
    inv = populate(make_plugin(), data)
    assert group_hosts(inv, "farm_image_withdrawn") == ["old"], "a golden node is never rolled"
    assert inv.get_host("old").vars["farm_image_withdrawn"] is True
    assert inv.get_host("new").vars["farm_image_withdrawn"] is False
    assert inv.get_host("g").vars["farm_image_withdrawn"] is True
    # the group exists (empty) when nothing is withdrawn, so a play can always target it
    inv = populate(make_plugin(), farm_data(("hv1", "test:///x/hv1.xml", [record("s1")], "")))
    assert group_hosts(inv, "farm_image_withdrawn") == []


def test_withdrawn_markers_are_read_from_the_image_pool(tmp_path):
    """A real libvirt (test driver) pool holding the cache's marker volume."""
    s1, s2 = slot("s1", "hv1", version="2026.11.1"), slot("s2", "hv1", version="2026.11.2")
    uri = write_test_node(str(tmp_path / "hv1.xml"), [("s1", s1, True), ("s2", s2, True)])
    marker = "%s_%s.withdrawn" % (s1.image_identifier, s1.image_version)
    pool = (
        "<pool type='dir'><name>batchvirt-images</name><uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>"
        "<target><path>%s</path></target>"
        "<volume type='file'><name>%s</name><capacity>0</capacity></volume>"
        "<volume type='file'><name>%s_%s.qcow2</name><capacity>1024</capacity></volume></pool>"
        % (tmp_path, marker, s1.image_identifier, s1.image_version)
    )
    text = (tmp_path / "hv1.xml").read_text().replace("</node>", pool + "</node>")
    (tmp_path / "hv1.xml").write_text(text)
    inv = _parse(_config(tmp_path, uri), cache=False)
    assert group_hosts(inv, "farm_image_withdrawn") == ["s1"]
    # another pool name: nothing is looked up there, nothing is withdrawn
    inv = _parse(_config(tmp_path, uri, image_pool="other-pool"), cache=False)
    assert group_hosts(inv, "farm_image_withdrawn") == []


def _cache_entry(path):
    """The plugin's data in a jsonfile cache entry (ansible-core 2.19 wraps it in ``__payload__``)."""
    stored = json.loads(path.read_text())
    return json.loads(stored["__payload__"]) if "__payload__" in stored else stored


def _rewrite_cache_entry(path, **changes):
    stored = json.loads(path.read_text())
    data = _cache_entry(path)
    data.update(changes)
    if "__payload__" in stored:
        stored["__payload__"] = json.dumps(data)
    else:
        stored = data
    path.write_text(json.dumps(stored))


def test_a_cache_entry_of_an_old_format_is_replaced(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    uri = _farm_file(tmp_path, [("s1", slot("s1", "hv1"), True)])
    path = _config(tmp_path, uri, cache=True, cache_plugin="jsonfile", cache_connection=str(cache_dir))
    assert sorted(_parse(path, cache=True).hosts) == ["s1"]
    (entry,) = list(cache_dir.iterdir())
    _rewrite_cache_entry(entry, format=slots_plugin.CACHE_FORMAT - 1)  # as an older collection wrote it
    fetches = []
    real_fetch = slots_plugin.InventoryModule._fetch
    monkeypatch.setattr(
        slots_plugin.InventoryModule, "_fetch", lambda self, hvs: fetches.append(1) or real_fetch(self, hvs)
    )
    assert sorted(_parse(path, cache=True).hosts) == ["s1"]
    assert _cache_entry(entry)["format"] == slots_plugin.CACHE_FORMAT, "the old entry must be replaced"
    assert sorted(_parse(path, cache=True).hosts) == ["s1"]
    assert fetches == [1], "after one refetch the cache answers again"


def test_hypervisor_group_sees_group_variables_as_constructed_does():
    plugin = make_plugin(hypervisor_group="hvs")
    plugin.templar = _templar()
    inv = plugin.inventory
    inv.add_group("hvs")
    inv.add_group("site_a")
    inv.add_child("hvs", "site_a")
    inv.set_variable("hvs", "ansible_user", "farm")
    inv.set_variable("site_a", "ansible_port", 2222)
    inv.add_host("hv01", group="site_a")
    inv.set_variable("hv01", "ansible_host", "192.0.2.1")
    inv.add_host("hv02", group="hvs")
    inv.set_variable("hv02", "ansible_user", "admin")  # a host variable wins over its group's
    hvs = plugin._hypervisors()
    assert sorted((h.name, h.uri, h.ssh_host, h.ssh_user, h.ssh_port) for h in hvs) == [
        ("hv01", "qemu+ssh://root@192.0.2.1/system", "192.0.2.1", "farm", 2222),
        ("hv02", "qemu+ssh://root@hv02/system", "hv02", "admin", 0),
    ]


def test_a_crashed_slot_is_failed_even_without_a_batch_view(tmp_path):
    uri = _farm_file(
        tmp_path,
        [
            ("crashed", slot("crashed", "hv1"), 6),
            ("fine", slot("fine", "hv1"), True),
            ("off", slot("off", "hv1"), False),
        ],
    )
    plugin = make_plugin(hypervisors=[uri])
    inv = populate(plugin, plugin._fetch(plugin._hypervisors()))
    states = {h: inv.get_host(h).vars["farm_lifecycle"] for h in ("crashed", "fine", "off")}
    assert states == {"crashed": "failed", "fine": "active", "off": "stopped"}
    assert inv.get_host("crashed").vars["farm_enabled"] is False


def test_slots_in_backoff_are_grouped_with_the_end_of_their_backoff():
    held = slot("w-held", "hv1").with_failures(3, NOW - HOUR, "worker-el9/2026.11.1", "slurm: down", NOW + HOUR)
    passed = slot("w-passed", "hv1").with_failures(4, NOW - 3 * HOUR, "worker-el9/2026.11.1", "x", NOW - HOUR)
    domains = [
        {"domain": "w-held", "state": 5, "slot": held.to_dict(), "error": ""},
        {"domain": "w-passed", "state": 5, "slot": passed.to_dict(), "error": ""},
        record("w-ok"),
    ]
    inventory = populate(
        make_plugin(hypervisors=["test:///default"]), farm_data(("hv1", "test:///default", domains, ""))
    )
    assert group_hosts(inventory, "farm_backoff") == ["w-held"]
    hosts = {name: inventory.get_host(name).get_vars() for name in ("w-held", "w-passed", "w-ok")}
    assert hosts["w-held"]["farm_backoff_until"] == "2026-11-21T13:00:00Z" and hosts["w-held"]["farm_failures"] == 3
    assert "farm_backoff_until" not in hosts["w-passed"] and hosts["w-passed"]["farm_failures"] == 4
    assert "farm_backoff_until" not in hosts["w-ok"] and hosts["w-ok"]["farm_failures"] == 0
    assert hosts["w-held"]["farm_lifecycle"] == "stopped"  # the back-off does not change the lifecycle


def test_health_grace_option_sets_when_a_down_node_is_failed():
    view = BatchView(registered=False, state="down", state_since=NOW - 200 * datetime.timedelta(seconds=1))
    data = farm_data(("hv1", "test:///default", [record("w1")], ""), batch={"w1": _inventory.batch_view_to_json(view)})
    default = populate(make_plugin(hypervisors=["test:///default"]), data)
    assert default.get_host("w1").get_vars()["farm_lifecycle"] != "failed"  # 200 s < 300 s
    short = populate(make_plugin(hypervisors=["test:///default"], health_grace=120), data)
    assert short.get_host("w1").get_vars()["farm_lifecycle"] == "failed"
