"""Slot domain XML: what it contains, semantic comparison, stable UUID/MAC, overlay volume."""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import (
    QEMU_NS,
    DomainSpec,
    differences,
    domain_xml,
    fingerprint,
    lvm_remove_commands,
    overlay_volume_xml,
    slot_mac,
    slot_uuid,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata

_ENDPOINT = ("network_mode", "mac", "ssh_host", "ssh_port")


def spec(**overrides):
    """A DomainSpec; the network mode, MAC and SSH endpoint go to its metadata (declared there)."""
    endpoint = {k: overrides.pop(k) for k in _ENDPOINT if k in overrides}
    values = {
        "name": "hv1-slot-01",
        "uuid": slot_uuid("hv1", "hv1-slot-01"),
        "domain_type": "qemu",
        "vcpus": 1,
        "memory_mib": 512,
        "overlay_path": "/var/lib/batchvirt/slots/hv1-slot-01.qcow2",
        "seed_path": "/var/lib/batchvirt/slots/hv1-slot-01-seed.iso",
        "console_log": "/var/log/libvirt/qemu/hv1-slot-01-console.log",
    }
    values.update(overrides)
    meta = {"network_mode": "user", "mac": slot_mac("hv1", "hv1-slot-01"), "ssh_host": "127.0.0.1", "ssh_port": 10022}
    meta.update(endpoint)
    t0 = datetime.datetime(2026, 11, 21, 6, tzinfo=datetime.timezone.utc)
    values["metadata"] = SlotMetadata(
        name="hv1-slot-01",
        hypervisor="hv1",
        image_identifier="worker",
        image_version="1",
        created_at=t0,
        drain_at=t0 + datetime.timedelta(days=1),
        deadline=t0 + datetime.timedelta(days=2),
        **meta,
    )
    return DomainSpec(**values)


def test_stable_identity():
    assert slot_uuid("hv1", "hv1-slot-01") == slot_uuid("hv1", "hv1-slot-01")
    assert slot_uuid("hv1", "hv1-slot-01") != slot_uuid("hv2", "hv1-slot-01")
    mac = slot_mac("hv1", "hv1-slot-01")
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert mac != slot_mac("hv1", "hv1-slot-02")


def test_user_mode_domain():
    root = ET.fromstring(domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("memory") == str(512 * 1024)
    assert root.find("./features/tcg/tb-cache").text == "128"
    assert root.find("./features/tcg/tb-cache").get("unit") == "MiB"
    args = [a.get("value") for a in root.findall(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args[1] == "user,id=hn0,hostfwd=tcp:127.0.0.1:10022-:22"
    assert args[3].startswith("virtio-net-pci,netdev=hn0,bus=pci.0,addr=0x10")
    assert root.find("./devices/interface") is None
    disks = root.findall("./devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    assert disks[1].find("readonly") is not None
    assert root.find("./os/boot").get("dev") == "hd"


def test_kvm_bridge_kernel_domain():
    root = ET.fromstring(
        domain_xml(
            spec(
                domain_type="kvm",
                network_mode="bridge",
                bridge="br0",
                kernel="/k",
                initrd="/i",
                cmdline="console=ttyS0",
                boot="kernel",
            )
        )
    )
    assert root.find("./features/tcg") is None
    assert root.find("cpu").get("mode") == "host-passthrough"
    iface = root.find("./devices/interface")
    assert iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "br0"
    assert iface.find("mac").get("address") == slot_mac("hv1", "hv1-slot-01")
    assert root.find(f"{{{QEMU_NS}}}commandline") is None
    assert (root.findtext("./os/kernel"), root.findtext("./os/initrd"), root.findtext("./os/cmdline")) == (
        "/k",
        "/i",
        "console=ttyS0",
    )


LIBVIRT_STYLE = """<domain type='qemu' id='3' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>hv1-slot-01</name><uuid>{uuid}</uuid>
  <memory unit='KiB'>524288</memory><vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><tcg><tb-cache unit='KiB'>131072</tb-cache></tcg></features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/batchvirt/slots/hv1-slot-01.qcow2'/><target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/var/lib/batchvirt/slots/hv1-slot-01-seed.iso'/><target dev='vdb' bus='virtio'/><readonly/></disk>
    <controller type='usb' index='0'/>
    <serial type='pty'><log file='/var/log/libvirt/qemu/hv1-slot-01-console.log' append='off'/><target port='0'/></serial>
  </devices>
  <qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,id=hn0,hostfwd=tcp:127.0.0.1:10022-:22'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=hn0,bus=pci.0,addr=0x10,mac={mac}'/>
  </qemu:commandline>
</domain>"""


def test_semantic_comparison_ignores_libvirt_additions():
    existing = LIBVIRT_STYLE.format(uuid=slot_uuid("hv1", "hv1-slot-01"), mac=slot_mac("hv1", "hv1-slot-01"))
    assert differences(domain_xml(spec()), existing) == []
    assert differences(domain_xml(spec(memory_mib=1024)), existing) == ["memory_kib"]
    assert differences(domain_xml(spec(ssh_port=10023, vcpus=2)), existing) == ["qemu_args", "vcpus"]
    assert fingerprint(existing)["tb_cache_mib"] == 128


def test_overlay_volume_has_backing_store():
    vol = ET.fromstring(overlay_volume_xml("s.qcow2", 20 * 1024**3, "/img/base.qcow2", "qcow2"))
    assert vol.find("./target/format").get("type") == "qcow2"
    assert vol.findtext("./backingStore/path") == "/img/base.qcow2"
    assert vol.find("./backingStore/format").get("type") == "qcow2"
    assert vol.findtext("capacity") == str(20 * 1024**3)


def test_lvm_commands():
    # the snapshot command is _hypervisor.lvm_snapshot_command (validated; test_hypervisor_builders)
    assert lvm_remove_commands("vg0", "hv1-slot-01") == [["lvremove", "--yes", "/dev/vg0/hv1-slot-01"]]
