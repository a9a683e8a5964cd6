# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: hypervisor storage pools, slot networks and host facts.

Pure builders (pool and network XML, LVM commands, path checks) are separate from the
functions that talk to libvirt, so the builders are unit-tested as tables and the libvirt
side stays small. ``hypervisor_pool``, ``hypervisor_network`` and ``hypervisor_info`` are
thin modules over this file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

try:
    import libvirt
except ImportError:  # pragma: no cover - FarmModule reports the missing library
    libvirt = None

DEFAULT_CONFIG_PATH = "/etc/batchvirt/hypervisor.json"
POOL_TYPES = ("dir", "logical")
NETWORK_MODES = ("nat", "bridge")
# How many missing directories a pool path may have below an existing one: the pool
# directory and its parent (/var/lib/batchvirt/images on a fresh host). More than that
# usually means a filesystem that is not mounted, or a typo.
MAX_MISSING_DIRS = 2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class HypervisorError(FarmError, ValueError):
    """Bad input or a hypervisor state we cannot work with; ``option`` names the input."""


# ---------------------------------------------------------------------------------------
# storage pools
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    """A storage pool as the collection wants it."""

    name: str
    type: str = "dir"
    path: str = ""
    source_name: str = ""  # logical: the volume group
    source_devices: Tuple[str, ...] = ()  # logical: physical volumes for a new group

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name or ""):
            raise HypervisorError(f"name: {self.name!r} is not a valid pool name (letters, digits, '_.+-')", "name")
        if self.type not in POOL_TYPES:
            raise HypervisorError(f"type: {self.type!r} is not one of {', '.join(POOL_TYPES)}", "type")
        if self.type == "dir":
            if not self.path or not os.path.isabs(self.path):
                raise HypervisorError(f"path: a dir pool needs an absolute path, got {self.path!r}", "path")
        else:
            if not _NAME_RE.match(self.source_name or ""):
                raise HypervisorError(
                    f"source_name: a logical pool needs a volume group name, got {self.source_name!r}",
                    "source_name",
                )
            for dev in self.source_devices:
                if not dev.startswith("/dev/"):
                    raise HypervisorError(
                        f"source_devices: {dev!r} is not a block device path under /dev/", "source_devices"
                    )
            if self.path and self.path != "/dev/" + self.source_name:
                raise HypervisorError(
                    f"path: a logical pool's path is /dev/{self.source_name}, got {self.path!r}", "path"
                )

    @property
    def target_path(self) -> str:
        return self.path if self.type == "dir" else "/dev/" + self.source_name

    def summary(self) -> Dict[str, Any]:
        """The parts of a pool definition the collection manages (used for diffs)."""
        return {
            "name": self.name,
            "type": self.type,
            "path": os.path.normpath(self.target_path),
            "source_name": self.source_name if self.type == "logical" else "",
            "source_devices": sorted(self.source_devices) if self.type == "logical" else [],
        }


def pool_xml(spec: PoolSpec, uuid: str = "") -> str:
    """libvirt pool XML for ``spec`` (``uuid``: the existing pool's, when redefining it)."""
    root = ET.Element("pool", {"type": spec.type})
    ET.SubElement(root, "name").text = spec.name
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    if spec.type == "logical":
        source = ET.SubElement(root, "source")
        for dev in spec.source_devices:
            ET.SubElement(source, "device", {"path": dev})
        ET.SubElement(source, "name").text = spec.source_name
        ET.SubElement(source, "format", {"type": "lvm2"})
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = spec.target_path
    return ET.tostring(root, encoding="unicode")


def pool_summary_from_xml(xml: str) -> Dict[str, Any]:
    """The managed parts of an existing pool's XML, comparable to :meth:`PoolSpec.summary`."""
    root = ET.fromstring(xml)
    kind = root.get("type", "")
    path = root.findtext("target/path") or ""
    return {
        "name": root.findtext("name") or "",
        "type": kind,
        "path": os.path.normpath(path) if path else "",
        "source_name": (root.findtext("source/name") or "") if kind == "logical" else "",
        "source_devices": sorted(d.get("path", "") for d in root.findall("source/device")) if kind == "logical" else [],
    }


