"""image_list: main() under patch_module_args (check mode, diff, idempotence, failure message)."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist as il
from ansible_collections.batchvirt.farm.plugins.modules import image_list
from tests.unit.plugins.modules.image_list.imagelist_pki import LIST_ID, PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def run(args, capsys, check=False, diff=False):
    if check:
        args = dict(args, _ansible_check_mode=True)
    if diff:
        args = dict(args, _ansible_diff=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        image_list.main()
    return json.loads(capsys.readouterr().out)


def module_args(pki, tmp_path):
    image = tmp_path / "w.qcow2"
    if not image.exists():
        image.write_bytes(b"qcow2-ish" * 1000)
    return {
        "path": str(tmp_path / "farm.list"),
        "identifier": LIST_ID,
        "title": "farm",
        "signer_cert": pki.endorser.cert_path,
        "signer_key": pki.endorser.key_path,
        "signer_key_passphrase": "unused-secret",
        "images": [{"identifier": "worker", "version": "1", "uri": "https://h/w.qcow2", "path": str(image)}],
    }


def test_check_then_create_then_unchanged(pki, tmp_path, capsys):
    args = module_args(pki, tmp_path)
    checked = run(args, capsys, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"]["before"] == ""
    assert '"dc:identifier": "worker"' in checked["diff"]["after"]
    assert not (tmp_path / "farm.list").exists()

    created = run(args, capsys)
    assert created["changed"] is True
    assert created["version"] == "1"
    assert "diff" not in created
    assert "unused-secret" not in json.dumps(created)
    assert il.verify((tmp_path / "farm.list").read_bytes(), pki.ca_dir, LIST_ID).version == "1"

    again = run(args, capsys, diff=True)
    assert again["changed"] is False
    assert "diff" not in again


def test_failure_names_the_field_and_reason(pki, tmp_path, capsys):
    args = module_args(pki, tmp_path)
    args["images"][0]["identifier"] = "../../boot/vmlinuz"
    result = run(args, capsys)
    assert result["failed"] is True
    assert result["reason"] == "hostile_identifier"
    assert result["field"] == "hv:images[0].hv:image.dc:identifier"
    assert "part of a file name" in result["msg"]


def test_bad_mode(pki, tmp_path, capsys):
    result = run(dict(module_args(pki, tmp_path), mode="rw-r--r--"), capsys)
    assert result["failed"] is True
    assert "octal file mode" in result["msg"]
