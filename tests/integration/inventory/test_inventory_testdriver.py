"""batchvirt.farm.slots through ``ansible-inventory`` against libvirt test-driver farms:
lifecycle groups, variables, foreign domains, the partial-failure policy, timeouts and
hypervisors taken from another inventory source."""

from __future__ import annotations

import socket
import time

import yaml

from tests.integration.inventory.conftest import run_inventory
from tests.integration.inventory.farm_xml import EPOCH, HOUR, slot, write_test_node

NOW = "2026-11-21T12:00:00Z"
UNREACHABLE = "qemu+tcp://127.0.0.1:1/system"


def two_hypervisors(tmp_path):
    hv1 = write_test_node(
        str(tmp_path / "hv1.xml"),
        [
            ("hv1-s1", slot("hv1-s1", "hv1", ssh_port=10022), True),
            ("hv1-s2", slot("hv1-s2", "hv1", version="2026.11.2", lifetime_h=13), True),
            ("hv1-s3", slot("hv1-s3", "hv1", drain_requested=True), True),
            ("hv1-s4", slot("hv1-s4", "hv1"), False),
            ("web", None, True),
        ],
        seed=1,
    )
    hv2 = write_test_node(
        str(tmp_path / "hv2.xml"),
        [
            ("hv2-s1", slot("hv2-s1", "hv2", lifetime_h=6, walltime_h=1), True),
            ("hv2-s2", slot("hv2-s2", "hv2", created_at=EPOCH + 11.9 * HOUR), True),
        ],
        seed=2,
    )
    return hv1, hv2


def test_farm_groups_and_variables(tmp_path, inventory_file):
    hv1, hv2 = two_hypervisors(tmp_path)
    run = run_inventory(inventory_file(hypervisors=[hv1, {"uri": hv2, "name": "hv-two"}], now=NOW))
    assert run.hosts("farm_lifecycle_active") == ["hv1-s1"]
    assert run.hosts("farm_lifecycle_expiring") == ["hv1-s2"]
    assert run.hosts("farm_lifecycle_draining") == ["hv1-s3"]
    assert run.hosts("farm_lifecycle_stopped") == ["hv1-s4"]
    assert run.hosts("farm_lifecycle_expired") == ["hv2-s1"]
    assert run.hosts("farm_lifecycle_provisioning") == ["hv2-s2"]
    for state in ("drained",):  # empty, still listed so that plays can target it
        assert "farm_lifecycle_" + state in run.data["all"]["children"]
    assert run.hosts("farm_hypervisor_hv1") == ["hv1-s1", "hv1-s2", "hv1-s3", "hv1-s4"]
    assert run.hosts("farm_hypervisor_hv_two") == ["hv2-s1", "hv2-s2"]
    assert run.hosts("farm_image_worker_el9_2026_11_2") == ["hv1-s2"]
    assert run.hosts("farm_image_outdated") == ["hv1-s1", "hv1-s3", "hv1-s4"]
    assert "web" not in run.data["_meta"]["hostvars"]
    hostvars = run.hostvars("hv1-s1")
    assert hostvars["farm_lifecycle"] == "active"
    assert hostvars["farm_enabled"] is True
    assert hostvars["farm_hypervisor"] == "hv1"
    assert (hostvars["ansible_host"], hostvars["ansible_port"], hostvars["ansible_user"]) == (
        "127.0.0.1",
        10022,
        "root",
    )
    assert run.hostvars("hv1-s3")["farm_enabled"] is False
    assert run.hostvars("hv1-s3")["farm_slot"]["drain"]["reason"] == "kernel update"
    assert run.hostvars("hv2-s1")["farm_seconds_to_drain"] == 0
    assert run.hostvars("hv1-s1")["farm_unreachable_hypervisors"] == []


def test_clock_from_the_environment(tmp_path, inventory_file):
    hv1 = two_hypervisors(tmp_path)[0]
    run = run_inventory(inventory_file(hypervisors=[hv1]), env={"BATCHVIRT_FARM_NOW": "2026-11-22T00:30:00Z"})
    assert run.hosts("farm_lifecycle_draining") == ["hv1-s1", "hv1-s2", "hv1-s3"]