def lvm_build_commands(
    vg: str, devices: Sequence[str], existing_vgs: Sequence[str], existing_pvs: Sequence[str]
) -> List[List[str]]:
    """The commands that create volume group ``vg`` on ``devices`` (nothing if it exists).

    Devices that are already physical volumes are not initialised again; the group is
    created with ``vgcreate``. Without devices a missing group cannot be created.
    """
    if vg in existing_vgs:
        return []
    if not devices:
        raise HypervisorError(
            f"source_devices: volume group {vg!r} does not exist and no devices were given to create it on",
            "source_devices",
        )
    commands = [["pvcreate", "--yes", dev] for dev in devices if dev not in existing_pvs]
    commands.append(["vgcreate", vg, *devices])
    return commands


def lvm_snapshot_command(vg: str, origin: str, name: str, size_mib: int) -> List[str]:
    """A copy-on-write snapshot of logical volume ``origin`` for a slot (where device-mapper exists)."""
    if size_mib <= 0:
        raise HypervisorError(f"size_mib must be positive, got {size_mib}", "size_mib")
    for label, value in (("vg", vg), ("origin", origin), ("name", name)):
        if not _NAME_RE.match(value or ""):
            raise HypervisorError(f"{label}: {value!r} is not a valid LVM name", label)
    return ["lvcreate", "--snapshot", "--name", name, "--size", f"{size_mib}m", f"{vg}/{origin}"]


def parse_lvm_report(text: str, key: str) -> List[str]:
    """Names from ``vgs``/``pvs --reportformat json -o vg_name|pv_name`` output."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError:
        raise HypervisorError(f"cannot parse the LVM report: {text[:200]!r}", "lvm") from None
    names: List[str] = []
    for report in data.get("report", []):
        for section in report.values():
            for row in section:
                value = (row.get(key) or "").strip()
                if value:
                    names.append(value)
    return names


# ---------------------------------------------------------------------------------------
# pool paths
# ---------------------------------------------------------------------------------------
def check_pool_path(
    path: str,
    min_free_mib: int = 0,
    statvfs: Callable[[str], Any] = os.statvfs,
    exists: Callable[[str], bool] = os.path.exists,
    isdir: Callable[[str], bool] = os.path.isdir,
) -> List[str]:
    """Check a dir pool's path before using it; returns the directories to create.

    Refuses a path whose nearest existing ancestor is more than :data:`MAX_MISSING_DIRS`
    levels up (a filesystem that is not mounted?), a path that exists but is not a
    directory, and a filesystem with less than ``min_free_mib`` MiB available.
    """
    if not os.path.isabs(path):
        raise HypervisorError(f"path: {path!r} is not an absolute path", "path")
    path = os.path.normpath(path)
    missing: List[str] = []
    current = path
    while not exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:  # pragma: no cover - '/' always exists
            break
        current = parent
    if not isdir(current):
        raise HypervisorError(f"path: {current} exists but is not a directory", "path")
    if len(missing) > MAX_MISSING_DIRS:
        raise HypervisorError(
            "path: %s does not exist, nor does %s: is the filesystem meant to hold the pool mounted? "
            "(only the pool directory and its parent are created: create or mount %s first)"
            % (path, missing[-1], missing[-1]),
            "path",
        )
    if min_free_mib > 0:
        st = statvfs(current)
        free_mib = st.f_bavail * st.f_frsize // (1024 * 1024)
        if free_mib < min_free_mib:
            raise HypervisorError(
                "path: the filesystem holding %s has %d MiB available, less than the %d MiB required: "
                "free space there or choose another path" % (path, free_mib, min_free_mib),
                "path",
            )
    return list(reversed(missing))


# ---------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkSpec:
    """A libvirt network for slots: ``nat`` (libvirt's own bridge, DHCP) or ``bridge`` (a host bridge)."""

    name: str
    mode: str
    bridge: str
    address: str = ""  # nat: the host side, CIDR (e.g. 192.168.150.1/24)
    dhcp: bool = True

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name or ""):
            raise HypervisorError(f"name: {self.name!r} is not a valid network name", "name")
        if self.mode not in NETWORK_MODES:
            raise HypervisorError(f"mode: {self.mode!r} is not one of {', '.join(NETWORK_MODES)}", "mode")
        if not _IFNAME_RE.match(self.bridge or ""):
            raise HypervisorError(f"bridge: {self.bridge!r} is not a valid interface name (1-15 characters)", "bridge")
        if self.mode == "nat":
            self.interface  # noqa: B018 - validates the address

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        try:
            iface = ipaddress.IPv4Interface(self.address)
        except ValueError:
            raise HypervisorError(
                f"address: {self.address!r} is not an IPv4 address with prefix such as 192.168.150.1/24", "address"
            ) from None
        if iface.network.prefixlen > 29:
            raise HypervisorError(
                f"address: {iface.with_prefixlen} leaves no room for guests (prefix > /29): give the prefix, e.g. /24",
                "address",
            )
        if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            raise HypervisorError(
                f"address: {iface.ip} is the network or broadcast address of {iface.network}", "address"
            )
        return iface

    def dhcp_range(self) -> Tuple[str, str]:
        """Every host address of the network but the host's own, as one range (start, end)."""
        iface = self.interface
        hosts = [iface.network.network_address + 1, iface.network.broadcast_address - 1]
        start, end = hosts
        if start == iface.ip:
            start += 1
        if end == iface.ip:
            end -= 1
        return str(start), str(end)

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "mode": self.mode, "bridge": self.bridge}
        if self.mode == "nat":
            iface = self.interface
            out.update(
                address=str(iface.ip),
                netmask=str(iface.netmask),
                dhcp=list(self.dhcp_range()) if self.dhcp else [],
            )
        return out


