# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: from the ``slot`` module's parameters to one typed plan per slot.

:func:`expand_requests` turns ``name``, ``slots`` or ``layout`` into one parameter dict per
slot; :class:`Planner` validates each against the hypervisor and returns a :class:`SlotPlan`,
which the create, repair and remove steps pass along. Nothing is touched while planning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import DomainSpec, slot_mac, slot_uuid
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import (
    CONSOLE_LOG_DIR,
    DEFAULT_POOL,
    SlotError,
    SlotHost,
    read_metadata,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_image import ImageSource, kernel_boot, resolve_image
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_layout import (
    AddressPool,
    LayoutError,
    MixPart,
    check_unique,
    layout,
    plan_count,
    plan_mix,
    without_slots,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
    SlotMetadata,
    SlotMetadataError,
    plan_lifetime,
)

GIB = 1024**3
# Options a slot of a ``slots`` list may set for itself; the module's top-level options are the defaults.
PER_SLOT_KEYS = ("vcpus", "memory_mib", "disk_size_gib", "network", "worker_type", "batch_node", "cloud_init")
_MERGED_DICTS = ("network", "batch")


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


def expand_requests(params: Dict[str, Any], host: Any = None, block: Optional[int] = None) -> List[Dict[str, Any]]:
    """One parameter dict per slot: ``name``, a ``slots`` list, or a ``layout``.

    ``block`` is the hypervisor's recorded address block (it wins over ``layout.index``).
    """
    base = {k: v for k, v in params.items() if k not in ("slots", "layout")}
    if params.get("name"):
        return [dict(base)]
    entries: List[Dict[str, Any]] = []
    if params.get("layout") is not None:
        entries = layout_entries(params, host, block)
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


def layout_entries(params: Dict[str, Any], host: Any, block: Optional[int] = None) -> List[Dict[str, Any]]:
    """The ``layout`` option turned into slot entries (name, address, ssh_port)."""
    spec = params["layout"]
    hypervisor = params["hypervisor"]
    if host is None:
        raise SlotError("layout needs the host's capacity", "layout")
    mix = mix_parts(params, without_slots(host, hypervisor))
    if mix is not None:
        count = sum(part.count for part in mix)
    else:
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
        block if block is not None else spec.get("index") or 0,
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
    if mix is not None:
        # slots 1..n1 are the first part's type, the next n2 the second's, ...
        kinds = [params["layout"]["mix"][i] for i, part in enumerate(mix) for _n in range(part.count)]
        for entry, kind in zip(entries, kinds):
            entry.update(_mix_entry(params, kind))
    return entries


def mix_parts(params: Dict[str, Any], host: Any) -> Optional[List[MixPart]]:
    """``layout.mix`` planned on ``host`` (None without a mix); each part's size defaults to the module's."""
    spec = params["layout"]
    if not spec.get("mix"):
        return None
    if str(spec.get("count", "auto")) != "auto":
        raise LayoutError("give layout.count or layout.mix (a count per worker type), not both", "count")
    sized = [
        dict(
            part, vcpus=part.get("vcpus") or params["vcpus"], memory_mib=part.get("memory_mib") or params["memory_mib"]
        )
        for part in spec["mix"]
    ]
    return plan_mix(host, sized, spec.get("overcommit_cpu") or 1.0)


def _mix_entry(params: Dict[str, Any], kind: Dict[str, Any]) -> Dict[str, Any]:
    """What a slot of one mix part sets for itself: type, size, image and batch features."""
    entry: Dict[str, Any] = {"worker_type": kind["worker_type"]}
    for key in ("vcpus", "memory_mib", "disk_size_gib"):
        if kind.get(key):
            entry[key] = kind[key]
    if kind.get("image"):
        entry["image"] = dict(params.get("image") or {}, **{k: v for k, v in kind["image"].items() if v is not None})
    if kind.get("features") is not None:
        entry["batch"] = {"features": list(kind["features"])}
    return entry


# -- the plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OverlayPlan:
    """The slot's writable disk: a qcow2 overlay volume in the pool, or an LVM snapshot."""

    type: str = "qcow2"
    volume_group: str = ""
    origin: str = ""

    @property
    def is_lvm(self) -> bool:
        return self.type == "lvm"


@dataclass(frozen=True)
class BatchPlan:
    """How the slot registers with the batch system (``controller`` empty: it does not)."""

    system: str = "slurm"
    node: str = ""
    controller: str = ""
    munge_key: Optional[str] = None
    features: Tuple[str, ...] = ()
    slurm_conf: Optional[str] = None
    dynamic: bool = True
    controller_port: int = 6817


@dataclass(frozen=True)
class SeedPlan:
    """What goes into the seed ISO besides the metadata: cloud-config, keys, static network."""

    cloud_init: Optional[Dict[str, Any]] = None
    ssh_authorized_keys: Tuple[str, ...] = ()
    gateway: str = ""
    dns: Tuple[str, ...] = ()
    machine_features: Optional[Dict[str, Any]] = None  # worker slots: the MJF options (see _mjf)


@dataclass
class SlotPlan:
    """Everything one slot needs, validated. ``metadata`` is what a slot created now records
    (it declares the network and SSH endpoint); ``spec`` the domain definition built from it."""

    name: str
    hypervisor: str
    image: ImageSource
    pool: Any
    size: int
    overlay: OverlayPlan
    batch: BatchPlan
    seed: SeedPlan
    metadata: SlotMetadata
    spec: DomainSpec
    lifetime: Tuple[int, int, int] = (0, 0, 0)  # lifetime, max_job_walltime, lifetime_spread

    @property
    def address(self) -> str:
        return self.metadata.address

    def metadata_at(self, created_at: Any) -> SlotMetadata:
        """The new slot's metadata with its times counted from ``created_at``."""
        drain_at, deadline = plan_lifetime(self.name, created_at, *self.lifetime)
        return replace(self.metadata, created_at=created_at, drain_at=drain_at, deadline=deadline)

    def updated_metadata(self, current: SlotMetadata) -> SlotMetadata:
        """The current metadata with the fields a rerun may change; times, image, address and
        MAC never change (:func:`check_identity` refuses a request that changes the last two)."""
        wanted = self.metadata
        extra = {k: v for k, v in current.extra.items() if k not in ("forwards", "purpose")}
        extra.update(wanted.extra)
        return replace(
            current,
            worker_type=wanted.worker_type,
            batch_system=wanted.batch_system,
            batch_node=wanted.batch_node,
            extra=extra,
            network_mode=wanted.network_mode,
            ssh_host=wanted.ssh_host,
            ssh_port=wanted.ssh_port,
            ssh_user=wanted.ssh_user,
        )


def check_identity(plan: SlotPlan, current: SlotMetadata) -> None:
    """Refuse a request that gives an existing slot another address or MAC: the guest keeps the
    one of its seed ISO, so rewriting the metadata would only make the farm's records lie."""
    for label, had, wanted in (
        ("address", current.address, plan.metadata.address),
        ("mac", current.mac, plan.metadata.mac),
    ):
        if (had or wanted) and had.lower() != wanted.lower():
            raise SlotError(
                "slot %s has the %s %s; this request gives it %s. A slot's address and MAC never change: "
                "recreate the slot to change them (drain it, state=absent, then create it again), or keep "
                "the address it has" % (plan.name, label, had or "(none)", wanted or "(none)"),
                "network." + label,
            )


class Planner:
    """Builds the :class:`SlotPlan` of each request against one hypervisor."""

    def __init__(self, host: SlotHost) -> None:
        self.host = host
        self._images: Dict[Tuple[Any, ...], ImageSource] = {}

    def image(self, spec: Dict[str, Any]) -> ImageSource:
        key = tuple(sorted((k, str(v)) for k, v in (spec or {}).items()))
        if key not in self._images:
            # with a remote uri, image.path is looked up in the hypervisor's pools
            self._images[key] = self.host.remote_image(spec) or resolve_image(spec)
        return self._images[key]

    def plan(self, req: Dict[str, Any]) -> SlotPlan:
        """Everything one slot needs, validated, without touching anything."""
        name = req["name"]
        network = dict(req.get("network") or {})
        network.setdefault("mode", "user")
        self.host.check_network(network)
        image = self.image(req.get("image") or {})
        pool, pool_dir = self.host.pool(req.get("pool") or DEFAULT_POOL)
        overlay = _overlay(req.get("overlay") or {})
        size = _disk_size(req, image)
        metadata = _metadata(req, image, network, self.host.now)
        spec = self._domain_spec(req, image, network, overlay, pool_dir, metadata)
        return SlotPlan(
            name=name,
            hypervisor=req["hypervisor"],
            image=image,
            pool=pool,
            size=size,
            overlay=overlay,
            batch=_batch(req),
            seed=SeedPlan(
                cloud_init=req.get("cloud_init"),
                ssh_authorized_keys=tuple(req.get("ssh_authorized_keys") or ()),
                gateway=network.get("gateway") or "",
                dns=tuple(network.get("dns") or ()),
                machine_features=_machine_features(req),
            ),
            metadata=metadata,
            spec=spec,
            lifetime=(req["lifetime"], req["max_job_walltime"], req.get("lifetime_spread") or 0),
        )

    def _domain_spec(
        self,
        req: Dict[str, Any],
        image: ImageSource,
        network: Dict[str, Any],
        overlay: OverlayPlan,
        pool_dir: str,
        metadata: SlotMetadata,
    ) -> DomainSpec:
        name = req["name"]
        boot = req.get("boot") or {}
        kernel = initrd = cmdline = ""
        if (boot.get("mode") or "bootloader") == "kernel":
            kernel, initrd, cmdline = kernel_boot(boot, image)
        forwards = parse_forwards(network.get("forwards") or [], metadata.ssh_host or "127.0.0.1")
        return DomainSpec(
            name=name,
            uuid=slot_uuid(req["hypervisor"], name),
            domain_type=self.host.domain_type(req.get("domain_type")),
            vcpus=req["vcpus"],
            memory_mib=req["memory_mib"],
            overlay_path=f"/dev/{overlay.volume_group}/{name}"
            if overlay.is_lvm
            else os.path.join(pool_dir, f"{name}.qcow2"),
            overlay_format="raw" if overlay.is_lvm else "qcow2",
            overlay_type="block" if overlay.is_lvm else "file",
            seed_path=os.path.join(pool_dir, f"{name}-seed.iso"),
            boot="kernel" if kernel else "bootloader",
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            bridge=network.get("bridge") or "",
            network=network.get("network") or "",
            console_log=os.path.join(CONSOLE_LOG_DIR, f"{name}-console.log"),
            metadata=metadata,
            extra_forwards=forwards if network["mode"] == "user" else [],
        )


def _overlay(overlay: Dict[str, Any]) -> OverlayPlan:
    plan = OverlayPlan(overlay.get("type") or "qcow2", overlay.get("volume_group") or "", overlay.get("origin") or "")
    if plan.is_lvm and (not plan.volume_group or not plan.origin):
        raise SlotError("overlay.type=lvm needs overlay.volume_group and overlay.origin", "overlay")
    return plan


def _disk_size(req: Dict[str, Any], image: ImageSource) -> int:
    if not req.get("disk_size_gib"):
        return image.virtual_size
    size = int(req["disk_size_gib"]) * GIB
    if size < image.virtual_size:
        raise SlotError(
            "disk_size_gib=%s is smaller than the image's virtual size (%.1f GiB): raise it or leave it unset"
            % (req["disk_size_gib"], image.virtual_size / GIB),
            "disk_size_gib",
        )
    return size


def _batch(req: Dict[str, Any]) -> BatchPlan:
    batch = req.get("batch") or {}
    return BatchPlan(
        system=batch.get("system") or "slurm",
        node=batch.get("node_name") or req["name"],
        controller=batch.get("controller") or "",
        munge_key=batch.get("munge_key"),
        features=tuple(batch.get("features") or ()),
        slurm_conf=batch.get("slurm_conf"),
        dynamic=batch.get("dynamic", True) if batch.get("dynamic") is not None else True,
        controller_port=batch.get("controller_port") or 6817,
    )


def _metadata(req: Dict[str, Any], image: ImageSource, network: Dict[str, Any], now: Any) -> SlotMetadata:
    """The metadata of the slot if it were created now (validates the lifetime first)."""
    name = req["name"]
    hypervisor = req["hypervisor"]
    mode = network["mode"]
    try:
        drain_at, deadline = plan_lifetime(
            name, now, req["lifetime"], req["max_job_walltime"], req.get("lifetime_spread") or 0
        )
    except SlotMetadataError as exc:
        raise SlotError(str(exc), exc.option) from None
    ssh_host = network.get("ssh_host") or ("127.0.0.1" if mode == "user" else "")
    if mode != "user" and network.get("address"):
        ssh_host = network["address"].split("/", maxsplit=1)[0]
    batch = _batch(req)
    extra: Dict[str, str] = {}
    if (req.get("purpose") or "worker") != "worker":
        extra["purpose"] = req["purpose"]
    if mode == "user":
        forwards = parse_forwards(network.get("forwards") or [], ssh_host or "127.0.0.1")
        if forwards:
            extra["forwards"] = ",".join("%s:%d:%d" % fwd for fwd in forwards)
    return SlotMetadata(
        name=name,
        hypervisor=hypervisor,
        image_identifier=image.identifier,
        image_version=image.version,
        image_sha512=image.sha512,
        created_at=now,
        drain_at=drain_at,
        deadline=deadline,
        worker_type=req.get("worker_type") or "",
        batch_system=batch.system,
        batch_node=batch.node if batch.node != name else "",
        network_mode=mode,
        address=network.get("address") or "",
        mac=(network.get("mac") or slot_mac(hypervisor, name)).lower(),
        ssh_host=ssh_host,
        ssh_port=int(network.get("ssh_port") or (0 if mode == "user" else 22)),
        ssh_user=network.get("ssh_user") or "root",
        extra=extra,
    )


# -- checks across slots --------------------------------------------------------------------
def check_unique_plans(plans: Sequence[SlotPlan]) -> None:
    """Refuse two slots of one call with one name, address, MAC or SSH port."""
    try:
        check_unique(
            [{"name": p.name, "address": p.address, "mac": p.spec.mac, "ssh_port": p.spec.ssh_port} for p in plans]
        )
    except LayoutError as exc:
        raise SlotError(str(exc), exc.option) from None


def check_foreign(host: SlotHost, plans: Sequence[SlotPlan]) -> None:
    """Refuse addresses/ports already used by other slots of this hypervisor."""
    wanted = {p.name for p in plans}
    taken: Dict[str, str] = {}
    for name, dom in host.domains.items():
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
        if plan.address:
            keys.append("address " + plan.address.split("/", maxsplit=1)[0])
        if plan.spec.network_mode == "user" and plan.spec.ssh_port:
            keys.append("ssh_port %s:%d" % (plan.spec.ssh_host, plan.spec.ssh_port))
        for key in keys:
            if key in taken:
                raise SlotError(
                    f"slot {plan.name}: {key} is already used by slot {taken[key]} on this hypervisor; "
                    "give each slot its own",
                    "network",
                )


def _machine_features(req: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The MJF options of a worker slot (None: none published). A golden node publishes none:
    its disk becomes an image, and a shutdowntime baked into an image would be wrong."""
    options = dict(req.get("machine_features") or {})
    if (req.get("purpose") or "worker") != "worker" or options.get("enabled") is False:
        return None
    return options
