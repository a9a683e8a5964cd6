"""Seed ISO: user-data merge, meta-data, network-config, read back with pycdlib."""

from __future__ import annotations

import json

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _seed


def read_iso(data):
    """The files of a seed ISO by their Joliet names (the test's reader; no plugin reads ISOs)."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    files = {}
    for child in iso.list_children(joliet_path="/"):
        if child.is_dot() or child.is_dotdot():
            continue
        name = child.file_identifier().decode("utf-16_be")
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/" + name)
        files[name] = out.getvalue().decode("utf-8")
    iso.close()
    return files


def _cloud_config(text: str) -> dict:
    assert text.startswith("#cloud-config\n")
    return json.loads(text.split("\n", 1)[1])


def test_user_data_merges_lists_and_dicts():
    text = _seed.user_data(
        {"packages": ["htop"], "runcmd": [["echo", "site"]], "ssh_genkeytypes": ["ed25519"], "ntp": {"enabled": True}},
        ["ssh-ed25519 AAAA op@site"],
        {"write_files": [{"path": "/etc/munge/munge.key"}], "runcmd": [["systemctl", "restart", "slurmd"]]},
        hostname="hv1-slot-01",
    )
    data = _cloud_config(text)
    assert data["hostname"] == "hv1-slot-01"
    assert data["runcmd"] == [["echo", "site"], ["systemctl", "restart", "slurmd"]]
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 AAAA op@site"]
    assert data["write_files"] == [{"path": "/etc/munge/munge.key"}]
    assert data["ntp"] == {"enabled": True}


def test_user_data_refuses_non_dict():
    with pytest.raises(_seed.SeedError) as err:
        _seed.merge_user_data(["not", "a", "dict"])  # type: ignore[arg-type]
    assert "cloud_init must be a dict of cloud-config keys, got list" in str(err.value)


def test_network_config_static():
    text = _seed.network_config("52:54:00:aa:bb:cc", "192.0.2.10/24", "192.0.2.1", ["192.0.2.53"])
    assert text is not None
    nic = json.loads(text)["ethernets"]["eth0"]
    assert nic["match"] == {"macaddress": "52:54:00:aa:bb:cc"}
    assert nic["addresses"] == ["192.0.2.10/24"]
    assert nic["routes"] == [{"to": "default", "via": "192.0.2.1"}]
    assert nic["nameservers"] == {"addresses": ["192.0.2.53"]}
    assert _seed.network_config("52:54:00:aa:bb:cc", "") is None
    assert json.loads(_seed.network_config("52:54:00:aa:bb:cc", "", dhcp=True) or "")["ethernets"]["eth0"]["dhcp4"]


def test_network_config_needs_prefix():
    with pytest.raises(_seed.SeedError) as err:
        _seed.network_config("52:54:00:aa:bb:cc", "192.0.2.10")
    assert "must carry its prefix length" in str(err.value)


def test_iso_round_trip_with_label():
    files = {
        "user-data": _seed.user_data({"packages": ["htop"]}),
        "meta-data": _seed.meta_data("hv1-slot-01-20261121T060000Z", "hv1-slot-01"),
        "network-config": _seed.network_config("52:54:00:aa:bb:cc", "192.0.2.10/24") or "",
    }
    data = _seed.build_iso(files)
    assert read_iso(data) == files
    # the NoCloud datasource finds the seed by its volume label
    assert b"CIDATA" in data.upper()[32768 : 32768 + 2048]
    meta = json.loads(read_iso(data)["meta-data"])
    assert meta == {"instance-id": "hv1-slot-01-20261121T060000Z", "local-hostname": "hv1-slot-01"}
