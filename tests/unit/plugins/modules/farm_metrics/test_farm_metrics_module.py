"""farm_metrics: main() under patch_module_args against a test-driver farm."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

pytest.importorskip("libvirt")
pytest.importorskip("prometheus_client")

from ansible_collections.batchvirt.farm.plugins.modules import farm_metrics  # noqa: E402
from tests.integration.inventory.farm_xml import slot, write_test_node  # noqa: E402

NOW = "2026-11-21T12:00:00Z"


def run(args, capsys, check=False):
    if check:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        farm_metrics.main()
    return json.loads(capsys.readouterr().out)


def test_module_writes_once_and_records_plays(tmp_path, capsys):
    uri = write_test_node(str(tmp_path / "node.xml"), [("w1", slot("w1", "hv1"), True)])
    args = {
        "uri": uri,
        "hypervisor": "hv1",
        "textfile_dir": str(tmp_path),
        "state_path": str(tmp_path / "state" / "s.json"),
        "image_root": "",
        "accounting_path": str(tmp_path / "acc.sqlite"),
        "config_path": str(tmp_path / "none.json"),
        "now": NOW,
    }
    out = run(dict(args), capsys, check=True)
    assert out["changed"] is True
    assert not (tmp_path / "batchvirt_farm.prom").exists()
    out = run(dict(args), capsys)
    assert out["changed"] is True
    assert out["slots_by_lifecycle"]["active"] == 1
    assert (
        'batchvirt_farm_slots_by_lifecycle{hypervisor="hv1",lifecycle="active"} 1.0'
        in (tmp_path / "batchvirt_farm.prom").read_text()
    )
    assert run(dict(args), capsys)["changed"] is False
    out = run(dict(args, play={"name": "recycle", "outcome": "failure", "started": "2026-11-21T11:59:00Z"}), capsys)
    assert out["changed"] is True
    assert out["plays"]["recycle"]["last_duration_seconds"] == 60.0
    assert "batchvirt_farm_play_last_run_success" in (tmp_path / "batchvirt_farm.prom").read_text()


def test_module_refuses_a_bad_filename(tmp_path, capsys):
    uri = write_test_node(str(tmp_path / "node.xml"), [])
    out = run({"uri": uri, "textfile_dir": str(tmp_path), "filename": "../x.txt", "now": NOW}, capsys)
    assert out["failed"] is True
    assert out["option"] == "filename"
    assert "must be a plain file name ending in .prom" in out["msg"]
