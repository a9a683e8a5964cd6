# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the engine of the ``slot`` module (one slot or many in one call).

For each slot: read what exists (domain, metadata, overlay, seed ISO), compute the
difference with what is wanted, act only outside check mode, and report the difference as
a diff. Everything is validated before anything is created; a slot whose creation fails
half-way is rolled back (no orphan overlay, seed ISO or domain).
"""

from __future__ import annotations

import datetime
import os
import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils import _seed
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    default_domain_type,
    libvirt,
    slot_metadata_xml,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import (
    DRAINED,
    EXPIRED,
    STOPPED,
    BatchView,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import (
    DomainSpec,
    differences,
    domain_xml,
    lvm_remove_commands,
    lvm_snapshot_commands,
    overlay_volume_xml,
    raw_volume_xml,
    slot_mac,
    slot_uuid,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import (
    AddressPool,
    LayoutError,
    check_unique,
    layout,
    plan_count,
    without_slots,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    NAMESPACE,
    PREFIX,
    SlotMetadata,
    SlotMetadataError,
    format_time,
    from_xml,
    plan_lifetime,
    to_xml,
)

DEFAULT_POOL = "batchvirt-slots"
DEFAULT_IMAGE_ROOT = "/var/lib/batchvirt/images"
CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"
GIB = 1024**3
# Options a slot of a ``slots`` list may set for itself; the module's top-level options are the defaults.
PER_SLOT_KEYS = ("vcpus", "memory_mib", "disk_size_gib", "network", "worker_type", "batch_node", "cloud_init")
_MERGED_DICTS = ("network", "batch")


class SlotError(Exception):
    """A slot request that cannot be carried out; ``option`` names what to change."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


@dataclass
class ImageSource:
    identifier: str
    version: str
    path: str
    format: str
    sha512: str = ""
    virtual_size: int = 0


@dataclass
class SlotResult:
    name: str
    changed: bool = False
    actions: List[str] = field(default_factory=list)
    result: Dict[str, Any] = field(default_factory=dict)
    diff: Optional[Dict[str, str]] = None


def read_metadata(dom: Any) -> Optional[SlotMetadata]:
    """A domain's slot metadata, or None when the domain is not a slot (one metadata() call)."""
    text = slot_metadata_xml(dom)
    return from_xml(text) if text else None


def metadata_for_libvirt(meta: SlotMetadata) -> str:
    """The metadata element as ``virDomain.setMetadata()`` wants it: without the namespace,
    which libvirt adds itself (with ``PREFIX``)."""
    return to_xml(meta, namespaced=False)


# -- images -------------------------------------------------------------------------------
def image_virtual_size(path: str, fmt: str) -> int:
    """The disk size a guest sees: qcow2 from its header, raw from the file size."""
    if fmt == "qcow2":
        with open(path, "rb") as handle:
            header = handle.read(32)
        if len(header) < 32 or header[:4] != b"QFI\xfb":
            raise SlotError(f"image {path} is not a qcow2 file (bad header): give image.format", "image.format")
        return int(struct.unpack(">Q", header[24:32])[0])
    return os.path.getsize(path)


def detect_format(path: str) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


def resolve_image(spec: Dict[str, Any]) -> ImageSource:
    """The staged image of ``image`` (identifier + version from the cache, or an explicit path)."""
    spec = spec or {}
    path = spec.get("path")
    identifier = spec.get("identifier") or ""
    version = spec.get("version") or ""
    if path:
        if not os.path.isfile(path):
            raise SlotError(f"image.path {path} does not exist on the hypervisor: stage the image first", "image.path")
        fmt = spec.get("format") or detect_format(path)
        base = os.path.basename(path)
        return ImageSource(
            identifier=identifier or base.split(".")[0] or base,
            version=version or "local",
            path=path,
            format=fmt,
            sha512=spec.get("sha512") or "",
            virtual_size=image_virtual_size(path, fmt),
        )
    if not identifier or not version:
        raise SlotError("image needs identifier and version (a staged image), or path", "image")
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, ImageCacheError

    root = spec.get("cache_root") or DEFAULT_IMAGE_ROOT
    record = None
    if os.path.exists(os.path.join(root.rstrip("/") + ".cache", "cache.sqlite")):
        cache = ImageCache(root)
        try:
            if version == "latest":  # the newest ready version of the image on this hypervisor
                record = cache.latest(identifier)
                version = record.version if record is not None else version
            else:
                record = cache.get(identifier, version)
        except ImageCacheError as exc:
            raise SlotError(f"image {identifier} {version}: {exc}", "image") from None
        finally:
            cache.close()
    if record is None or record.state != "ready" or not os.path.isfile(record.path):
        state = record.state if record is not None else "unknown to the image cache"
        raise SlotError(
            "image %s version %s is not staged on this hypervisor (%s, cache %s): stage it first "
            "(playbooks/prestage.yml or batchvirt.farm.image)" % (identifier, version, state, root),
            "image",
        )
    fmt = spec.get("format") or record.format
    return ImageSource(identifier, version, record.path, fmt, record.sha512, image_virtual_size(record.path, fmt))


