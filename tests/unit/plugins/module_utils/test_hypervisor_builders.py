"""Pool and network XML, LVM commands, pool path checks and bad input, as tables."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import (
    HypervisorError,
    NetworkSpec,
    PoolSpec,
    check_pool_path,
    lvm_build_commands,
    lvm_snapshot_command,
    network_summary_from_xml,
    network_xml,
    parse_lvm_report,
    pool_summary_from_xml,
    pool_xml,
)

# -- pools -------------------------------------------------------------------------------


def test_dir_pool_xml():
    xml = pool_xml(PoolSpec(name="batchvirt-images", path="/var/lib/batchvirt/images"))
    assert xml == (
        '<pool type="dir"><name>batchvirt-images</name><target><path>/var/lib/batchvirt/images</path></target></pool>'
    )


def test_logical_pool_xml():
    spec = PoolSpec(
        name="batchvirt-slots", type="logical", source_name="batchvirt", source_devices=("/dev/sdb", "/dev/sdc")
    )
    root = ET.fromstring(pool_xml(spec))
    assert root.get("type") == "logical"
    assert root.findtext("name") == "batchvirt-slots"
    assert [d.get("path") for d in root.findall("source/device")] == ["/dev/sdb", "/dev/sdc"]
    assert root.findtext("source/name") == "batchvirt"
    assert root.find("source/format").get("type") == "lvm2"
    assert root.findtext("target/path") == "/dev/batchvirt"


@pytest.mark.parametrize(
    "spec",
    [
        PoolSpec(name="a", path="/srv/a/"),
        PoolSpec(name="b", type="logical", source_name="vg0"),
        PoolSpec(name="c", type="logical", source_name="vg0", source_devices=("/dev/sdc", "/dev/sdb")),
    ],
)
def test_pool_summary_round_trip(spec):
    """What we define reads back as what we want: the module is idempotent."""
    assert pool_summary_from_xml(pool_xml(spec)) == spec.summary()


def test_pool_summary_of_libvirt_output():
    """libvirt adds uuid, capacity and permissions; the summary ignores them."""
    xml = """<pool type='dir'><name>batchvirt-slots</name><uuid>8b52a4a3-9d9c-4762-89bf-3336de5df1e6</uuid>
      <capacity unit='bytes'>270553174016</capacity><source></source>
      <target><path>/var/lib/batchvirt/slots</path><permissions><mode>0755</mode></permissions></target></pool>"""
    assert pool_summary_from_xml(xml) == PoolSpec(name="batchvirt-slots", path="/var/lib/batchvirt/slots").summary()
    other = PoolSpec(name="batchvirt-slots", path="/data/slots").summary()
    assert pool_summary_from_xml(xml) != other


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "path": "/x"}, "name: '' is not a valid pool name (letters, digits, '_.+-')"),
        ({"name": "a b", "path": "/x"}, "name: 'a b' is not a valid pool name (letters, digits, '_.+-')"),
        ({"name": "p", "type": "zfs", "path": "/x"}, "type: 'zfs' is not one of dir, logical"),
        ({"name": "p", "path": "relative/dir"}, "path: a dir pool needs an absolute path, got 'relative/dir'"),
        ({"name": "p", "type": "logical"}, "source_name: a logical pool needs a volume group name, got ''"),
        (
            {"name": "p", "type": "logical", "source_name": "vg", "source_devices": ("sdb",)},
            "source_devices: 'sdb' is not a block device path under /dev/",
        ),
        (
            {"name": "p", "type": "logical", "source_name": "vg", "path": "/dev/other"},
            "path: a logical pool's path is /dev/vg, got '/dev/other'",
        ),
    ],
)
def test_pool_bad_input(kwargs, message):
    with pytest.raises(HypervisorError) as err:
        PoolSpec(**kwargs)
    assert str(err.value) == message


# -- LVM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vg", "devices", "vgs", "pvs", "expected"),
    [
        # the group exists: nothing to do, whatever the devices
        ("batchvirt", ["/dev/sdb"], ["batchvirt"], ["/dev/sdb"], []),
        ("batchvirt", [], ["vg0", "batchvirt"], [], []),
        # new group on two fresh disks
        (
            "batchvirt",
            ["/dev/sdb", "/dev/sdc"],
            ["vg0"],
            ["/dev/sda2"],
            [
                ["pvcreate", "--yes", "/dev/sdb"],
                ["pvcreate", "--yes", "/dev/sdc"],
                ["vgcreate", "batchvirt", "/dev/sdb", "/dev/sdc"],
            ],
        ),
        # a device that already is a PV is not initialised again
        (
            "batchvirt",
            ["/dev/sdb", "/dev/sdc"],
            [],
            ["/dev/sdb"],
            [["pvcreate", "--yes", "/dev/sdc"], ["vgcreate", "batchvirt", "/dev/sdb", "/dev/sdc"]],
        ),
    ],
)
def test_lvm_build_commands(vg, devices, vgs, pvs, expected):
    assert lvm_build_commands(vg, devices, vgs, pvs) == expected


def test_lvm_missing_group_without_devices():
    with pytest.raises(HypervisorError) as err:
        lvm_build_commands("batchvirt", [], ["vg0"], [])
    assert str(err.value) == (
        "source_devices: volume group 'batchvirt' does not exist and no devices were given to create it on"
    )
    assert err.value.option == "source_devices"


def test_lvm_snapshot_command():
    assert lvm_snapshot_command("batchvirt", "worker-1.4", "slot-01", 4096) == [
        "lvcreate",
        "--snapshot",
        "--name",
        "slot-01",
        "--size",
        "4096m",
        "batchvirt/worker-1.4",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("vg", "origin", "slot", 0), "size_mib must be positive, got 0"),
        (("vg", "origin", "bad name", 10), "name: 'bad name' is not a valid LVM name"),
        (("", "origin", "slot", 10), "vg: '' is not a valid LVM name"),
    ],
)
def test_lvm_snapshot_bad_input(args, message):
    with pytest.raises(HypervisorError) as err:
        lvm_snapshot_command(*args)
    assert str(err.value) == message


def test_parse_lvm_report():
    vgs = '{"report": [{"vg": [{"vg_name": "vg0"}, {"vg_name": "batchvirt"}]}]}'
    pvs = '{"report": [{"pv": [{"pv_name": "/dev/sda2"}, {"pv_name": ""}]}]}'
    assert parse_lvm_report(vgs, "vg_name") == ["vg0", "batchvirt"]
    assert parse_lvm_report(pvs, "pv_name") == ["/dev/sda2"]
    assert parse_lvm_report("  \n", "vg_name") == []
    with pytest.raises(HypervisorError, match="cannot parse the LVM report: 'WARNING: no lvmetad'"):
        parse_lvm_report("WARNING: no lvmetad", "vg_name")


# -- pool paths ------------------------------------------------------------------------------


def _fs(free_mib):
    return lambda _path: SimpleNamespace(f_bavail=free_mib, f_frsize=1024 * 1024)


def test_pool_path_creates_pool_dir_and_parent(tmp_path):
    path = str(tmp_path / "batchvirt" / "images")
    assert check_pool_path(path, 1, statvfs=_fs(10)) == [str(tmp_path / "batchvirt"), path]


def test_pool_path_existing(tmp_path):
    assert check_pool_path(str(tmp_path), 1, statvfs=_fs(10)) == []


def test_pool_path_on_missing_filesystem(tmp_path):
    path = str(tmp_path / "mnt" / "data" / "images")
    with pytest.raises(HypervisorError) as err:
        check_pool_path(path)
    assert str(err.value).startswith(
        f"path: {path} does not exist, nor does {tmp_path / 'mnt'}: is the filesystem meant to hold the pool mounted?"
    )


def test_pool_path_on_full_filesystem(tmp_path):
    with pytest.raises(HypervisorError) as err:
        check_pool_path(str(tmp_path / "images"), 1024, statvfs=_fs(100))
    assert str(err.value) == (
        f"path: the filesystem holding {tmp_path / 'images'} has 100 MiB available, less than the 1024 MiB required: "
        "free space there or choose another path"
    )


def test_pool_path_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(HypervisorError, match=f"path: {target} exists but is not a directory"):
        check_pool_path(str(target / "images"))


def test_pool_path_relative():
    with pytest.raises(HypervisorError, match="path: 'images' is not an absolute path"):
        check_pool_path("images")


def test_pool_path_real_statvfs(tmp_path):
    """The real filesystem has space; an absurd requirement fails."""
    assert check_pool_path(str(tmp_path / "p"), 1) == [str(tmp_path / "p")]
    with pytest.raises(HypervisorError, match="MiB available, less than"):
        check_pool_path(str(tmp_path / "p"), 2**40)
    assert not os.path.exists(tmp_path / "p")


# -- networks ----------------------------------------------------------------------------


def test_nat_network_xml():
    spec = NetworkSpec(name="batchvirt-slots", mode="nat", bridge="bvt-nat0", address="192.168.150.1/24")
    assert network_xml(spec) == (
        '<network><name>batchvirt-slots</name><forward mode="nat" />'
        '<bridge name="bvt-nat0" stp="on" delay="0" />'
        '<ip address="192.168.150.1" netmask="255.255.255.0">'
        '<dhcp><range start="192.168.150.2" end="192.168.150.254" /></dhcp></ip></network>'
    )


def test_nat_network_without_dhcp_and_host_at_the_end():
    spec = NetworkSpec(name="n", mode="nat", bridge="br-n", address="10.20.0.254/24", dhcp=False)
    root = ET.fromstring(network_xml(spec))
    assert root.find("ip").attrib == {"address": "10.20.0.254", "netmask": "255.255.255.0"}
    assert root.find("ip/dhcp") is None
    assert spec.dhcp_range() == ("10.20.0.1", "10.20.0.253")


def test_bridge_network_xml():
    spec = NetworkSpec(name="batchvirt-slots", mode="bridge", bridge="br0")
    assert network_xml(spec) == (
        '<network><name>batchvirt-slots</name><forward mode="bridge" /><bridge name="br0" /></network>'
    )


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec(name="a", mode="nat", bridge="bvt-nat0", address="192.168.150.1/24"),
        NetworkSpec(name="b", mode="nat", bridge="bvt-nat1", address="172.30.7.1/28", dhcp=False),
        NetworkSpec(name="c", mode="bridge", bridge="br0"),
    ],
)
def test_network_summary_round_trip(spec):
    assert network_summary_from_xml(network_xml(spec)) == spec.summary()


def test_network_summary_of_libvirt_output():
    xml = """<network><name>default</name><uuid>2642d279-3f4c-46d7-a1b4-8538713adff6</uuid>
      <forward mode='nat'/><bridge name='virbr0' stp='on' delay='0'/><mac address='52:54:00:27:0f:3f'/>
      <ip address='192.168.122.1' prefix='24'><dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip>
      </network>"""
    assert network_summary_from_xml(xml) == {
        "name": "default",
        "mode": "nat",
        "bridge": "virbr0",
        "address": "192.168.122.1",
        "netmask": "255.255.255.0",
        "dhcp": ["192.168.122.2", "192.168.122.254"],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "n", "mode": "user", "bridge": "br0"}, "mode: 'user' is not one of nat, bridge"),
        ({"name": "n", "mode": "bridge", "bridge": ""}, "bridge: '' is not a valid interface name (1-15 characters)"),
        (
            {"name": "n", "mode": "bridge", "bridge": "a-very-long-bridge"},
            "bridge: 'a-very-long-bridge' is not a valid interface name (1-15 characters)",
        ),
        (
            {"name": "n", "mode": "nat", "bridge": "b", "address": "192.168.150.1"},
            "address: 192.168.150.1/32 leaves no room for guests (prefix > /29): give the prefix, e.g. /24",
        ),
        (
            {"name": "n", "mode": "nat", "bridge": "b", "address": "not-an-ip/24"},
            "address: 'not-an-ip/24' is not an IPv4 address with prefix such as 192.168.150.1/24",
        ),
        (
            {"name": "n", "mode": "nat", "bridge": "b", "address": "192.168.150.0/24"},
            "address: 192.168.150.0 is the network or broadcast address of 192.168.150.0/24",
        ),
        ({"name": "bad name", "mode": "bridge", "bridge": "br0"}, "name: 'bad name' is not a valid network name"),
    ],
)
def test_network_bad_input(kwargs, message):
    with pytest.raises(HypervisorError) as err:
        NetworkSpec(**kwargs)
    assert str(err.value) == message
