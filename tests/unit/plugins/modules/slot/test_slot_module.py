"""slot: main() under patch_module_args against libvirt's in-process test driver
(test:///default, no daemon): bad input fails before anything exists, check mode, the LVM
command path (device-mapper cannot run here) and its rollback."""

from __future__ import annotations

import json
import struct

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils import _slot
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow
from ansible_collections.batchvirt.farm.plugins.modules import slot as slot_module

libvirt = pytest.importorskip("libvirt")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "base.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\0\0\0\x03" + b"\0" * 16 + struct.pack(">Q", 1 << 30) + b"\0" * 480)
    return str(path)


def run_main(capsys, **args):
    base = {"uri": "test:///default", "pool": "default-pool", "hypervisor": "hv1", "memory_mib": 128}
    base.update(args)
    with patch_module_args(base), pytest.raises(SystemExit):
        slot_module.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"lifetime": 0}, "lifetime must be a positive number of seconds, got 0"),
        ({"max_job_walltime": -5}, "max_job_walltime must be zero or more seconds, got -5"),
        ({"lifetime": 3600, "lifetime_spread": 3600}, "lifetime_spread must be at least 0 and less than lifetime"),
        ({"disk_size_gib": 0, "image": None}, "image needs identifier and version"),
        ({"network": {"mode": "bridge", "bridge": "bvt-no-such-br0"}}, "network.bridge bvt-no-such-br0 does not exist"),
        ({"network": {"mode": "network", "network": "bvt-nonet"}}, "libvirt network bvt-nonet does not exist"),
        ({"pool": "bvt-nopool"}, "storage pool bvt-nopool does not exist on this hypervisor"),
        (
            {"boot": {"mode": "kernel", "kernel": "/nonexistent/vmlinuz"}},
            "boot.kernel /nonexistent/vmlinuz does not exist",
        ),
        (
            {"image": {"identifier": "worker", "version": "1", "cache_root": "/nonexistent"}},
            "image worker version 1 is not staged on this hypervisor",
        ),
    ],
)
def test_bad_input_fails_before_anything_exists(capsys, image, args, message):
    args.setdefault("image", {"path": image})
    if args["image"] is None:
        args["image"] = {}
    result = run_main(capsys, name="hv1-slot-01", **args)
    assert result["failed"]
    assert message in result["msg"]
    conn = libvirt.open("test:///default")
    assert "hv1-slot-01" not in [d.name() for d in conn.listAllDomains(0)]


def test_disk_smaller_than_image(capsys, image):
    # 1 GiB equals the image's virtual size: accepted
    result = run_main(capsys, name="hv1-slot-01", image={"path": image}, disk_size_gib=1, _ansible_check_mode=True)
    assert not result.get("failed"), result
    with open(image, "r+b") as handle:
        handle.seek(24)
        handle.write(struct.pack(">Q", 3 << 30))
    result = run_main(capsys, name="hv1-slot-02", image={"path": image}, disk_size_gib=2, _ansible_check_mode=True)
    assert "disk_size_gib=2 is smaller than the image's virtual size (3.0 GiB)" in result["msg"]


def test_duplicates_in_one_call(capsys, image):
    result = run_main(
        capsys,
        slots=[{"name": "a", "network": {"ssh_port": 10022}}, {"name": "b", "network": {"ssh_port": 10022}}],
        image={"path": image},
        _ansible_check_mode=True,
    )
    assert "two slots share the ssh_port 10022: a and b" in result["msg"]
    result = run_main(capsys, slots=[{"name": "a"}, {"name": "a"}], image={"path": image}, _ansible_check_mode=True)
    assert "two slots share the name a: a and a" in result["msg"]


def test_check_mode_creates_nothing_and_diffs(capsys, image):
    result = run_main(
        capsys,
        slots=[{"name": "hv1-slot-01"}, {"name": "hv1-slot-02"}],
        image={"path": image},
        _ansible_check_mode=True,
        _ansible_diff=True,
    )
    assert result["changed"]
    assert [s["actions"] for s in result["slots"]] == [["create overlay", "create seed ISO", "define", "start"]] * 2
    assert "<name>hv1-slot-01</name>" in result["diff"][0]["after"]
    conn = libvirt.open("test:///default")
    assert not {"hv1-slot-01", "hv1-slot-02"} & {d.name() for d in conn.listAllDomains(0)}


def test_layout_count_beyond_memory(capsys, image):
    result = run_main(
        capsys,
        layout={"count": "100000"},
        image={"path": image},
        memory_mib=4096,
        _ansible_check_mode=True,
    )
    assert result["failed"]
    assert "layout: count=100000 does not fit on this hypervisor: memory:" in result["msg"]
    assert result["option"] == "layout.count"