def kernel_boot(boot: Dict[str, Any], image: ImageSource) -> Tuple[str, str, str]:
    """kernel, initrd and cmdline: explicit, or from the image description JSON beside the image."""
    kernel, initrd, cmdline = boot.get("kernel") or "", boot.get("initrd") or "", boot.get("cmdline") or ""
    if not kernel:
        import json

        description = boot.get("description") or os.path.splitext(image.path)[0] + ".json"
        try:
            with open(description, encoding="utf-8") as handle:
                info = json.load(handle).get("boot") or {}
        except (OSError, ValueError) as exc:
            raise SlotError(
                f"boot.mode=kernel needs boot.kernel, or an image description with a boot section ({exc})",
                "boot.kernel",
            ) from None
        here = os.path.dirname(description)
        kernel = os.path.join(here, info.get("kernel") or "") if info.get("kernel") else ""
        initrd = initrd or (os.path.join(here, info["initrd"]) if info.get("initrd") else "")
        cmdline = cmdline or info.get("cmdline") or ""
        if not kernel:
            raise SlotError(f"boot.mode=kernel: {description} names no kernel; give boot.kernel", "boot.kernel")
    for label, value in (("boot.kernel", kernel), ("boot.initrd", initrd)):
        if value and not os.path.isfile(value):
            raise SlotError(f"{label} {value} does not exist on the hypervisor", label)
    return kernel, initrd, cmdline


# -- requests -----------------------------------------------------------------------------
def parse_forwards(forwards: Sequence[str], default_host: str) -> List[Tuple[str, int, int]]:
    """``network.forwards`` entries (``[host:]host_port:guest_port``) as (host, host port, guest port)."""
    out = []
    for entry in forwards:
        parts = str(entry).rsplit(":", 2)
        try:
            host = parts[0] if len(parts) == 3 else default_host
            out.append((host, int(parts[-2]), int(parts[-1])))
        except (ValueError, IndexError):
            raise SlotError(
                f"network.forwards: {entry!r} is not [host:]host_port:guest_port, for example 127.0.0.1:16819:16819",
                "network.forwards",
            ) from None
    return out


def expand_requests(params: Dict[str, Any], host: Any = None) -> List[Dict[str, Any]]:
    """One parameter dict per slot: ``name``, a ``slots`` list, or a ``layout``."""
    base = {k: v for k, v in params.items() if k not in ("slots", "layout")}
    if params.get("name"):
        return [dict(base)]
    entries: List[Dict[str, Any]] = []
    if params.get("layout") is not None:
        entries = layout_entries(params, host)
    elif params.get("slots") is not None:
        entries = list(params["slots"])
    requests = []
    for entry in entries:
        request = dict(base)
        for key, value in entry.items():
            if value is None:
                continue
            if key == "batch_node":
                request["batch"] = dict(request.get("batch") or {}, node_name=value)
                continue
            if key in _MERGED_DICTS and isinstance(value, dict):
                merged = dict(base.get(key) or {})
                merged.update({k: v for k, v in value.items() if v is not None})
                request[key] = merged
            else:
                request[key] = value
        requests.append(request)
    return requests


def layout_entries(params: Dict[str, Any], host: Any) -> List[Dict[str, Any]]:
    """The ``layout`` option turned into slot entries (name, address, ssh_port)."""
    spec = params["layout"]
    hypervisor = params["hypervisor"]
    if host is None:
        raise SlotError("layout needs the host's capacity", "layout")
    count = plan_count(
        without_slots(host, hypervisor),
        spec.get("count", "auto"),
        params["vcpus"],
        params["memory_mib"],
        spec.get("overcommit_cpu") or 1.0,
    )
    pool = AddressPool.from_spec(spec["address_pool"]) if spec.get("address_pool") else None
    table = layout(
        hypervisor,
        spec.get("index") or 0,
        count,
        stride=spec.get("stride") or 32,
        pool=pool,
        ssh_port_base=spec.get("ssh_port_base"),
    )
    entries = []
    for row in table:
        network: Dict[str, Any] = {}
        if "address" in row:
            network["address"] = row["address"]
            if pool is not None and pool.gateway is not None:
                network["gateway"] = str(pool.gateway)
            if pool is not None and pool.dns:
                network["dns"] = list(pool.dns)
        if "ssh_port" in row:
            network["ssh_port"] = row["ssh_port"]
        entries.append({"name": row["name"], "network": network})
    return entries


