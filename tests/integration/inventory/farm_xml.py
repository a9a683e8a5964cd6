"""Slot domains for inventory tests and the benchmark: libvirt test-driver node files and
tiny real QEMU domains, each carrying real slot metadata from ``_slot_metadata.to_xml``."""

from __future__ import annotations

import datetime
from typing import Iterable, List, Optional, Tuple, Union
from xml.sax.saxutils import escape

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata, to_xml

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
EPOCH = datetime.datetime(2026, 11, 21, 0, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


def slot(
    name: str,
    hypervisor: str,
    identifier: str = "worker-el9",
    version: str = "2026.11.1",
    created_at: datetime.datetime = EPOCH,
    lifetime_h: float = 24,
    walltime_h: float = 12,
    ssh_port: int = 0,
    ssh_host: str = "127.0.0.1",
    drain_requested: bool = False,
    worker_type: str = "",
) -> SlotMetadata:
    drain_at = created_at + lifetime_h * HOUR
    return SlotMetadata(
        name=name,
        hypervisor=hypervisor,
        image_identifier=identifier,
        image_version=version,
        image_sha512="ab" * 64,
        created_at=created_at,
        drain_at=drain_at,
        deadline=drain_at + walltime_h * HOUR,
        worker_type=worker_type,
        drain_requested=drain_requested,
        drain_reason="kernel update" if drain_requested else "",
        drain_requested_at=created_at + HOUR if drain_requested else None,
        network_mode="user",
        ssh_host=ssh_host if ssh_port else "",
        ssh_port=ssh_port,
        ssh_user="root" if ssh_port else "",
    )


def test_domain_xml(
    name: str, meta: Optional[SlotMetadata], running: Union[bool, int] = True, uuid_seed: int = 0
) -> str:
    """A test-driver ``<domain>``; ``meta=None`` gives a foreign domain (no slot metadata).

    ``running``: true (running), false (shut off), or a libvirt run state number such as 6
    (crashed)."""
    metadata = f"<metadata>{to_xml(meta)}</metadata>" if meta is not None else ""
    state = 5 if running is False else int(running)
    runstate = "" if running is True else f"<test:runstate>{state}</test:runstate>"
    uuid = "%08x-0000-4000-8000-%012x" % (uuid_seed >> 48, uuid_seed & 0xFFFFFFFFFFFF)
    return (
        f"<domain type='test' xmlns:test='{TEST_NS}'><name>{escape(name)}</name><uuid>{uuid}</uuid>"
        f"<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
        f"{metadata}{runstate}</domain>"
    )


def write_test_node(
    path: str, domains: Iterable[Tuple[str, Optional[SlotMetadata], Union[bool, int]]], seed: int = 0
) -> str:
    """Write a test-driver node file holding ``(name, metadata, running)`` domains; returns its URI."""
    parts: List[str] = ["<node>"]
    for i, (name, meta, running) in enumerate(domains):
        parts.append(test_domain_xml(name, meta, running, seed * 100000 + i + 1))
    parts.append("</node>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return "test://" + path


def qemu_domain_xml(name: str, meta: Optional[SlotMetadata]) -> str:
    """A tiny diskless QEMU domain (64 MiB, sits in the firmware when started)."""
    metadata = f"<metadata>{to_xml(meta)}</metadata>" if meta is not None else ""
    return (
        f"<domain type='qemu'><name>{escape(name)}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<features><acpi/></features><tcg><tb-cache unit='MiB'>16</tb-cache></tcg>"
        f"{metadata}<devices><serial type='pty'/></devices></domain>"
    )