def test_foreign_domains_when_asked(tmp_path, inventory_file):
    hv1 = two_hypervisors(tmp_path)[0]
    run = run_inventory(inventory_file(hypervisors=[hv1], include_foreign=True, now=NOW))
    assert run.hosts("farm_foreign") == ["web"]
    assert run.hostvars("web")["farm_domain_state"] == "running"


def test_unreachable_hypervisor_is_a_warning_and_a_variable(tmp_path, inventory_file):
    hv1 = two_hypervisors(tmp_path)[0]
    run = run_inventory(inventory_file(hypervisors=[hv1, {"uri": UNREACHABLE, "name": "dead"}], now=NOW))
    assert "hypervisor dead left out: cannot connect to libvirt at qemu+tcp://127.0.0.1:1/system" in run.stderr
    assert run.hosts("farm_lifecycle_active") == ["hv1-s1"]
    unreachable = run.hostvars("hv1-s1")["farm_unreachable_hypervisors"]
    assert [(u["name"], u["uri"]) for u in unreachable] == [("dead", UNREACHABLE)]
    assert "Connection refused" in unreachable[0]["error"]


def test_fail_on_errors_fails_the_refresh(tmp_path, inventory_file):
    hv1 = two_hypervisors(tmp_path)[0]
    config = inventory_file(hypervisors=[hv1, {"uri": UNREACHABLE, "name": "dead"}], fail_on_errors=True)
    message = "refresh failed (fail_on_errors is true): dead: cannot connect to libvirt"
    # AWX sets ANSIBLE_INVENTORY_UNPARSED_FAILED for inventory updates: the failure fails the sync
    run = run_inventory(config, env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"})
    assert run.rc != 0
    assert message in run.stderr
    # plain ansible-inventory/ansible-playbook: the source is dropped as a whole, with the reason
    run = run_inventory(config)
    assert message in run.stderr
    assert run.data["_meta"]["hostvars"] == {}


def test_a_hanging_hypervisor_is_given_up_after_the_timeout(tmp_path, inventory_file):
    hv1 = two_hypervisors(tmp_path)[0]
    with socket.socket() as silent:  # accepts TCP connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = "qemu+tcp://127.0.0.1:%d/system" % silent.getsockname()[1]
        started = time.monotonic()
        run = run_inventory(inventory_file(hypervisors=[hv1, {"uri": uri, "name": "hung"}], timeout=1.5, now=NOW))
        elapsed = time.monotonic() - started
    assert f"hypervisor hung left out: no answer from {uri} within 1.5 s (option timeout)" in run.stderr
    assert run.hosts("farm_lifecycle_active") == ["hv1-s1"]
    assert elapsed < 30


def test_bad_option_is_named(inventory_file):
    run = run_inventory(inventory_file(hypervisors=[{"uri": "test:///default", "port": 22}]))
    assert "hypervisors[0]: unknown key(s) port" in run.stderr


def test_hypervisors_from_another_inventory_source(tmp_path, inventory_file):
    hv1, hv2 = two_hypervisors(tmp_path)
    hosts = tmp_path / "hypervisors.yml"
    hosts.write_text(
        yaml.safe_dump(
            {
                "hypervisors": {
                    "hosts": {
                        "hv01": {"farm_node_file": hv1[len("test://") :]},
                        "hv02": {"farm_node_file": hv2[len("test://") :]},
                    }
                }
            }
        )
    )
    config = inventory_file(hypervisor_group="hypervisors", uri_template="test://{{ farm_node_file }}", now=NOW)
    run = run_inventory(str(hosts), config)
    assert run.hosts("farm_hypervisor_hv01") == ["hv1-s1", "hv1-s2", "hv1-s3", "hv1-s4"]
    assert run.hosts("farm_hypervisor_hv02") == ["hv2-s1", "hv2-s2"]
    assert run.hostvars("hv2-s1")["farm_hypervisor"] == "hv02"
    assert run.hosts("hypervisors") == ["hv01", "hv02"]