def network_xml(spec: NetworkSpec, uuid: str = "") -> str:
    """libvirt network XML for ``spec`` (``uuid``: the existing network's, when redefining it)."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = spec.name
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "forward", {"mode": spec.mode})
    if spec.mode == "bridge":
        ET.SubElement(root, "bridge", {"name": spec.bridge})
    else:
        ET.SubElement(root, "bridge", {"name": spec.bridge, "stp": "on", "delay": "0"})
        iface = spec.interface
        ip = ET.SubElement(root, "ip", {"address": str(iface.ip), "netmask": str(iface.netmask)})
        if spec.dhcp:
            start, end = spec.dhcp_range()
            ET.SubElement(ET.SubElement(ip, "dhcp"), "range", {"start": start, "end": end})
    return ET.tostring(root, encoding="unicode")


def network_summary_from_xml(xml: str) -> Dict[str, Any]:
    """The managed parts of an existing network's XML, comparable to :meth:`NetworkSpec.summary`."""
    root = ET.fromstring(xml)
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else "isolated"
    bridge = root.find("bridge")
    out: Dict[str, Any] = {
        "name": root.findtext("name") or "",
        "mode": mode,
        "bridge": bridge.get("name", "") if bridge is not None else "",
    }
    ip = root.find("ip")
    if mode != "bridge" and ip is not None:
        rng = ip.find("dhcp/range")
        out.update(
            address=ip.get("address", ""),
            netmask=ip.get("netmask", "") or _prefix_to_netmask(ip.get("prefix", "")),
            dhcp=[rng.get("start", ""), rng.get("end", "")] if rng is not None else [],
        )
    return out


def _prefix_to_netmask(prefix: str) -> str:
    if not prefix:
        return ""
    return str(ipaddress.IPv4Network("0.0.0.0/%s" % prefix).netmask)


# ---------------------------------------------------------------------------------------
# libvirt: ensure pools and networks
# ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What an ensure function did (or would do in check mode)."""

    changed: bool = False
    actions: List[str] = field(default_factory=list)
    before: Dict[str, Any] = field(default_factory=dict)
    after: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    def did(self, action: str) -> None:
        self.changed = True
        self.actions.append(action)


