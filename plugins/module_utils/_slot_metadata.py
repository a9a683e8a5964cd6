# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the slot metadata schema, read and written in one place.

A slot's metadata lives in its libvirt domain, in a ``<metadata>`` child element of the
collection's own versioned XML namespace :data:`NAMESPACE`. The ``slot`` module writes it;
the inventory plugin and every other module read it through :func:`from_xml`.
"""

from __future__ import annotations

import datetime
import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import (
    BatchView,
    LifecycleTimes,
    compute_lifecycle,
    seconds_to_drain,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time as _timeutil_parse_time

SCHEMA_VERSION = 3
# Schema 2 adds who owns a drain (``<drain by= operation= until=>``). Metadata without a drain
# owner is still written as schema 1, which every reader understands; metadata with an owner is
# written as schema 2, which a reader of schema 1 refuses rather than ignore the ownership.
# Schema 3 adds the failure record (``<failures consecutive= at= image= until=>reason``): the
# consecutive failed lives of the slot and its back-off. Metadata is written with the lowest schema
# that holds it (1, 2, or 3 only with a failure record), so a reader of schema 2 refuses only a slot
# with a failure record (it would otherwise restart a slot in back-off), and this reader reads 1 and 2.
BASE_SCHEMA_VERSION = 1
DRAIN_OWNER_SCHEMA_VERSION = 2
# Who may ask for a drain (``drain_owner``); an empty owner is a drain recorded before schema 2.
DRAIN_OWNERS = ("rolling_update", "recycle", "rebalance", "operator")
NAMESPACE = "http://batchvirt.farm/xmlns/slot/1"
PREFIX = "farm"  # the key libvirt stores the element under
_NS = f"{{{NAMESPACE}}}"


class SlotMetadataError(FarmError, ValueError):
    """Slot metadata that cannot be read or would be invalid; ``option`` names the field."""

    @property
    def field_name(self) -> str:
        """The former name of ``option`` (kept for readers of older code)."""
        return self.option


def parse_time(value: str, field_name: str = "time") -> datetime.datetime:
    """``_timeutil.parse_time`` raising :class:`SlotMetadataError` naming ``field_name``."""

    def error(_message: str, option: str) -> SlotMetadataError:
        return SlotMetadataError(f"{option}: {value!r} is not an ISO-8601 time such as 2026-11-21T06:00:00Z", option)

    return _timeutil_parse_time(value, field_name, error=error)


@dataclass(frozen=True)
class SlotMetadata:
    """Everything the collection records about one slot in its domain."""

    name: str
    hypervisor: str
    image_identifier: str
    image_version: str
    created_at: datetime.datetime
    drain_at: datetime.datetime
    deadline: datetime.datetime
    image_sha512: str = ""
    worker_type: str = ""
    drain_requested: bool = False
    drain_reason: str = ""
    drain_requested_at: Optional[datetime.datetime] = None
    drain_owner: str = ""
    drain_operation: str = ""
    drain_until: Optional[datetime.datetime] = None
    batch_system: str = "slurm"
    batch_node: str = ""
    network_mode: str = ""
    address: str = ""
    mac: str = ""
    ssh_host: str = ""
    ssh_port: int = 0
    ssh_user: str = ""
    extra: Dict[str, str] = field(default_factory=dict)
    # the failure record (schema 3): consecutive failed lives, the last one's time, image and reason,
    # and until when recycle.yml leaves the slot alone (None: no back-off)
    failures: int = 0
    failure_at: Optional[datetime.datetime] = None
    failure_image: str = ""
    failure_reason: str = ""
    backoff_until: Optional[datetime.datetime] = None

    def __post_init__(self) -> None:
        for name in ("name", "hypervisor", "image_identifier", "image_version"):
            if not getattr(self, name):
                raise SlotMetadataError(f"slot metadata: {name} is required", name)
        if self.drain_at <= self.created_at:
            raise SlotMetadataError("slot metadata: drain_at must be after created_at (lifetime > 0)", "drain_at")
        if self.deadline < self.drain_at:
            raise SlotMetadataError("slot metadata: deadline must not be before drain_at", "deadline")
        if self.failures < 0:
            raise SlotMetadataError("slot metadata: failures.consecutive must be 0 or more", "failures.consecutive")

    @property
    def node_name(self) -> str:
        """The node name in the batch system (the slot name unless set otherwise)."""
        return self.batch_node or self.name

    @property
    def times(self) -> LifecycleTimes:
        return LifecycleTimes(self.created_at, self.drain_at, self.deadline, self.drain_requested)

    def lifecycle(self, now: datetime.datetime, running: bool, batch: Optional[BatchView] = None, **kwargs: Any) -> str:
        return compute_lifecycle(self.times, now, running, batch, **kwargs)

    def seconds_to_drain(self, now: datetime.datetime) -> int:
        return seconds_to_drain(self.times, now)

    def request_drain(
        self,
        reason: str,
        now: datetime.datetime,
        owner: str = "operator",
        operation: str = "",
        until: Optional[datetime.datetime] = None,
    ) -> SlotMetadata:
        """A copy with a drain request by ``owner`` (the first request's time is kept).

        ``operation`` names the run that asked (an operations lock token) and ``until`` is when
        that ownership lapses if the run never comes back (a crashed play).
        """
        if owner not in DRAIN_OWNERS:
            raise SlotMetadataError(
                "drain owner must be one of %s, got %r" % (", ".join(DRAIN_OWNERS), owner), "drain.owner"
            )
        return replace(
            self,
            drain_requested=True,
            drain_reason=reason,
            drain_requested_at=self.drain_requested_at if self.drain_requested else now,
            drain_owner=owner,
            drain_operation=operation,
            drain_until=until,
        )

    def clear_drain(self) -> SlotMetadata:
        """A copy without a drain request (the slot takes jobs again, e.g. after a patch)."""
        return replace(
            self,
            drain_requested=False,
            drain_reason="",
            drain_requested_at=None,
            drain_owner="",
            drain_operation="",
            drain_until=None,
        )

    def drain_owned_by_other(self, operation: str, now: datetime.datetime) -> bool:
        """Whether a live operation other than ``operation`` owns this slot's drain.

        Only ``rolling_update`` and ``rebalance`` hold a slot: an operator's drain retires the
        slot (recycle replaces it once drained) and recycle's own drain is its own business.
        Ownership lapses at ``drain_until`` so that a crashed run does not hold a slot for ever.
        """
        if not self.drain_requested or self.drain_owner not in ("rolling_update", "rebalance"):
            return False
        if operation and self.drain_operation == operation:
            return False
        return self.drain_until is None or now < self.drain_until

    def in_backoff(self, now: datetime.datetime) -> bool:
        """Whether recycle.yml leaves this slot alone for now (its back-off has not expired)."""
        return self.backoff_until is not None and now < self.backoff_until

    def with_failures(
        self,
        consecutive: int,
        at: Optional[datetime.datetime],
        image: str,
        reason: str,
        backoff_until: Optional[datetime.datetime],
    ) -> SlotMetadata:
        """A copy with this failure record (``consecutive=0`` clears it)."""
        if consecutive <= 0:
            return self.clear_failures()
        return replace(
            self,
            failures=consecutive,
            failure_at=at,
            failure_image=image,
            failure_reason=reason,
            backoff_until=backoff_until,
        )

    def clear_failures(self) -> SlotMetadata:
        """A copy without a failure record (the slot reached ``active``)."""
        return replace(self, failures=0, failure_at=None, failure_image="", failure_reason="", backoff_until=None)

    def failures_dict(self) -> Dict[str, Any]:
        """The failure record as plain data (``consecutive`` 0 when there is none)."""
        return {
            "consecutive": self.failures,
            "last_at": format_time(self.failure_at) if self.failure_at else None,
            "image": self.failure_image,
            "reason": self.failure_reason,
            "backoff_until": format_time(self.backoff_until) if self.backoff_until else None,
        }

    @property
    def schema(self) -> int:
        """The schema this metadata is written with: the lowest that holds it (3 with a failure
        record, 2 with a drain owner, else 1)."""
        if self.failures:
            return SCHEMA_VERSION
        return DRAIN_OWNER_SCHEMA_VERSION if self.drain_owner else BASE_SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for module results and inventory variables (times as ISO strings); the key
        ``failures`` only when the slot has a failure record."""
        data: Dict[str, Any] = {
            "schema": self.schema,
            "name": self.name,
            "hypervisor": self.hypervisor,
            "worker_type": self.worker_type,
            "image": {
                "identifier": self.image_identifier,
                "version": self.image_version,
                "sha512": self.image_sha512,
            },
            "created_at": format_time(self.created_at),
            "drain_at": format_time(self.drain_at),
            "deadline": format_time(self.deadline),
            "drain": {
                "requested": self.drain_requested,
                "reason": self.drain_reason,
                "requested_at": format_time(self.drain_requested_at) if self.drain_requested_at else None,
                "owner": self.drain_owner or ("operator" if self.drain_requested else ""),
                "operation": self.drain_operation,
                "until": format_time(self.drain_until) if self.drain_until else None,
            },
            "batch": {"system": self.batch_system, "node": self.node_name},
            "network": {"mode": self.network_mode, "address": self.address, "mac": self.mac},
            "ssh": {"host": self.ssh_host, "port": self.ssh_port, "user": self.ssh_user},
            "extra": dict(self.extra),
        }
        if self.failures:
            data["failures"] = self.failures_dict()
        return data


def plan_lifetime(
    name: str,
    created_at: datetime.datetime,
    lifetime: int,
    walltime: int,
    spread: int = 0,
) -> tuple[datetime.datetime, datetime.datetime]:
    """Return ``(drain_at, deadline)`` for a new slot.

    ``drain_at`` is ``created_at + lifetime`` brought forward by a share of ``spread`` that is
    derived from the slot name (stable across reruns, different between slots, so a farm
    does not drain all at once); ``deadline`` is ``drain_at + walltime``.
    """
    if lifetime <= 0:
        raise SlotMetadataError(f"lifetime must be a positive number of seconds, got {lifetime!r}", "lifetime")
    if walltime < 0:
        raise SlotMetadataError(f"max_job_walltime must be zero or more seconds, got {walltime!r}", "max_job_walltime")
    if spread < 0 or spread >= lifetime:
        raise SlotMetadataError(
            "lifetime_spread must be at least 0 and less than lifetime (%d), got %r" % (lifetime, spread),
            "lifetime_spread",
        )
    share = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") / 2**32
    drain_at = created_at + datetime.timedelta(seconds=lifetime - int(share * spread))
    return drain_at, drain_at + datetime.timedelta(seconds=walltime)


def _sub(parent: ET.Element, tag: str, text: Optional[str] = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, _NS + tag, {k: v for k, v in attrs.items() if v not in (None, "")})
    if text is not None:
        element.text = text
    return element


def to_xml(meta: SlotMetadata, namespaced: bool = True) -> str:
    """Serialise to the ``<farm:slot>`` element libvirt keeps under ``<metadata>``.

    ``namespaced=False`` gives the plain ``<slot>`` element that ``virDomain.setMetadata()``
    wants (libvirt adds the namespace and prefix itself and refuses an element that already
    declares it).
    """
    ET.register_namespace(PREFIX, NAMESPACE)
    root = ET.Element(_NS + "slot", {"schema": str(meta.schema)})
    _sub(root, "name", meta.name)
    _sub(root, "hypervisor", meta.hypervisor)
    if meta.worker_type:
        _sub(root, "worker_type", meta.worker_type)
    _sub(root, "image", identifier=meta.image_identifier, version=meta.image_version, sha512=meta.image_sha512)
    _sub(root, "created_at", format_time(meta.created_at))
    _sub(root, "drain_at", format_time(meta.drain_at))
    _sub(root, "deadline", format_time(meta.deadline))
    if meta.drain_requested:
        at = format_time(meta.drain_requested_at) if meta.drain_requested_at else ""
        until = format_time(meta.drain_until) if meta.drain_until else ""
        _sub(
            root,
            "drain",
            meta.drain_reason,
            requested="true",
            at=at,
            by=meta.drain_owner,
            operation=meta.drain_operation,
            until=until,
        )
    _sub(root, "batch", system=meta.batch_system, node=meta.batch_node)
    if meta.network_mode or meta.address or meta.mac:
        _sub(root, "network", mode=meta.network_mode, address=meta.address, mac=meta.mac)
    if meta.ssh_host or meta.ssh_port:
        _sub(root, "ssh", host=meta.ssh_host, port=str(meta.ssh_port or ""), user=meta.ssh_user)
    for key in sorted(meta.extra):
        _sub(root, "extra", meta.extra[key], key=key)
    if meta.failures:
        _sub(
            root,
            "failures",
            meta.failure_reason,
            consecutive=str(meta.failures),
            at=format_time(meta.failure_at) if meta.failure_at else "",
            image=meta.failure_image,
            until=format_time(meta.backoff_until) if meta.backoff_until else "",
        )
    if not namespaced:
        for element in root.iter():
            element.tag = element.tag.split("}", 1)[-1]
    return ET.tostring(root, encoding="unicode")


def _text(root: ET.Element, tag: str) -> str:
    element = root.find(_NS + tag)
    return (element.text or "").strip() if element is not None else ""


def _required_time(root: ET.Element, tag: str) -> datetime.datetime:
    value = _text(root, tag)
    if not value:
        raise SlotMetadataError(f"slot metadata: <{tag}> is missing", tag)
    return parse_time(value, tag)


def from_xml(text: str) -> SlotMetadata:
    """Parse the ``<farm:slot>`` element (as returned by ``virDomain.metadata()``).

    Unknown elements are ignored so that older readers accept newer metadata; a schema
    newer than this reader understands is refused with a message saying so.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise SlotMetadataError(f"slot metadata is not well-formed XML: {exc}", "metadata") from None
    if root.tag == "slot":
        # virDomain.metadata() hands the element back without its namespace: put it back.
        for element in root.iter():
            if not element.tag.startswith("{"):
                element.tag = _NS + element.tag
    if root.tag != _NS + "slot":
        raise SlotMetadataError(f"slot metadata: expected <slot xmlns={NAMESPACE!r}>, found <{root.tag}>", "metadata")
    try:
        schema = int(root.get("schema", "1"))
    except ValueError:
        raise SlotMetadataError(
            "slot metadata: schema {!r} is not a number".format(root.get("schema")), "schema"
        ) from None
    if schema > SCHEMA_VERSION:
        raise SlotMetadataError(
            "slot metadata schema %d is newer than this collection understands (%d): upgrade batchvirt.farm"
            % (schema, SCHEMA_VERSION),
            "schema",
        )
    image = root.find(_NS + "image")
    image_attrs = image.attrib if image is not None else {}
    drain = root.find(_NS + "drain")
    batch = root.find(_NS + "batch")
    network = root.find(_NS + "network")
    ssh = root.find(_NS + "ssh")
    port_text = ssh.get("port", "") if ssh is not None else ""
    try:
        ssh_port = int(port_text) if port_text else 0
    except ValueError:
        raise SlotMetadataError(f"slot metadata: ssh port {port_text!r} is not a number", "ssh.port") from None
    requested = drain is not None and drain.get("requested", "false").lower() == "true"
    requested_at = drain.get("at", "") if drain is not None else ""
    owner = drain.get("by", "") if drain is not None else ""
    if owner and owner not in DRAIN_OWNERS:
        raise SlotMetadataError(
            "slot metadata: drain owner %r is not one of %s" % (owner, ", ".join(DRAIN_OWNERS)), "drain.by"
        )
    until = drain.get("until", "") if drain is not None else ""
    extra = {e.get("key", ""): (e.text or "") for e in root.findall(_NS + "extra") if e.get("key")}
    failures = root.find(_NS + "failures")
    fail_attrs = failures.attrib if failures is not None else {}
    try:
        consecutive = int(fail_attrs.get("consecutive", "0") or "0")
    except ValueError:
        raise SlotMetadataError(
            "slot metadata: failures consecutive {!r} is not a number".format(fail_attrs.get("consecutive")),
            "failures.consecutive",
        ) from None
    failed_at = fail_attrs.get("at", "")
    backoff_until = fail_attrs.get("until", "")
    return SlotMetadata(
        name=_text(root, "name"),
        hypervisor=_text(root, "hypervisor"),
        worker_type=_text(root, "worker_type"),
        image_identifier=image_attrs.get("identifier", ""),
        image_version=image_attrs.get("version", ""),
        image_sha512=image_attrs.get("sha512", ""),
        created_at=_required_time(root, "created_at"),
        drain_at=_required_time(root, "drain_at"),
        deadline=_required_time(root, "deadline"),
        drain_requested=requested,
        drain_reason=((drain.text or "").strip() if drain is not None else ""),
        drain_requested_at=parse_time(requested_at, "drain.at") if requested_at else None,
        drain_owner=owner if requested else "",
        drain_operation=(drain.get("operation", "") if drain is not None and requested else ""),
        drain_until=parse_time(until, "drain.until") if requested and until else None,
        batch_system=batch.get("system", "slurm") if batch is not None else "slurm",
        batch_node=batch.get("node", "") if batch is not None else "",
        network_mode=network.get("mode", "") if network is not None else "",
        address=network.get("address", "") if network is not None else "",
        mac=network.get("mac", "") if network is not None else "",
        ssh_host=ssh.get("host", "") if ssh is not None else "",
        ssh_port=ssh_port,
        ssh_user=ssh.get("user", "") if ssh is not None else "",
        extra=extra,
        failures=consecutive,
        failure_at=parse_time(failed_at, "failures.at") if consecutive and failed_at else None,
        failure_image=fail_attrs.get("image", "") if consecutive else "",
        failure_reason=((failures.text or "").strip() if failures is not None and consecutive else ""),
        backoff_until=parse_time(backoff_until, "failures.until") if consecutive and backoff_until else None,
    )