def test_lvm_overlay_commands_and_rollback(image):
    """LVM cannot run here: check the commands, and that a failure after the snapshot removes it."""
    commands = []

    def runner(argv):
        commands.append(argv)
        return 0, "", ""

    conn = libvirt.open("test:///default")
    manager = _slot.SlotManager(conn, utcnow(), run_command=runner)
    request = {
        "name": "hv1-slot-07",
        "hypervisor": "hv1",
        "image": {"path": image},
        "pool": "default-pool",
        "overlay": {"type": "lvm", "volume_group": "vg0", "origin": "worker_1"},
        "vcpus": 1,
        "memory_mib": 128,
        "lifetime": 3600,
        "max_job_walltime": 60,
        "network": {"mode": "user", "ssh_port": 10029},
        "domain_type": "qemu",
    }
    # the test driver's volumes have no file behind them: writing the seed ISO fails after the snapshot
    with pytest.raises(_slot.SlotError) as err:
        manager.ensure([request], "running")
    assert "slot hv1-slot-07: seed ISO failed" in str(err.value)
    assert "nothing of this slot was left behind" in str(err.value)
    assert commands == [
        ["lvcreate", "--snapshot", "--name", "hv1-slot-07", "--size", "1024m", "vg0/worker_1"],
        ["lvremove", "--yes", "/dev/vg0/hv1-slot-07"],
    ]
    assert "hv1-slot-07" not in [d.name() for d in conn.listAllDomains(0)]
    pool = conn.storagePoolLookupByName("default-pool")
    assert "hv1-slot-07-seed.iso" not in pool.listVolumes()


@pytest.mark.parametrize(("purpose", "recorded"), [("golden", {"purpose": "golden"}), ("worker", {})])
def test_purpose_is_recorded_for_golden_nodes_only(capsys, image, purpose, recorded):
    result = run_main(
        capsys, name="hv1-golden", image={"path": image}, purpose=purpose, _ansible_check_mode=True, _ansible_diff=True
    )
    assert result["changed"]
    assert {k: v for k, v in result["slots"][0]["metadata"]["extra"].items() if k == "purpose"} == recorded


def test_cloud_init_passwords_stay_out_of_the_log(capsys, image):
    secret = "S3cret-pw-for-root"
    cloud = {"chpasswd": {"users": [{"name": "operator", "password": secret}]}}
    result = run_main(
        capsys,
        slots=[{"name": "hv1-slot-01", "cloud_init": cloud}],
        cloud_init={"password": secret + "-top"},
        image={"path": image},
        _ansible_check_mode=True,
    )
    assert result["changed"], result
    assert secret not in json.dumps(result)
    logged = result["invocation"]["module_args"]["slots"][0]["cloud_init"]
    assert logged["chpasswd"]["users"][0]["password"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


@pytest.fixture
def staged(tmp_path):
    """An image cache with versions 1, 2 and 3 of ``worker`` endorsed and staged."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
    from tests.unit.plugins.module_utils.test_image_cache_selection import LIST, entry, stage

    root = str(tmp_path / "images")
    with ImageCache(root) as cache:
        cache.record_list(LIST, "1", [entry("1"), entry("2"), entry("3")])
        for version in ("1", "2", "3"):
            stage(cache, version)
    return root


def test_resolved_names_the_version_a_new_slot_gets_and_changes_nothing(capsys, staged):
    image = {"identifier": "worker", "version": "latest", "cache_root": staged}
    result = run_main(capsys, name="hv1-slot-01", state="resolved", image=image)
    assert not result.get("failed"), result
    assert not result["changed"] and result["image"]["version"] == "3"
    result = run_main(capsys, name="hv1-slot-01", state="resolved", image=dict(image, avoid=["3"]))
    assert result["image"]["version"] == "2"
    assert result["slots"] == [{"name": "hv1-slot-01", "changed": False, "actions": [], "image": result["image"]}]
    # in check mode too, and with state=running the creation takes the same version
    result = run_main(
        capsys, name="hv1-slot-01", state="resolved", image=dict(image, avoid=["3", "2"]), _ansible_check_mode=True
    )
    assert result["image"]["version"] == "1"
    result = run_main(capsys, name="hv1-slot-01", image=dict(image, avoid=["3"]), _ansible_check_mode=True)
    assert result["metadata"]["image"]["version"] == "2", result
    conn = libvirt.open("test:///default")
    assert "hv1-slot-01" not in [d.name() for d in conn.listAllDomains(0)]


@pytest.mark.parametrize("state", ["resolved", "running"])
def test_avoiding_every_version_fails_naming_image_avoid(capsys, staged, state):
    image = {"identifier": "worker", "version": "latest", "cache_root": staged, "avoid": ["1", "2", "3"]}
    result = run_main(capsys, name="hv1-slot-01", state=state, image=image, _ansible_check_mode=True)
    assert result["failed"] and result["option"] == "image.avoid"
    assert "every version that may be deployed here is avoided (1, 2, 3) by image.avoid" in result["msg"]
    assert "Stage and endorse a newer version" in result["msg"]


def test_a_pinned_version_in_avoid_is_refused(capsys, staged):
    image = {"identifier": "worker", "version": "2", "cache_root": staged, "avoid": ["2"]}
    result = run_main(capsys, name="hv1-slot-01", state="resolved", image=image)
    assert result["failed"] and result["option"] == "image.avoid"
    assert "image.version 2 is in image.avoid (2)" in result["msg"]
    # a pinned version that is not avoided is taken as it is
    result = run_main(capsys, name="hv1-slot-01", state="resolved", image=dict(image, avoid=["3"]))
    assert result["image"]["version"] == "2"
