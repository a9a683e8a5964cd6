"""batchvirt.farm.slots the way AWX uses it: an inventory source from a project directory
synced with ``ansible-inventory --list --export``, and a job run through ansible-runner
against the plugin file."""

from __future__ import annotations

import os
import shutil
import sys

import yaml

from tests.integration.inventory.conftest import run_inventory
from tests.integration.inventory.farm_xml import slot, write_test_node
from tests.testbed.ansible import run_playbook

PROJECT = os.path.join(os.path.dirname(__file__), "awx_project")
NOW = {"BATCHVIRT_FARM_NOW": "2026-11-21T12:00:00Z"}


def make_farm(folder):
    os.makedirs(folder, exist_ok=True)
    write_test_node(
        os.path.join(folder, "hv01.xml"),
        [
            ("hv01-s1", slot("hv01-s1", "hv01", worker_type="cpu", ssh_port=10022), True),
            ("hv01-s2", slot("hv01-s2", "hv01", drain_requested=True), True),
        ],
        seed=1,
    )
    write_test_node(
        os.path.join(folder, "hv02.xml"),
        [("hv02-s1", slot("hv02-s1", "hv02", worker_type="cpu"), True), ("hv02-s2", slot("hv02-s2", "hv02"), False)],
        seed=2,
    )


def test_export_from_a_project_layout(tmp_path):
    project = str(tmp_path / "project")
    shutil.copytree(PROJECT, project)
    make_farm(os.path.join(project, "farm"))
    env = dict(NOW, ANSIBLE_INVENTORY_UNPARSED_FAILED="1")  # as AWX runs inventory updates
    run = run_inventory("inventory/", export=True, env=env, cwd=project)
    data = run.data
    assert sorted(data["hypervisors"]["hosts"]) == ["hv01", "hv02"]
    assert run.hosts("farm_lifecycle_active") == ["hv01-s1", "hv02-s1"]
    assert run.hosts("farm_lifecycle_draining") == ["hv01-s2"]
    assert run.hosts("farm_lifecycle_stopped") == ["hv02-s2"]
    assert run.hosts("worker_cpu") == ["hv01-s1", "hv02-s1"]
    assert run.hosts("worker_generic") == ["hv01-s2", "hv02-s2"]
    # --export keeps group variables in their group: AWX stores them once
    assert data["all"]["vars"]["farm_unreachable_hypervisors"] == []
    hostvars = run.hostvars("hv01-s1")
    assert "farm_unreachable_hypervisors" not in hostvars
    # AWX's enabled_var: farm_enabled, enabled_value: true
    assert hostvars["farm_enabled"] is True
    assert run.hostvars("hv01-s2")["farm_enabled"] is False
    assert run.hostvars("hv02-s2")["farm_enabled"] is False


def test_playbook_through_ansible_runner(tmp_path):
    make_farm(str(tmp_path / "farm"))
    plugin_file = tmp_path / "farm.farm.slots.yml"
    plugin_file.write_text(
        yaml.safe_dump(
            {
                "plugin": "batchvirt.farm.slots",
                "hypervisors": [
                    {"uri": "test://%s/farm/hv01.xml" % tmp_path, "name": "hv01"},
                    {"uri": "test://%s/farm/hv02.xml" % tmp_path, "name": "hv02"},
                    {"uri": "qemu+tcp://127.0.0.1:1/system", "name": "hv03"},
                ],
                # the test slots are not booted: run the play on the controller
                "compose": {"ansible_connection": "'local'", "ansible_python_interpreter": repr(sys.executable)},
            }
        )
    )
    result = run_playbook(os.path.join(PROJECT, "slot_report.yml"), inventory=str(plugin_file), envvars=NOW)
    assert result.rc == 0, result.stdout[-3000:]
    ran = sorted(e["host"] for e in result.task_events("Report the slot"))
    assert ran == ["hv01-s1", "hv02-s1"]
    messages = [e["res"]["msg"] for e in result.task_events("Report the slot")]
    assert "hv01-s1 is active on hv01, drains in 43200 s" in messages
    assert "hypervisor hv03 left out" in result.stdout
