# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: a slot's libvirt domain and overlay volume XML, and the
semantic comparison of a desired definition with an existing one (pure, no libvirt).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata, to_xml

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_Q = f"{{{QEMU_NS}}}"
# uuid5 namespace of the collection's slots (uuid5(NAMESPACE_URL, "https://batchvirt.farm/slot")).
SLOT_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://batchvirt.farm/slot")
USER_NET_PCI_ADDR = "0x10"  # explicit slot for the user-mode NIC (else it clashes with libvirt's disks)
TB_CACHE_MIB = 128
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def slot_uuid(hypervisor: str, name: str) -> str:
    """Stable across reruns: derived from the hypervisor and the slot name."""
    return str(uuid.uuid5(SLOT_UUID_NAMESPACE, f"{hypervisor}/{name}"))


def slot_mac(hypervisor: str, name: str) -> str:
    """Stable locally administered MAC in QEMU's 52:54:00 range, derived like the UUID."""
    digest = uuid.uuid5(SLOT_UUID_NAMESPACE, f"mac:{hypervisor}/{name}").bytes
    return "52:54:00:%02x:%02x:%02x" % (digest[0], digest[1], digest[2])


@dataclass
class DomainSpec:
    """Everything the domain definition of one slot is built from.

    The network mode, MAC and SSH endpoint are the slot metadata's (declared once, in
    :class:`SlotMetadata`); the spec adds what only libvirt needs (bridge or network name,
    extra user-mode forwards).
    """

    name: str
    uuid: str
    domain_type: str
    vcpus: int
    memory_mib: int
    overlay_path: str
    overlay_format: str = "qcow2"
    overlay_type: str = "file"  # "block" for an LVM snapshot
    seed_path: str = ""
    boot: str = "bootloader"
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    bridge: str = ""
    network: str = ""
    console_log: str = ""
    metadata: Optional[SlotMetadata] = None
    extra_forwards: List[Tuple[str, int, int]] = field(default_factory=list)

    @property
    def network_mode(self) -> str:
        return (self.metadata.network_mode if self.metadata else "") or "user"

    @property
    def mac(self) -> str:
        return self.metadata.mac if self.metadata else ""

    @property
    def ssh_host(self) -> str:
        return (self.metadata.ssh_host if self.metadata else "") or "127.0.0.1"

    @property
    def ssh_port(self) -> int:
        """The user-mode SSH forward's host port (0: none, and always 0 outside user mode)."""
        if self.metadata is None or self.network_mode != "user":
            return 0
        return self.metadata.ssh_port


