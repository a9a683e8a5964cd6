"""hypervisor_info (and the pool/network modules): main() under patch_module_args against
libvirt's in-process test driver."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

pytest.importorskip("libvirt")

from ansible_collections.batchvirt.farm.plugins.modules import (  # noqa: E402
    hypervisor_info,
    hypervisor_network,
    hypervisor_pool,
)


def run(module, args, capsys, check=False, diff=False):
    args = dict(args, uri="test:///default")
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_info_with_plan(tmp_path, capsys):
    out = run(
        hypervisor_info,
        {"config_path": str(tmp_path / "none.json"), "plan": {"count": 2, "memory_mib": 128}},
        capsys,
        check=True,
    )
    assert out["changed"] is False
    assert out["cpus"] == 16
    assert out["default_domain_type"] == "qemu"
    assert out["plan"]["vcpus"] == 1
    assert out["plan"]["fits"] is False  # the test driver's 8 GiB domain overfills its 3 GiB host
    assert out["plan"]["message"].startswith("memory: 2 VM(s) x (128 MiB + 328 MiB QEMU overhead)")


def test_info_reservation_larger_than_host(tmp_path, capsys):
    out = run(hypervisor_info, {"config_path": str(tmp_path / "none.json"), "reserved_memory_mib": 999999}, capsys)
    assert out["failed"] is True
    assert out["msg"] == (
        "farm_hypervisor_reserved_memory_mib=999999 is not less than the host's memory (3072 MiB): "
        "nothing would be left for VMs; lower it"
    )


def test_info_bad_plan(tmp_path, capsys):
    out = run(
        hypervisor_info,
        {"config_path": str(tmp_path / "none.json"), "plan": {"count": 1, "memory_mib": 512, "vcpus": 0}},
        capsys,
    )
    assert out["failed"] is True
    assert out["msg"] == "plan.vcpus: vcpus must be a positive number, got 0"


def test_info_bad_uri(capsys):
    with patch_module_args({"uri": "test:///nonexistent/file.xml"}), pytest.raises(SystemExit):
        hypervisor_info.main()
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] is True
    assert out["msg"].startswith("cannot connect to libvirt at test:///nonexistent/file.xml")


def test_pool_module_check_and_diff(tmp_path, capsys):
    out = run(hypervisor_pool, {"name": "bvt-unit-mod", "path": str(tmp_path / "p")}, capsys, check=True, diff=True)
    assert out["changed"] is True
    assert out["actions"] == [f"mkdir {tmp_path / 'p'}", "define", "start", "autostart"]
    assert out["diff"]["before"] == {}
    assert out["diff"]["after"]["path"] == str(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_pool_module_missing_filesystem(tmp_path, capsys):
    path = str(tmp_path / "no" / "such" / "fs")
    out = run(hypervisor_pool, {"name": "bvt-unit-mod", "path": path}, capsys)
    assert out["failed"] is True
    assert out["msg"].startswith(f"pool bvt-unit-mod: path: {path} does not exist, nor does {tmp_path / 'no'}")


def test_pool_module_requires_path(capsys):
    out = run(hypervisor_pool, {"name": "bvt-unit-mod"}, capsys)
    assert out["failed"] is True
    assert out["msg"] == "type is dir but all of the following are missing: path"


def test_network_module_check_mode(capsys):
    args = {"name": "bvt-unit-net", "mode": "nat", "bridge": "bvt-u0", "address": "192.168.150.1/24"}
    out = run(hypervisor_network, args, capsys, check=True)
    assert out["changed"] is True
    assert out["actions"] == ["define", "start", "autostart"]
    assert '<forward mode="nat" />' in out["xml"]


def test_network_module_bad_address(capsys):
    args = {"name": "bvt-unit-net", "mode": "nat", "bridge": "bvt-u0", "address": "192.168.150.300/24"}
    out = run(hypervisor_network, args, capsys)
    assert out["failed"] is True
    assert out["msg"] == (
        "network bvt-unit-net: address: '192.168.150.300/24' is not an IPv4 address with prefix such as 192.168.150.1/24"
    )
