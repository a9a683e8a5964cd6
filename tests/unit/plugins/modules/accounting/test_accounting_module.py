"""accounting / accounting_info: main() under patch_module_args; a life read from a slot
domain's metadata on libvirt's test driver, check and diff mode, idempotence, export."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

pytest.importorskip("libvirt")

from ansible_collections.batchvirt.farm.plugins.modules import accounting, accounting_info  # noqa: E402
from tests.integration.inventory.farm_xml import slot, write_test_node  # noqa: E402

NOW = "2026-11-21T12:00:00Z"


def run(module, args, capsys, check=False, diff=False):
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_record_from_domain_then_end_then_export(tmp_path, capsys):
    uri = write_test_node(
        str(tmp_path / "n.xml"), [("w1", slot("w1", "hv1", worker_type="gpu"), True), ("foreign", None, True)]
    )
    db = str(tmp_path / "acc.sqlite")
    base = {"uri": uri, "path": db, "domain": "w1", "now": NOW}
    out = run(accounting, dict(base, record={"registered": "2026-11-21T00:05:00Z"}), capsys, check=True, diff=True)
    assert out["changed"] is True and out["diff"]["before"] == {}
    assert not (tmp_path / "acc.sqlite").exists()
    out = run(accounting, dict(base, record={"registered": "2026-11-21T00:05:00Z"}), capsys)
    assert out["changed"] is True
    rec = out["record"]
    assert rec["life_id"] == "hv1/w1/2026-11-21T00:00:00Z"
    assert (rec["worker_type"], rec["cores"], rec["memory_mib"], rec["image_sha512"]) == ("gpu", 1, 64, "ab" * 64)
    assert rec["drain_started"] is None and rec["ended"] is None
    assert run(accounting, dict(base), capsys)["changed"] is False

    out = run(accounting, dict(base, end_reason="recycled", record={"jobs": 5}), capsys, diff=True)
    assert out["changed"] is True
    assert (out["record"]["ended"], out["record"]["end_reason"], out["record"]["jobs"]) == (NOW, "recycled", 5)
    assert out["record"]["registered"] == "2026-11-21T00:05:00Z"  # kept
    assert out["diff"]["before"]["ended"] is None

    out = run(accounting_info, {"path": db, "status": "ended"}, capsys)
    assert [r["slot"] for r in out["records"]] == ["w1"]

    dest = str(tmp_path / "out.csv")
    exp = {"path": db, "state": "exported", "format": "apel_csv", "dest": dest, "site": "X"}
    assert run(accounting, dict(exp), capsys)["count"] == 1
    assert run(accounting, dict(exp), capsys)["changed"] is False
    assert (tmp_path / "out.csv").read_text().splitlines()[0].startswith("VMUUID,SiteName,")

    out = run(accounting, {"uri": uri, "path": db, "domain": "foreign", "now": NOW}, capsys)
    assert out["failed"] is True and out["option"] == "domain"
    assert "carries no slot metadata" in out["msg"]
    out = run(accounting, {"uri": uri, "path": db, "domain": "nope", "now": NOW}, capsys)
    assert out["msg"] == "domain: no domain 'nope' on this hypervisor"


def test_info_without_database_creates_none(tmp_path, capsys):
    out = run(accounting_info, {"path": str(tmp_path / "none.sqlite")}, capsys)
    assert (out["exists"], out["records"]) == (False, [])
    assert not (tmp_path / "none.sqlite").exists()


def test_bad_record_fails_naming_the_field(tmp_path, capsys):
    out = run(
        accounting,
        {"path": str(tmp_path / "a.sqlite"), "record": {"slot": "w", "hypervisor": "h", "created": "soon"}},
        capsys,
    )
    assert out["failed"] is True
    assert out["option"] == "created"