def _sub(parent: ET.Element, tag: str, text: Optional[str] = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def user_net_args(spec: DomainSpec) -> List[str]:
    """QEMU arguments of the user-mode NIC with the SSH forward on ``ssh_host:ssh_port``."""
    netdev = "user,id=hn0"
    if spec.ssh_port:
        netdev += f",hostfwd=tcp:{spec.ssh_host}:{spec.ssh_port}-:22"
    for host, hport, gport in spec.extra_forwards:
        netdev += f",hostfwd=tcp:{host}:{hport}-:{gport}"
    device = f"virtio-net-pci,netdev=hn0,bus=pci.0,addr={USER_NET_PCI_ADDR}"
    if spec.mac:
        device += f",mac={spec.mac}"
    return ["-netdev", netdev, "-device", device]


def domain_xml(spec: DomainSpec) -> str:
    """The domain definition of a slot."""
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    if spec.metadata is not None:
        _sub(dom, "metadata").append(ET.fromstring(to_xml(spec.metadata)))
    _sub(dom, "memory", str(spec.memory_mib * 1024), unit="KiB")
    _sub(dom, "currentMemory", str(spec.memory_mib * 1024), unit="KiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    if spec.boot == "kernel":
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.domain_type == "qemu":
        _sub(_sub(features, "tcg"), "tb-cache", str(TB_CACHE_MIB), unit="MiB")
    if spec.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _sub(devices, "disk", type=spec.overlay_type, device="disk")
    _sub(
        disk,
        "driver",
        name="qemu",
        type=spec.overlay_format,
        cache="none" if spec.overlay_type == "block" else "default",
    )
    _sub(
        disk, "source", **({"dev": spec.overlay_path} if spec.overlay_type == "block" else {"file": spec.overlay_path})
    )
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.seed_path:
        seed = _sub(devices, "disk", type="file", device="disk")
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=spec.seed_path)
        _sub(seed, "target", dev="vdb", bus="virtio")
        _sub(seed, "readonly")
    if spec.network_mode in ("bridge", "network"):
        iface = _sub(devices, "interface", type=spec.network_mode)
        _sub(iface, "mac", address=spec.mac)
        if spec.network_mode == "bridge":
            _sub(iface, "source", bridge=spec.bridge)
        else:
            _sub(iface, "source", network=spec.network)
        _sub(iface, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    if spec.console_log:
        _sub(serial, "log", file=spec.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    # the QEMU guest agent's channel: the hypervisor rewrites $MACHINEFEATURES/shutdowntime through
    # it (slot_drain). Not in the fingerprint: a slot defined before it existed is not drifted.
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    _sub(devices, "memballoon", model="none")
    if spec.network_mode == "user":
        commandline = _sub(dom, _Q + "commandline")
        for arg in user_net_args(spec):
            _sub(commandline, _Q + "arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _text(root: ET.Element, path: str) -> str:
    element = root.find(path)
    return (element.text or "").strip() if element is not None else ""


_UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "KiB": 1, "M": 1024, "MiB": 1024, "G": 1024**2, "GiB": 1024**2}


def _kib(element: Optional[ET.Element], default_unit: str = "KiB") -> int:
    if element is None or not (element.text or "").strip():
        return 0
    return int(int(element.text.strip()) * _UNIT_KIB.get(element.get("unit", default_unit), 1))  # type: ignore[union-attr]


def _mib(element: ET.Element) -> int:
    return _kib(element, "MiB") // 1024


def fingerprint(xml: str) -> Dict[str, Any]:
    """What the collection manages in a domain definition, for a semantic comparison.

    libvirt adds addresses, controllers, defaults and reorders attributes; comparing these
    fields instead of the text makes a rerun see "no change" exactly when nothing the user
    asked for differs.
    """
    root = ET.fromstring(xml)

    disks = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        disks.append(
            (
                target.get("dev", "") if target is not None else "",
                (source.get("file") or source.get("dev") or "") if source is not None else "",
                driver.get("type", "") if driver is not None else "",
                disk.find("readonly") is not None,
            )
        )
    interfaces = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        mac = iface.find("mac")
        interfaces.append(
            (
                iface.get("type", ""),
                (source.get("bridge") or source.get("network") or "") if source is not None else "",
                (mac.get("address", "") if mac is not None else "").lower(),
            )
        )
    qemu_args = [a.get("value", "") for a in root.findall(f"./{_Q}commandline/{_Q}arg")]
    tb = root.find("./features/tcg/tb-cache")
    vcpu = root.find("vcpu")
    log = root.find("./devices/serial/log")
    return {
        "type": root.get("type", ""),
        "uuid": _text(root, "uuid"),
        "memory_kib": _kib(root.find("memory")),
        "vcpus": int(vcpu.text) if vcpu is not None and vcpu.text else 0,
        "kernel": _text(root, "./os/kernel"),
        "initrd": _text(root, "./os/initrd"),
        "cmdline": _text(root, "./os/cmdline"),
        "disks": sorted(disks),
        "interfaces": sorted(interfaces),
        "qemu_args": qemu_args,
        "tb_cache_mib": _mib(tb) if tb is not None else 0,
        "console_log": log.get("file", "") if log is not None else "",
    }


def differences(desired_xml: str, existing_xml: str) -> List[str]:
    """Names of the managed fields that differ (empty = the definition is up to date)."""
    desired = fingerprint(desired_xml)
    existing = fingerprint(existing_xml)
    return sorted(key for key in desired if desired[key] != existing.get(key))


def overlay_volume_xml(name: str, capacity_bytes: int, backing_path: str, backing_format: str) -> str:
    """A qcow2 volume whose backing file is the staged image (copy-on-write, ~0.04 s)."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    _sub(vol, "allocation", "0", unit="bytes")
    _sub(_sub(vol, "target"), "format", type="qcow2")
    backing = _sub(vol, "backingStore")
    _sub(backing, "path", backing_path)
    _sub(backing, "format", type=backing_format)
    return ET.tostring(vol, encoding="unicode")


def raw_volume_xml(name: str, capacity_bytes: int, mode: str = "") -> str:
    """A raw volume (the seed ISO); ``mode`` (such as ``0600``) sets its file permissions."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type="raw")
    if mode:
        _sub(_sub(target, "permissions"), "mode", mode)
    return ET.tostring(vol, encoding="unicode")


def lvm_remove_commands(vg: str, name: str) -> List[List[str]]:
    """Commands removing a slot's LVM snapshot (created by ``_hypervisor.lvm_snapshot_command``)."""
    return [["lvremove", "--yes", f"/dev/{vg}/{name}"]]