# -- the engine ---------------------------------------------------------------------------
class SlotManager:
    """Carries out slot requests on one libvirt connection (one module call)."""

    def __init__(
        self,
        conn: Any,
        now: datetime.datetime,
        check_mode: bool = False,
        diff_mode: bool = False,
        run_command: Optional[Callable[[List[str]], Tuple[int, str, str]]] = None,
        batch_adapter: Optional[Callable[[str], Any]] = None,
        local: bool = True,
        start_concurrency: int = 4,
    ) -> None:
        self.conn = conn
        self.start_concurrency = start_concurrency
        self._pending_starts: List[Tuple[Dict[str, Any], Any, Optional[List[Tuple[str, Any]]]]] = []
        self.now = now
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.run_command = run_command
        self.batch_adapter = batch_adapter
        self.local = local
        self.warnings: List[str] = []
        self._domains: Optional[Dict[str, Any]] = None
        self._pools: Dict[str, Tuple[Any, str]] = {}
        self._images: Dict[Tuple[Any, ...], ImageSource] = {}
        self._domain_type: Optional[str] = None

    # -- lookups ----------------------------------------------------------------------
    @property
    def domains(self) -> Dict[str, Any]:
        if self._domains is None:
            self._domains = {d.name(): d for d in self.conn.listAllDomains(0)}
        return self._domains

    def pool(self, name: str) -> Tuple[Any, str]:
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

    def image(self, spec: Dict[str, Any]) -> ImageSource:
        key = tuple(sorted((k, str(v)) for k, v in (spec or {}).items()))
        if key not in self._images:
            self._images[key] = resolve_image(spec)
        return self._images[key]

    def domain_type(self, wanted: Optional[str]) -> str:
        if wanted:
            return wanted
        if self._domain_type is None:
            self._domain_type = default_domain_type(self.conn.getCapabilities())
        return self._domain_type

    def check_network(self, network: Dict[str, Any]) -> None:
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

    # -- building a slot's wanted state -------------------------------------------------
    def plan(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """Everything one slot needs, validated, without touching anything."""
        name = req["name"]
        hypervisor = req["hypervisor"]
        network = dict(req.get("network") or {})
        network.setdefault("mode", "user")
        self.check_network(network)
        image = self.image(req.get("image") or {})
        pool, pool_dir = self.pool(req.get("pool") or DEFAULT_POOL)
        overlay = req.get("overlay") or {}
        overlay_type = overlay.get("type") or "qcow2"
        size = image.virtual_size
        if req.get("disk_size_gib"):
            size = int(req["disk_size_gib"]) * GIB
            if size < image.virtual_size:
                raise SlotError(
                    "disk_size_gib=%s is smaller than the image's virtual size (%.1f GiB): raise it or leave it unset"
                    % (req["disk_size_gib"], image.virtual_size / GIB),
                    "disk_size_gib",
                )
        boot = req.get("boot") or {}
        kernel = initrd = cmdline = ""
        if (boot.get("mode") or "bootloader") == "kernel":
            kernel, initrd, cmdline = kernel_boot(boot, image)
        # validate the lifetime now so a bad value fails before anything is created
        try:
            plan_lifetime(name, self.now, req["lifetime"], req["max_job_walltime"], req.get("lifetime_spread") or 0)
        except SlotMetadataError as exc:
            raise SlotError(str(exc), exc.field_name) from None
        mac = (network.get("mac") or slot_mac(hypervisor, name)).lower()
        ssh_host = network.get("ssh_host") or ("127.0.0.1" if network["mode"] == "user" else "")
        ssh_port = int(network.get("ssh_port") or (0 if network["mode"] == "user" else 22))
        if network["mode"] != "user" and network.get("address"):
            ssh_host = network["address"].split("/", maxsplit=1)[0]
        if overlay_type == "lvm":
            vg = overlay.get("volume_group")
            if not vg or not overlay.get("origin"):
                raise SlotError("overlay.type=lvm needs overlay.volume_group and overlay.origin", "overlay")
            overlay_path = f"/dev/{vg}/{name}"
        else:
            overlay_path = os.path.join(pool_dir, f"{name}.qcow2")
        spec = DomainSpec(
            name=name,
            uuid=slot_uuid(hypervisor, name),
            domain_type=self.domain_type(req.get("domain_type")),
            vcpus=req["vcpus"],
            memory_mib=req["memory_mib"],
            overlay_path=overlay_path,
            overlay_format="raw" if overlay_type == "lvm" else "qcow2",
            overlay_type="block" if overlay_type == "lvm" else "file",
            seed_path=os.path.join(pool_dir, f"{name}-seed.iso"),
            boot="kernel" if kernel else "bootloader",
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            network_mode=network["mode"],
            bridge=network.get("bridge") or "",
            network=network.get("network") or "",
            mac=mac,
            ssh_host=ssh_host or "127.0.0.1",
            ssh_port=ssh_port if network["mode"] == "user" else 0,
            console_log=os.path.join(CONSOLE_LOG_DIR, f"{name}-console.log"),
            extra_forwards=parse_forwards(network.get("forwards") or [], ssh_host or "127.0.0.1")
            if network["mode"] == "user"
            else [],
        )
        batch = req.get("batch") or {}
        return {
            "req": req,
            "name": name,
            "hypervisor": hypervisor,
            "image": image,
            "pool": pool,
            "size": size,
            "overlay_type": overlay_type,
            "overlay": overlay,
            "network": network,
            "spec": spec,
            "ssh": {"host": ssh_host, "port": ssh_port, "user": network.get("ssh_user") or "root"},
            "batch_node": batch.get("node_name") or name,
            "batch_system": batch.get("system") or "slurm",
        }

    def new_metadata(self, plan: Dict[str, Any], created_at: datetime.datetime) -> SlotMetadata:
        req = plan["req"]
        drain_at, deadline = plan_lifetime(
            plan["name"], created_at, req["lifetime"], req["max_job_walltime"], req.get("lifetime_spread") or 0
        )
        image: ImageSource = plan["image"]
        return SlotMetadata(
            name=plan["name"],
            hypervisor=plan["hypervisor"],
            image_identifier=image.identifier,
            image_version=image.version,
            image_sha512=image.sha512,
            created_at=created_at,
            drain_at=drain_at,
            deadline=deadline,
            worker_type=req.get("worker_type") or "",
            batch_system=plan["batch_system"],
            batch_node=plan["batch_node"] if plan["batch_node"] != plan["name"] else "",
            extra=self._extra(plan, {}),
            **self._network_fields(plan),
        )

    @staticmethod
    def _extra(plan: Dict[str, Any], current: Dict[str, str]) -> Dict[str, str]:
        """The metadata's extra fields: the user-mode forwards (a replacement reuses them) and a
        purpose other than ``worker`` (a golden VM, which the inventory keeps out of the farm)."""
        extra = {k: v for k, v in current.items() if k not in ("forwards", "purpose")}
        if (plan["req"].get("purpose") or "worker") != "worker":
            extra["purpose"] = plan["req"]["purpose"]
        if plan["spec"].extra_forwards:
            extra["forwards"] = ",".join("%s:%d:%d" % fwd for fwd in plan["spec"].extra_forwards)
        return extra

    @staticmethod
    def _network_fields(plan: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "network_mode": plan["network"]["mode"],
            "address": plan["network"].get("address") or "",
            "mac": plan["spec"].mac,
            "ssh_host": plan["ssh"]["host"],
            "ssh_port": plan["ssh"]["port"],
            "ssh_user": plan["ssh"]["user"],
        }

    def updated_metadata(self, plan: Dict[str, Any], current: SlotMetadata) -> SlotMetadata:
        """The current metadata with the fields a rerun may change; times and image never change."""
        req = plan["req"]
        return replace(
            current,
            worker_type=req.get("worker_type") or "",
            batch_system=plan["batch_system"],
            batch_node=plan["batch_node"] if plan["batch_node"] != plan["name"] else "",
            extra=self._extra(plan, current.extra),
            **self._network_fields(plan),
        )

    def seed_files(self, plan: Dict[str, Any], meta: SlotMetadata) -> Dict[str, str]:
        req = plan["req"]
        registration = None
        batch = req.get("batch") or {}
        if batch.get("controller"):
            from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
                BatchError,
                cloud_init_registration,
            )

            try:
                registration = cloud_init_registration(
                    system=plan["batch_system"],
                    node_name=plan["batch_node"],
                    controller=batch["controller"],
                    munge_key=batch.get("munge_key"),
                    features=batch.get("features") or (),
                    slurm_conf=batch.get("slurm_conf"),
                    dynamic=batch.get("dynamic", True) if batch.get("dynamic") is not None else True,
                    controller_port=batch.get("controller_port") or 6817,
                )
            except BatchError as exc:
                raise SlotError(f"batch: {exc}", "batch") from None
        instance_id = "%s-%s" % (plan["name"], meta.created_at.strftime("%Y%m%dT%H%M%SZ"))
        files = {
            "user-data": _seed.user_data(
                req.get("cloud_init"), req.get("ssh_authorized_keys"), registration, hostname=plan["name"]
            ),
            "meta-data": _seed.meta_data(instance_id, plan["name"]),
        }
        network = plan["network"]
        config = _seed.network_config(
            plan["spec"].mac,
            network.get("address") or "",
            network.get("gateway") or "",
            network.get("dns") or [],
            dhcp=network["mode"] != "user",
        )
        if config:
            files["network-config"] = config
        return files

    # -- results ----------------------------------------------------------------------
    def describe(self, plan: Dict[str, Any], meta: SlotMetadata, running: bool) -> Dict[str, Any]:
        return {
            "name": plan["name"],
            "uuid": plan["spec"].uuid,
            "mac": plan["spec"].mac,
            "domain_type": plan["spec"].domain_type,
            "running": running,
            "lifecycle": meta.lifecycle(self.now, running),
            "metadata": meta.to_dict(),
            "addresses": [plan["network"]["address"]] if plan["network"].get("address") else [],
            "ssh": dict(plan["ssh"]),
            "overlay": plan["spec"].overlay_path,
            "seed": plan["spec"].seed_path,
            "image_outdated": (meta.image_identifier, meta.image_version)
            != (plan["image"].identifier, plan["image"].version),
        }

    # -- state=present / running ------------------------------------------------------
    def ensure(self, requests: Sequence[Dict[str, Any]], state: str) -> List[SlotResult]:
        plans = [self.plan(r) for r in requests]
        try:
            check_unique(
                [
                    {
                        "name": p["name"],
                        "address": p["network"].get("address"),
                        "mac": p["spec"].mac,
                        "ssh_port": p["spec"].ssh_port,
                    }
                    for p in plans
                ]
            )
        except LayoutError as exc:
            raise SlotError(str(exc), exc.option) from None
        self._check_foreign(plans)
        results = [self._ensure_one(p, state) for p in plans]
        self._start_pending()
        return results

    def _start_pending(self) -> None:
        """Start the domains waiting for it, ``start_concurrency`` at a time.

        Starting is most of a slot's creation time (QEMU's start-up); libvirtd starts domains
        in parallel, so 16 slots start in about half the time of one after the other. A new
        slot that fails to start is rolled back like any failed creation.
        """
        pending, self._pending_starts = self._pending_starts, []
        if not pending:
            return

        def start(item: Tuple[Dict[str, Any], Any, Optional[List[Tuple[str, Any]]]]) -> str:
            plan, dom, created = item
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                if created is None:
                    return f"slot {plan['name']}: start failed: {exc.get_error_message()}"
                self._rollback(plan, created)
                self.domains.pop(plan["name"], None)
                return f"slot {plan['name']}: start failed: {exc.get_error_message()}; nothing of this slot was left behind"
            return ""

        workers = max(1, min(self.start_concurrency, len(pending)))
        if workers == 1:
            outcomes = [start(item) for item in pending]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = list(pool.map(start, pending))
        errors = [o for o in outcomes if o]
        if errors:
            raise SlotError("; ".join(errors), "name")

    def _check_foreign(self, plans: List[Dict[str, Any]]) -> None:
        """Refuse addresses/ports already used by other slots of this hypervisor."""
        wanted = {p["name"] for p in plans}
        taken: Dict[str, str] = {}
        for name, dom in self.domains.items():
            if name in wanted:
                continue
            try:
                meta = read_metadata(dom)
            except (libvirt.libvirtError, SlotMetadataError):
                meta = None
            if meta is None:
                continue
            if meta.address:
                taken["address " + meta.address.split("/", maxsplit=1)[0]] = name
            if meta.network_mode == "user" and meta.ssh_port:
                taken["ssh_port %s:%d" % (meta.ssh_host, meta.ssh_port)] = name
        for plan in plans:
            keys = []
            if plan["network"].get("address"):
                keys.append("address " + plan["network"]["address"].split("/", maxsplit=1)[0])
            if plan["spec"].network_mode == "user" and plan["spec"].ssh_port:
                keys.append("ssh_port %s:%d" % (plan["spec"].ssh_host, plan["spec"].ssh_port))
            for key in keys:
                if key in taken:
                    raise SlotError(
                        f"slot {plan['name']}: {key} is already used by slot {taken[key]} on this hypervisor; "
                        "give each slot its own",
                        "network",
                    )

    def _ensure_one(self, plan: Dict[str, Any], state: str) -> SlotResult:
        name = plan["name"]
        dom = self.domains.get(name)
        if dom is None:
            return self._create(plan, state)
        result = SlotResult(name)
        found = read_metadata(dom)
        if found is None:
            raise SlotError(
                f"a libvirt domain named {name} exists and is not a batchvirt slot (no slot metadata): "
                "rename or remove it, or choose another slot name",
                "name",
            )
        current = found
        wanted_meta = self.updated_metadata(plan, current)
        spec = plan["spec"]
        spec.metadata_xml = to_xml(wanted_meta)
        desired = domain_xml(spec)
        existing = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        changed_fields = differences(desired, existing)
        meta_changed = to_xml(wanted_meta) != to_xml(current)
        active = bool(dom.isActive())
        if changed_fields:
            result.actions.append("redefine (%s)" % ", ".join(changed_fields))
            if self.diff_mode:
                result.diff = {
                    "before_header": f"{name} (domain XML)",
                    "after_header": f"{name} (domain XML)",
                    "before": existing,
                    "after": desired,
                }
            if not self.check_mode:
                self.conn.defineXML(desired)
        if meta_changed:
            result.actions.append("update metadata")
            if not self.check_mode:
                self._set_metadata(dom, wanted_meta, active)
        self._repair_disks(plan, wanted_meta, result)
        if state == "running" and not active:
            result.actions.append("start")
            if not self.check_mode:
                self._pending_starts.append((plan, dom, None))
            active = True
        result.changed = bool(result.actions)
        result.result = self.describe(plan, wanted_meta, active)
        return result

    def _repair_disks(self, plan: Dict[str, Any], meta: SlotMetadata, result: SlotResult) -> None:
        """Recreate a missing overlay or seed ISO (a slot must be startable)."""
        if not self.local:
            return
        spec = plan["spec"]
        if plan["overlay_type"] != "lvm" and not os.path.exists(spec.overlay_path):
            result.actions.append("recreate overlay")
            if not self.check_mode:
                self._refresh(plan["pool"])
                self._create_overlay(plan)
        if not os.path.exists(spec.seed_path):
            result.actions.append("recreate seed ISO")
            if not self.check_mode:
                self._refresh(plan["pool"])
                self._create_seed(plan, meta)

    @staticmethod
    def _refresh(pool: Any) -> None:
        try:
            pool.refresh(0)
        except libvirt.libvirtError:
            pass

    def _set_metadata(self, dom: Any, meta: SlotMetadata, active: bool) -> None:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_for_libvirt(meta), PREFIX, NAMESPACE, flags)

    def _create_overlay(self, plan: Dict[str, Any]) -> Any:
        spec = plan["spec"]
        if plan["overlay_type"] == "lvm":
            overlay = plan["overlay"]
            for argv in lvm_snapshot_commands(
                overlay["volume_group"], overlay["origin"], plan["name"], max(1, plan["size"] // GIB)
            ):
                self._run(argv)
            return None
        image: ImageSource = plan["image"]
        xml = overlay_volume_xml(os.path.basename(spec.overlay_path), plan["size"], image.path, image.format)
        return plan["pool"].createXML(xml, 0)

    def _create_seed(self, plan: Dict[str, Any], meta: SlotMetadata) -> Any:
        data = _seed.build_iso(self.seed_files(plan, meta))
        vol = plan["pool"].createXML(raw_volume_xml(os.path.basename(plan["spec"].seed_path), len(data)), 0)
        try:
            with open(vol.path(), "r+b") as handle:
                handle.write(data)
            os.chmod(vol.path(), 0o600)  # user-data may carry the munge key
        except OSError:
            vol.delete(0)
            raise
        return vol

    def _run(self, argv: List[str]) -> None:
        if self.run_command is None:
            raise SlotError("LVM overlays need a command runner", "overlay")
        rc, out, err = self.run_command(argv)
        if rc != 0:
            raise SlotError("%s failed (rc=%d): %s" % (" ".join(argv), rc, (err or out).strip()), "overlay")

    def _create(self, plan: Dict[str, Any], state: str) -> SlotResult:
        name = plan["name"]
        result = SlotResult(name, changed=True)
        meta = self.new_metadata(plan, self.now)
        spec = plan["spec"]
        spec.metadata_xml = to_xml(meta)
        desired = domain_xml(spec)
        result.actions = ["create overlay", "create seed ISO", "define"] + (["start"] if state == "running" else [])
        if self.diff_mode:
            result.diff = {
                "before_header": f"{name} (absent)",
                "after_header": f"{name} (domain XML)",
                "before": "",
                "after": desired,
            }
        stale = [path for path in (spec.overlay_path, spec.seed_path) if self.local and os.path.exists(path)]
        if stale:
            # left by an incarnation whose domain is gone: a replacement starts from a fresh overlay
            result.actions.insert(0, "remove stale " + " and ".join(os.path.basename(p) for p in stale))
        if not self.check_mode:
            for path in stale:
                self._delete_volume(plan["pool"], path)
            created: List[Tuple[str, Any]] = []
            step = "overlay"
            try:
                self._create_overlay(plan)
                created.append(("overlay", None))
                step = "seed ISO"
                created.append(("seed", self._create_seed(plan, meta)))
                step = "define"
                dom = self.conn.defineXML(desired)
                created.append(("domain", dom))
                if state == "running":
                    self._pending_starts.append((plan, dom, created))
            except (libvirt.libvirtError, OSError, SlotError, _seed.SeedError) as exc:
                self._rollback(plan, created)
                message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
                raise SlotError(
                    f"slot {name}: {step} failed: {message}; nothing of this slot was left behind", "name"
                ) from None
            self.domains[name] = dom
        result.result = self.describe(plan, meta, state == "running")
        return result

    def _rollback(self, plan: Dict[str, Any], created: List[Tuple[str, Any]]) -> None:
        for kind, obj in reversed(created):
            try:
                if kind == "domain":
                    if obj.isActive():
                        obj.destroy()
                    obj.undefine()
                elif kind == "seed":
                    obj.delete(0)
                elif kind == "overlay":
                    self._delete_overlay(plan)
            except (libvirt.libvirtError, OSError, SlotError) as exc:
                self.warnings.append(f"slot {plan['name']}: rollback of its {kind} failed: {exc}")

    def _delete_overlay(self, plan: Dict[str, Any]) -> bool:
        if plan["overlay_type"] == "lvm":
            for argv in lvm_remove_commands(plan["overlay"]["volume_group"], plan["name"]):
                self._run(argv)
            return True
        return self._delete_volume(plan["pool"], plan["spec"].overlay_path)

    @staticmethod
    def _delete_volume(pool: Any, path: str) -> bool:
        name = os.path.basename(path)
        try:
            pool.storageVolLookupByName(name).delete(0)
            return True
        except libvirt.libvirtError:
            if os.path.exists(path):
                os.unlink(path)
                return True
        return False

    # -- state=draining ---------------------------------------------------------------
    def drain(self, requests: Sequence[Dict[str, Any]], reason: str) -> List[SlotResult]:
        if not reason:
            raise SlotError("state=draining needs drain_reason (why the slot is drained)", "drain_reason")
        results = []
        for req in requests:
            name = req["name"]
            dom = self.domains.get(name)
            if dom is None:
                raise SlotError(f"slot {name} does not exist on this hypervisor: nothing to drain", "name")
            found = read_metadata(dom)
            if found is None:
                raise SlotError(f"domain {name} is not a batchvirt slot (no slot metadata)", "name")
            current = found
            active = bool(dom.isActive())
            result = SlotResult(name)
            meta = current
            if not current.drain_requested or current.drain_reason != reason:
                meta = current.request_drain(reason, self.now)
                result.actions.append("record drain request")
                result.changed = True
                if self.diff_mode:
                    result.diff = {
                        "before_header": f"{name} (slot metadata)",
                        "after_header": f"{name} (slot metadata)",
                        "before": to_xml(current) + "\n",
                        "after": to_xml(meta) + "\n",
                    }
                if not self.check_mode:
                    self._set_metadata(dom, meta, active)
            result.result = self._describe_existing(name, meta, active)
            results.append(result)
        return results

    def _describe_existing(self, name: str, meta: SlotMetadata, active: bool) -> Dict[str, Any]:
        return {
            "name": name,
            "running": active,
            "lifecycle": meta.lifecycle(self.now, active),
            "metadata": meta.to_dict(),
            "addresses": [meta.address] if meta.address else [],
            "ssh": {"host": meta.ssh_host, "port": meta.ssh_port, "user": meta.ssh_user},
        }

    # -- state=absent -----------------------------------------------------------------
    def remove(self, requests: Sequence[Dict[str, Any]], force: bool) -> List[SlotResult]:
        results = []
        entries = []
        for req in requests:
            name = req["name"]
            dom = self.domains.get(name)
            meta = None
            if dom is not None:
                meta = read_metadata(dom)
                if meta is None:
                    raise SlotError(
                        f"domain {name} is not a batchvirt slot (no slot metadata): not removing it", "name"
                    )
            entries.append((req, dom, meta))
        views = self._batch_views([m for _r, _d, m in entries if m is not None]) if not force else {}
        for req, dom, meta in entries:
            name = req["name"]
            result = SlotResult(name)
            pool, pool_dir = self.pool(req.get("pool") or DEFAULT_POOL)
            overlay = req.get("overlay") or {}
            before_xml = dom.XMLDesc(0) if dom is not None and self.diff_mode else ""
            if dom is not None and meta is not None:
                active = bool(dom.isActive())
                state = meta.lifecycle(self.now, active, views.get(meta.node_name))
                if not force and state not in (STOPPED, DRAINED, EXPIRED):
                    raise SlotError(
                        "slot %s is %s (drain_at %s, deadline %s): it may run jobs; drain it (state=draining) and "
                        "wait until it is drained, stop it, or pass force=true"
                        % (name, state, format_time(meta.drain_at), format_time(meta.deadline)),
                        "force",
                    )
                result.actions.append(f"remove domain (was {state})")
                if not self.check_mode:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                    self.domains.pop(name, None)
                result.result = self._describe_existing(name, meta, False)
                result.result["lifecycle_before"] = state
            files = [
                (os.path.join(pool_dir, f"{name}.qcow2"), "overlay"),
                (os.path.join(pool_dir, f"{name}-seed.iso"), "seed ISO"),
            ]
            for path, what in files:
                if os.path.exists(path):
                    result.actions.append(f"delete {what}")
                    if not self.check_mode:
                        self._delete_volume(pool, path)
            if overlay.get("type") == "lvm" and dom is not None:
                result.actions.append("remove LVM snapshot")
                if not self.check_mode:
                    for argv in lvm_remove_commands(overlay["volume_group"], name):
                        self._run(argv)
            log = os.path.join(CONSOLE_LOG_DIR, f"{name}-console.log")
            if os.path.exists(log) and not self.check_mode:
                os.unlink(log)
            result.changed = bool(result.actions)
            if result.changed and self.diff_mode and dom is not None:
                result.diff = {
                    "before_header": name,
                    "after_header": f"{name} (absent)",
                    "before": before_xml,
                    "after": "",
                }
            result.result.setdefault("name", name)
            results.append(result)
        return results

    def _batch_views(self, metas: List[SlotMetadata]) -> Dict[str, BatchView]:
        """One bulk query of the batch system for the slots being removed (none configured: {})."""
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


def host_capacity_from_libvirt(conn: Any, layout_spec: Dict[str, Any], domain_type: str, now: datetime.datetime) -> Any:
    """The host's capacity (``_capacity.HostCapacity``) exactly as ``hypervisor_info`` reports it.

    Host memory, the existing domains and the reservation recorded by the hypervisor role
    (``/etc/batchvirt/hypervisor.json``) come from ``_hypervisor``; the layout's own options
    override the reservation and the QEMU overhead.
    """
    from ansible_collections.batchvirt.farm.plugins.module_utils._capacity import (
        DEFAULT_QEMU_OVERHEAD_MIB,
        DEFAULT_RESERVED_CPUS,
        DEFAULT_RESERVED_MEMORY_MIB,
        CapacityError,
        HostCapacity,
        qemu_overhead_for,
    )
    from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import (
        DEFAULT_CONFIG_PATH,
        HypervisorError,
        domain_usages,
        host_memory_mib,
        read_host_config,
    )

    try:
        config = read_host_config(DEFAULT_CONFIG_PATH)
    except HypervisorError as exc:
        raise SlotError(f"layout: {exc}", "layout") from None

    def setting(key: str, default: int) -> int:
        if layout_spec.get(key) is not None:
            return int(layout_spec[key])
        return int(config.get(key, default))

    usages, _slots = domain_usages(conn, now)
    overhead = qemu_overhead_for(domain_type, setting("qemu_overhead_mib", DEFAULT_QEMU_OVERHEAD_MIB))
    try:
        return HostCapacity(
            cpus=int(conn.getInfo()[2]),
            memory_mib=host_memory_mib(conn),
            reserved_cpus=setting("reserved_cpus", DEFAULT_RESERVED_CPUS),
            reserved_memory_mib=setting("reserved_memory_mib", DEFAULT_RESERVED_MEMORY_MIB),
            qemu_overhead_mib=overhead,
            domains=tuple(usages),
        )
    except CapacityError as exc:
        raise SlotError(f"layout: {exc}", "layout." + exc.field_name) from None


def run(module: Any, conn: Any, now: datetime.datetime) -> Dict[str, Any]:
    """The ``slot`` module's work: returns the result dict (raises SlotError / LayoutError)."""
    params = dict(module.params)
    if not params.get("hypervisor"):
        params["hypervisor"] = conn.getHostname().split(".")[0]
    batch_system = (params.get("batch") or {}).get("system")

    def adapter(system: str) -> Any:
        from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter, module_runner

        return get_adapter(system, runner=module_runner(module))

    manager = SlotManager(
        conn,
        now,
        check_mode=module.check_mode,
        diff_mode=module._diff,
        run_command=module.run_command,
        batch_adapter=adapter if batch_system else None,
        local=_is_local(params.get("uri") or ""),
        start_concurrency=params.get("start_concurrency") or 4,
    )
    host = None
    if params.get("layout") is not None:
        host = host_capacity_from_libvirt(conn, params["layout"], manager.domain_type(params.get("domain_type")), now)
    try:
        requests = expand_requests(params, host)
    except LayoutError as exc:
        raise SlotError(f"layout: {exc}", "layout." + exc.option) from None
    state = params["state"]
    if state in ("present", "running"):
        results = manager.ensure(requests, state)
    elif state == "draining":
        results = manager.drain(requests, params.get("drain_reason") or "")
    else:
        results = manager.remove(requests, bool(params.get("force")))
    out: Dict[str, Any] = {
        "changed": any(r.changed for r in results),
        "slots": [dict(r.result, changed=r.changed, actions=r.actions) for r in results],
    }
    diffs = [r.diff for r in results if r.diff]
    if diffs:
        out["diff"] = diffs[0] if len(diffs) == 1 else diffs
    if params.get("name") and results:
        out.update({k: v for k, v in results[0].result.items() if k != "changed"})
        out["actions"] = results[0].actions
    if manager.warnings:
        out["warnings"] = manager.warnings
    return out


def _is_local(uri: str) -> bool:
    """Local URIs only: files (seed ISOs, console logs) are written on this host."""
    scheme = uri.split(":", 1)[0]
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    return "+" not in scheme and not rest.split("/", 1)[0]
