# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the hypervisor as the slot engine sees it during one module call.

:class:`SlotHost` holds the libvirt connection, the run mode (check, diff, local or remote)
and the lookups every step shares (domains, storage pools, the default domain type), so that
the plan, create, repair and remove steps are functions of a host and a plan.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from xml.sax.saxutils import escape

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    default_domain_type,
    libvirt,
    slot_metadata_xml,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    NAMESPACE,
    PREFIX,
    SlotMetadata,
    SlotMetadataError,
    from_xml,
    to_xml,
)

DEFAULT_POOL = "batchvirt-slots"
CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"
RunCommand = Callable[[List[str]], Tuple[int, str, str]]


class SlotError(FarmError):
    """A slot request that cannot be carried out; ``option`` names what to change."""


@dataclass
class SlotResult:
    """What one slot of a module call did (``result`` is the slot's entry in ``slots``)."""

    name: str
    changed: bool = False
    actions: List[str] = field(default_factory=list)
    result: Dict[str, Any] = field(default_factory=dict)
    diff: Optional[Dict[str, str]] = None
    error: str = ""


def read_metadata(dom: Any) -> Optional[SlotMetadata]:
    """A domain's slot metadata, or None when the domain is not a slot (one metadata() call)."""
    text = slot_metadata_xml(dom)
    return from_xml(text) if text else None


def metadata_for_libvirt(meta: SlotMetadata) -> str:
    """The metadata element as ``virDomain.setMetadata()`` wants it: without the namespace,
    which libvirt adds itself (with ``PREFIX``)."""
    return to_xml(meta, namespaced=False)


def load_slot(conn: Any, name: str, error: Callable[[str, str], Exception]) -> Tuple[Any, SlotMetadata]:
    """The domain and metadata of slot ``name``; ``error(message, "name")`` is raised when it does
    not exist, is not a slot or its metadata cannot be read."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        raise error(f"slot {name} does not exist on this hypervisor", "name") from None
    text = slot_metadata_xml(dom)
    if not text:
        raise error(f"domain {name} is not a batchvirt slot (no slot metadata)", "name")
    try:
        return dom, from_xml(text)
    except SlotMetadataError as exc:
        raise error(f"slot {name}: {exc}", "name") from None


def write_metadata(dom: Any, meta: SlotMetadata) -> None:
    """Write a slot's metadata to its persistent definition, and to the running domain when it runs."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_for_libvirt(meta), PREFIX, NAMESPACE, flags)


def is_local(uri: str) -> bool:
    """Local URIs only: files (seed ISOs, console logs) are written on this host."""
    scheme = uri.split(":", 1)[0]
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    return "+" not in scheme and not rest.split("/", 1)[0]


