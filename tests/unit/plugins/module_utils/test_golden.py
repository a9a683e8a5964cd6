"""Golden snapshots: versions, retention, flattening a real qcow2 chain, a shutdown that hangs."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _golden

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], "20261121.1"),
        (["20261121.1", "20261121.2"], "20261121.3"),
        (["20261120.7"], "20261121.1"),
        (["20261121.9", "20261121.10"], "20261121.11"),
        (["garbage", "1.2.3"], "20261121.1"),
    ],
)
def test_next_version(existing, expected):
    assert _golden.next_version(existing, datetime.date(2026, 11, 21)) == expected


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b", "wörker"])
def test_hostile_identifiers_are_refused(bad):
    with pytest.raises(_golden.GoldenError, match="not a safe image name"):
        _golden.check_identifier(bad)


def _touch_version(directory, identifier, version):
    for suffix in (".qcow2", ".json"):
        with open(os.path.join(directory, "%s-%s%s" % (identifier, version, suffix)), "w") as handle:
            handle.write("{}")


def test_prune_keeps_the_newest_numerically(tmp_path):
    for version in ("20261119.1", "20261120.2", "20261120.10", "20261121.1"):
        _touch_version(str(tmp_path), "worker", version)
    _touch_version(str(tmp_path), "other", "20261101.1")
    removed = _golden.prune(str(tmp_path), "worker", keep=2)
    assert removed == ["20261119.1", "20261120.2"]
    assert _golden.versions_in(str(tmp_path), "worker") == ["20261120.10", "20261121.1"]
    assert _golden.versions_in(str(tmp_path), "other") == ["20261101.1"]


def test_prune_refuses_keep_zero(tmp_path):
    with pytest.raises(_golden.GoldenError, match="keep must be at least 1"):
        _golden.prune(str(tmp_path), "worker", keep=0)


def test_disk_source_picks_the_disk_not_the_cdrom():
    xml = """<domain><devices>
      <disk type='file' device='cdrom'><source file='/seed.iso'/><target dev='sda'/></disk>
      <disk type='file' device='disk'><source file='/slots/golden.qcow2'/><target dev='vda'/></disk>
    </devices></domain>"""
    assert _golden.disk_source(xml) == "/slots/golden.qcow2"
    with pytest.raises(_golden.GoldenError, match="no file-backed disk vdb"):
        _golden.disk_source(xml, "vdb")


class HangingDomain:
    """A guest that ignores ACPI power-off."""

    def __init__(self):
        self.destroyed = False

    def isActive(self):
        return True

    def shutdown(self):
        pass

    def destroy(self):
        self.destroyed = True

    def name(self):
        return "golden-el9"


def test_shutdown_timeout_leaves_the_vm_running():
    ticks = iter(range(0, 1000, 10))
    dom = HangingDomain()
    with pytest.raises(_golden.GoldenError, match="did not shut down within 60 s; it was left running"):
        _golden.shutdown(dom, 60, clock=lambda: next(ticks), sleep=lambda s: None)
    assert not dom.destroyed


def test_shutdown_of_a_real_test_driver_domain():
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    dom = conn.lookupByName("test")
    assert dom.isActive()
    assert _golden.shutdown(dom, 5) is True
    assert not dom.isActive()
    assert _golden.shutdown(dom, 5) is False


@needs_qemu_img
def test_write_version_flattens_the_backing_chain(tmp_path):
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0xab 0 1M", str(base)], check=True, capture_output=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)], check=True
    )
    subprocess.run(["qemu-io", "-c", "write -P 0xcd 2M 1M", str(overlay)], check=True, capture_output=True)
    out = tmp_path / "out"
    image = _golden.write_version(str(overlay), str(out), "worker", "20261121.1")
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image.path], capture_output=True, check=True).stdout
    )
    assert "backing-filename" not in info  # standalone: slots can use it as a backing file anywhere
    with open(image.path, "rb") as handle:
        data = handle.read()
    assert image.sha512 == hashlib.sha512(data).hexdigest()
    assert image.size == len(data)
    # both the base's and the overlay's data made it into the flattened image
    check = subprocess.run(
        ["qemu-io", "-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 2M 1M", image.path],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Pattern verification failed" not in check.stdout
    with open(image.description_path) as handle:
        desc = json.load(handle)
    assert desc["sha512"] == image.sha512 and desc["version"] == "20261121.1"
    assert not [p for p in os.listdir(str(out)) if p.endswith(".partial")]
    with pytest.raises(_golden.GoldenError, match="never overwritten"):
        _golden.write_version(str(overlay), str(out), "worker", "20261121.1")


@needs_qemu_img
def test_failed_convert_leaves_nothing_behind(tmp_path):
    with pytest.raises(_golden.GoldenError, match="qemu-img convert of .*missing.qcow2 failed"):
        _golden.write_version(str(tmp_path / "missing.qcow2"), str(tmp_path / "out"), "worker", "20261121.1")
    assert os.listdir(str(tmp_path / "out")) == []


@needs_qemu_img
def test_describe_versions_lists_what_prune_kept(tmp_path):
    disk = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"], check=True)
    out = str(tmp_path / "out")
    for version in ("20261120.1", "20261121.1", "20261121.2"):
        _golden.write_version(str(disk), out, "worker", version, compression="none")
    _golden.prune(out, "worker", keep=2)
    described = _golden.describe_versions(out, "worker")
    assert [d["version"] for d in described] == ["20261121.1", "20261121.2"]
    assert all(len(d["sha512"]) == 128 and d["size"] > 0 and os.path.exists(d["path"]) for d in described)


def _snapshot_params(tmp_path, **over):
    params = {
        "name": "golden-worker",
        "identifier": "worker",
        "version": None,
        "directory": str(tmp_path),
        "shutdown_timeout": 5,
        "compression": "none",
        "keep": 3,
        "restart": True,
        "disk": None,
        "boot": None,
        "uri": "test:///default",
    }
    params.update(over)
    return params


def _no_connection(uri):
    raise AssertionError(f"the module connected to {uri} although it had nothing to do")


def test_snapshot_of_an_existing_version_changes_nothing_and_never_connects(tmp_path):
    for name in ("worker-20261121.1.qcow2", "worker-20261121.1.json"):
        (tmp_path / name).write_text("{}")
    result = _golden.run_snapshot(_snapshot_params(tmp_path, version="20261121.1"), False, _no_connection)
    assert result["changed"] is False
    assert result["image"]["path"] == str(tmp_path / "worker-20261121.1.qcow2")
    assert result["shut_down"] is False


@pytest.mark.parametrize(
    ("over", "option", "message"),
    [
        ({"identifier": "../etc"}, "identifier", "not a safe image name"),
        ({"keep": 0}, "keep", "keep must be at least 1"),
    ],
)
def test_snapshot_refuses_bad_input_naming_the_option(tmp_path, over, option, message):
    with pytest.raises(_golden.GoldenError, match=message) as caught:
        _golden.run_snapshot(_snapshot_params(tmp_path, **over), False, _no_connection)
    assert caught.value.option == option
    assert list(tmp_path.iterdir()) == []


def test_snapshot_of_an_unknown_golden_vm_names_the_option(tmp_path):
    class Conn:
        def lookupByName(self, name):
            raise RuntimeError("Domain not found")

    with pytest.raises(_golden.GoldenError, match="no golden VM named 'golden-worker'") as caught:
        _golden.run_snapshot(_snapshot_params(tmp_path), True, lambda uri: Conn())
    assert caught.value.option == "name"
