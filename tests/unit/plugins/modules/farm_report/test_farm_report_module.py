"""farm_report: main() under patch_module_args; check mode, idempotence for the same now, a
missing directory named."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

pytest.importorskip("plotly")

from ansible_collections.batchvirt.farm.plugins.modules import farm_report  # noqa: E402

SNAP = {"hypervisor": "hv1", "slots": [{"name": "w1", "lifecycle": "active", "worker_type": "", "image": "el9",
                                        "image_version": "1", "vcpus": 1, "memory_mib": 64}]}  # fmt: skip
REC = {"life_id": "hv1/w1/2026-11-21T00:00:00Z", "slot": "w1", "hypervisor": "hv1", "created": "2026-11-21T00:00:00Z",
       "image_identifier": "el9", "image_version": "1", "cores": 1, "jobs": 3}  # fmt: skip


def run(args, capsys, check=False):
    if check:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        farm_report.main()
    return json.loads(capsys.readouterr().out)


def test_report_module(tmp_path, capsys):
    args = {"dest": str(tmp_path / "r.html"), "snapshots": [SNAP], "records": [REC], "now": "2026-11-22T00:00:00Z"}
    out = run(dict(args), capsys, check=True)
    assert out["changed"] is True and not (tmp_path / "r.html").exists()
    out = run(dict(args), capsys)
    assert out["changed"] is True
    assert out["summary"]["slots"] == 1 and out["summary"]["jobs"] == 3
    assert (tmp_path / "r.html").stat().st_size == out["bytes"]
    assert run(dict(args), capsys)["changed"] is False
    assert run(dict(args, now="2026-11-22T01:00:00Z"), capsys)["changed"] is True


def test_report_module_names_a_missing_directory(tmp_path, capsys):
    out = run({"dest": str(tmp_path / "no" / "r.html"), "now": "2026-11-22T00:00:00Z"}, capsys)
    assert out["failed"] is True and out["option"] == "dest"
    assert "does not exist" in out["msg"]