def _lookup(fn: Callable[[str], Any], name: str) -> Any:
    try:
        return fn(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_NETWORK):
            return None
        raise


def _inactive_xml(obj: Any, flag: int) -> str:
    """The persistent definition (what the next start uses), or the live one where unsupported."""
    try:
        return obj.XMLDesc(flag)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            return obj.XMLDesc(0)
        raise


def _state(obj: Any) -> Dict[str, Any]:
    return {"active": bool(obj.isActive()), "autostart": bool(obj.autostart())}


def ensure_pool(
    conn: Any,
    spec: PoolSpec,
    state: str = "present",
    active: bool = True,
    autostart: bool = True,
    min_free_mib: int = 0,
    check_mode: bool = False,
    run_command: Optional[Callable[[List[str]], str]] = None,
) -> Outcome:
    """Define, build, start and autostart a pool (or remove its definition when ``state=absent``).

    Removing a pool never deletes its directory or volumes: the image cache and slot
    disks stay on disk.
    """
    out = Outcome()
    pool = _lookup(conn.storagePoolLookupByName, spec.name)
    if pool is not None:
        out.before = dict(pool_summary_from_xml(_inactive_xml(pool, libvirt.VIR_STORAGE_XML_INACTIVE)), **_state(pool))
    if state == "absent":
        if pool is not None:
            out.did("undefine")
            if not check_mode:
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
        return out

    to_create: List[str] = []
    commands: List[List[str]] = []
    if spec.type == "dir":
        to_create = check_pool_path(spec.path, min_free_mib)
    elif run_command is not None:
        vgs = parse_lvm_report(run_command(["vgs", "--reportformat", "json", "-o", "vg_name"]), "vg_name")
        pvs = parse_lvm_report(run_command(["pvs", "--reportformat", "json", "-o", "pv_name"]), "pv_name")
        commands = lvm_build_commands(spec.source_name, spec.source_devices, vgs, pvs)

    for directory in to_create:
        out.did(f"mkdir {directory}")
        if not check_mode:
            os.mkdir(directory, 0o755)
    for command in commands:
        out.did(" ".join(command))
        if not check_mode and run_command is not None:
            run_command(command)

    wanted = spec.summary()
    current = {k: v for k, v in out.before.items() if k in wanted}
    if pool is None or current != wanted:
        out.did("define" if pool is None else "redefine")
        if not check_mode:
            if pool is not None and pool.isActive() and current.get("path") != wanted["path"]:
                pool.destroy()
            pool = conn.storagePoolDefineXML(pool_xml(spec, pool.UUIDString() if pool is not None else ""), 0)
    if pool is not None and not check_mode and spec.type == "dir" and not os.path.isdir(spec.path):
        pool.build(0)
    if active and (pool is None or not pool.isActive()):
        out.did("start")
        if not check_mode:
            pool.create(0)
    elif not active and pool is not None and pool.isActive():
        out.did("stop")
        if not check_mode:
            pool.destroy()
    if pool is None or bool(pool.autostart()) != autostart:
        out.did("autostart" if autostart else "no autostart")
        if not check_mode:
            pool.setAutostart(1 if autostart else 0)
    out.after = dict(wanted, active=active, autostart=autostart)
    if pool is not None and not check_mode:
        out.info = pool_info(pool)
    return out