class SlotHost:
    """One libvirt connection, the run mode, and the lookups the slot steps share."""

    def __init__(
        self,
        conn: Any,
        now: datetime.datetime,
        check_mode: bool = False,
        diff_mode: bool = False,
        run_command: Optional[RunCommand] = None,
        batch_adapter: Optional[Callable[[str], Any]] = None,
        local: bool = True,
    ) -> None:
        self.conn = conn
        self.now = now
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.run_command = run_command
        self.batch_adapter = batch_adapter
        self.local = local
        self.warnings: List[str] = []
        self._domains: Optional[Dict[str, Any]] = None
        self._pools: Dict[str, Tuple[Any, str]] = {}
        self._domain_type: Optional[str] = None

    # -- lookups ----------------------------------------------------------------------
    @property
    def domains(self) -> Dict[str, Any]:
        if self._domains is None:
            self._domains = {d.name(): d for d in self.conn.listAllDomains(0)}
        return self._domains

    def pool(self, name: str) -> Tuple[Any, str]:
        """The active storage pool ``name`` and its target directory."""
        if name not in self._pools:
            try:
                pool = self.conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                raise SlotError(
                    f"storage pool {name} does not exist on this hypervisor: run playbooks/hypervisors.yml "
                    "(the hypervisor role creates it) or set pool",
                    "pool",
                ) from None
            if not pool.isActive():
                raise SlotError(f"storage pool {name} is not active: start it (virsh pool-start {name})", "pool")
            target = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path") or ""
            self._pools[name] = (pool, target)
        return self._pools[name]

    def domain_type(self, wanted: Optional[str]) -> str:
        if wanted:
            return wanted
        if self._domain_type is None:
            self._domain_type = default_domain_type(self.conn.getCapabilities())
        return self._domain_type

    def check_network(self, network: Dict[str, Any]) -> None:
        """Refuse a bridge or libvirt network that does not exist, or an SSH port out of range."""
        mode = network.get("mode") or "user"
        if mode == "bridge":
            bridge = network.get("bridge")
            if not bridge:
                raise SlotError("network.mode=bridge needs network.bridge", "network.bridge")
            if self.local and not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
                raise SlotError(
                    f"network.bridge {bridge} does not exist on this hypervisor (or is not a bridge): create it "
                    "(the hypervisor role's bridge settings) or fix the name",
                    "network.bridge",
                )
        elif mode == "network":
            name = network.get("network")
            if not name:
                raise SlotError("network.mode=network needs network.network (a libvirt network)", "network.network")
            try:
                self.conn.networkLookupByName(name)
            except libvirt.libvirtError:
                raise SlotError(f"network.network: libvirt network {name} does not exist", "network.network") from None
        elif mode == "user":
            port = network.get("ssh_port")
            if port is not None and not 1 <= int(port) <= 65535:
                raise SlotError(f"network.ssh_port {port} is not a TCP port", "network.ssh_port")

    # -- actions ----------------------------------------------------------------------
    def run(self, argv: List[str]) -> None:
        """Run a command on the hypervisor (LVM); a failure raises SlotError blaming ``overlay``."""
        if self.run_command is None:
            raise SlotError("LVM overlays need a command runner", "overlay")
        rc, out, err = self.run_command(argv)
        if rc != 0:
            raise SlotError("%s failed (rc=%d): %s" % (" ".join(argv), rc, (err or out).strip()), "overlay")

    def set_metadata(self, dom: Any, meta: SlotMetadata, active: bool) -> None:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_for_libvirt(meta), PREFIX, NAMESPACE, flags)

    @staticmethod
    def refresh(pool: Any) -> None:
        try:
            pool.refresh(0)
        except libvirt.libvirtError:
            pass

    @staticmethod
    def volume(pool: Any, name: str) -> Any:
        """The pool's volume ``name`` as libvirt knows it (on the hypervisor), or None."""
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def delete_volume(self, pool: Any, path: str) -> bool:
        """Delete a slot volume through libvirt (works over a remote URI); locally, a file
        libvirt does not know as a volume is unlinked as well."""
        vol = self.volume(pool, os.path.basename(path))
        if vol is not None:
            vol.delete(0)
            return True
        if self.local and os.path.exists(path):
            os.unlink(path)
            return True
        return False

    # -- files on a remote hypervisor ---------------------------------------------------
    def remote_image(self, spec: Dict[str, Any]) -> Optional[Any]:
        """With a remote ``uri``, ``image.path`` as a volume of a storage pool on the hypervisor
        (an ``_slot_image.ImageSource``); None when the module runs on the hypervisor or gives no
        path (the image is then resolved on this machine, as before)."""
        path = (spec or {}).get("path") or ""
        if self.local or not path:
            return None
        from ansible_collections.batchvirt.farm.plugins.module_utils._slot_image import ImageSource

        vol = self._volume_by_path(path)
        if vol is None:
            if os.path.isfile(path):  # a "remote" URI to this very machine (qemu+unix://, ...)
                return None
            raise SlotError(
                f"image.path {path} is not a volume of an active storage pool on the hypervisor: with a remote "
                "uri the image must be in one of its pools (such as batchvirt-images, where "
                "batchvirt.farm.image stages it), or run the module on the hypervisor",
                "image.path",
            )
        target = ET.fromstring(vol.XMLDesc(0)).find("./target/format")
        fmt = spec.get("format") or (target.get("type") if target is not None else "") or "raw"
        base = os.path.basename(path)
        return ImageSource(
            identifier=spec.get("identifier") or base.split(".")[0] or base,
            version=spec.get("version") or "local",
            path=path,
            format=fmt,
            sha512=spec.get("sha512") or "",
            virtual_size=int(vol.info()[1]),  # capacity: the qcow2's virtual size, a raw file's size
        )

    def _volume_by_path(self, path: str) -> Optional[Any]:
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            pass
        # staged since the pool was last refreshed: refresh the pools of its directory, once
        directory = os.path.dirname(path)
        for pool in self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            if ET.fromstring(pool.XMLDesc(0)).findtext("./target/path") == directory:
                self.refresh(pool)
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            return None

    @contextlib.contextmanager
    def directory_pool(self, directory: str) -> Iterator[Optional[Any]]:
        """A transient storage pool over ``directory`` on the hypervisor, so that a file outside
        the slot pools (a console log) can be read and deleted through libvirt; None (with a
        warning) when libvirt refuses one."""
        xml = "<pool type='dir'><name>batchvirt-tmp-%s</name><target><path>%s</path></target></pool>" % (
            uuid.uuid4().hex[:12],
            escape(directory),
        )
        try:
            pool = self.conn.storagePoolCreateXML(xml, 0)
        except libvirt.libvirtError as exc:
            self.warnings.append(f"{directory} on the hypervisor could not be reached through libvirt: {exc}")
            pool = None
        try:
            yield pool
        finally:
            if pool is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.destroy()  # a transient pool: stopping it removes it, not the directory

    def download(self, vol: Any, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of a volume on the hypervisor."""
        size = int(vol.info()[1])
        offset = max(0, size - max_bytes)
        if size <= offset:
            return b""
        stream = self.conn.newStream(0)
        vol.download(stream, offset, size - offset, 0)
        chunks: List[bytes] = []
        while True:
            data = stream.recv(65536)
            if not isinstance(data, bytes) or not data:
                break
            chunks.append(data)
        stream.finish()
        return b"".join(chunks)

    def remove_pool_file(self, pool: Optional[Any], name: str, tail_bytes: int = 0) -> bytes:
        """Delete the file ``name`` of ``pool`` (a :meth:`directory_pool`, None when libvirt
        refused one) on the hypervisor; with ``tail_bytes``, return its last bytes."""
        vol = self.volume(pool, name) if pool is not None else None
        if vol is None:
            return b""
        tail = b""
        if tail_bytes:
            try:
                tail = self.download(vol, tail_bytes)
            except libvirt.libvirtError as exc:
                self.warnings.append(f"{name} on the hypervisor could not be read: {exc}")
        vol.delete(0)
        return tail

    def batch_views(self, metas: List[SlotMetadata]) -> Dict[str, BatchView]:
        """One bulk query of the batch system for the given slots (none configured: {})."""
        if self.batch_adapter is None or not metas:
            return {}
        by_system: Dict[str, List[str]] = {}
        for meta in metas:
            by_system.setdefault(meta.batch_system, []).append(meta.node_name)
        views: Dict[str, BatchView] = {}
        for system, nodes in by_system.items():
            try:
                views.update(self.batch_adapter(system).bulk_view(nodes))
            except Exception as exc:  # the batch system is advisory here: stay conservative
                self.warnings.append(f"batch system {system} could not be asked about {', '.join(nodes)}: {exc}")
        return views

    def describe_existing(self, name: str, meta: SlotMetadata, active: bool) -> Dict[str, Any]:
        """A slot's entry in the results, from its metadata alone."""
        return {
            "name": name,
            "running": active,
            "lifecycle": meta.lifecycle(self.now, active),
            "metadata": meta.to_dict(),
            "addresses": [meta.address] if meta.address else [],
            "ssh": {"host": meta.ssh_host, "port": meta.ssh_port, "user": meta.ssh_user},
        }