def ensure_network(
    conn: Any,
    spec: Optional[NetworkSpec],
    name: str,
    state: str = "present",
    active: bool = True,
    autostart: bool = True,
    check_mode: bool = False,
    bridge_exists: Callable[[str], bool] = lambda br: os.path.isdir(f"/sys/class/net/{br}/bridge"),
) -> Outcome:
    """Define (and start/autostart) a libvirt network, or remove it when ``state=absent``."""
    out = Outcome()
    net = _lookup(conn.networkLookupByName, name)
    if net is not None:
        out.before = dict(network_summary_from_xml(_inactive_xml(net, libvirt.VIR_NETWORK_XML_INACTIVE)), **_state(net))
    if state == "absent":
        if net is not None:
            out.did("undefine")
            if not check_mode:
                if net.isActive():
                    net.destroy()
                net.undefine()
        return out
    if spec is None:
        raise HypervisorError("mode and bridge are required with state=present", "mode")
    if spec.mode == "bridge" and not bridge_exists(spec.bridge):
        raise HypervisorError(
            f"bridge: the host bridge {spec.bridge!r} does not exist: create it (enslaving the physical NIC) "
            "in the host's network configuration first",
            "bridge",
        )
    wanted = spec.summary()
    current = {k: v for k, v in out.before.items() if k in wanted}
    if net is None or current != wanted:
        out.did("define" if net is None else "redefine")
        if not check_mode:
            was_active = net is not None and net.isActive()
            if was_active:
                net.destroy()
            net = conn.networkDefineXML(network_xml(spec, net.UUIDString() if net is not None else ""))
    if active and (net is None or not net.isActive()):
        out.did("start")
        if not check_mode:
            net.create()
    elif not active and net is not None and net.isActive():
        out.did("stop")
        if not check_mode:
            net.destroy()
    if net is None or bool(net.autostart()) != autostart:
        out.did("autostart" if autostart else "no autostart")
        if not check_mode:
            net.setAutostart(1 if autostart else 0)
    out.after = dict(wanted, active=active, autostart=autostart)
    return out


_POOL_STATES = {0: "inactive", 1: "building", 2: "running", 3: "degraded", 4: "inaccessible"}


def pool_info(pool: Any) -> Dict[str, Any]:
    state, capacity, allocation, available = pool.info()
    summary = pool_summary_from_xml(pool.XMLDesc(0))
    return {
        "name": pool.name(),
        "type": summary["type"],
        "path": summary["path"],
        "state": _POOL_STATES.get(state, str(state)),
        "active": bool(pool.isActive()),
        "autostart": bool(pool.autostart()),
        "capacity_mib": capacity // (1024 * 1024),
        "allocation_mib": allocation // (1024 * 1024),
        "available_mib": available // (1024 * 1024),
    }


# ---------------------------------------------------------------------------------------
# the modules
# ---------------------------------------------------------------------------------------
def run_pool_module(module: Any) -> Dict[str, Any]:
    """The ``hypervisor_pool`` module."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    p = module.params

    def run(command: List[str]) -> str:
        rc, out, err = module.run_command(command)
        if rc != 0:
            raise HypervisorError("%s failed (rc=%d): %s" % (" ".join(command), rc, (err or out).strip()), "lvm")
        return str(out)

    spec = PoolSpec(
        name=p["name"],
        type=p["type"],
        path=p["path"] if p["type"] == "dir" else "",
        source_name=p["source_name"] or "",
        source_devices=tuple(p["source_devices"]),
    )
    conn = connect(p["uri"])
    try:
        out = ensure_pool(
            conn,
            spec,
            state=p["state"],
            active=p["active"],
            autostart=p["autostart"],
            min_free_mib=p["min_free_mib"],
            check_mode=module.check_mode,
            run_command=run if p["type"] == "logical" else None,
        )
    finally:
        conn.close()
    result: Dict[str, Any] = {"changed": out.changed, "actions": out.actions}
    if out.info:
        result["pool"] = out.info
    if module._diff:
        result["diff"] = {"before": out.before, "after": out.after}
    return result


def run_network_module(module: Any) -> Dict[str, Any]:
    """The ``hypervisor_network`` module."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    p = module.params
    result: Dict[str, Any] = {}
    spec = None
    if p["state"] == "present":
        spec = NetworkSpec(
            name=p["name"], mode=p["mode"], bridge=p["bridge"], address=p["address"] or "", dhcp=p["dhcp"]
        )
        result["xml"] = network_xml(spec)
    conn = connect(p["uri"])
    try:
        out = ensure_network(
            conn,
            spec,
            p["name"],
            state=p["state"],
            active=p["active"],
            autostart=p["autostart"],
            check_mode=module.check_mode,
        )
    finally:
        conn.close()
    result.update(changed=out.changed, actions=out.actions)
    if module._diff:
        result["diff"] = {"before": out.before, "after": out.after}
    return result
