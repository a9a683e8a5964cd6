# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: golden node snapshots — a consistent disk turned into a new,
compressed, hashed image version, with a retention of the last N versions.

The golden VM is sealed inside the guest by the ``golden_node`` role (cloud-init clean, SSH
host keys and machine-id removed) just before :func:`snapshot` shuts it down, so the image
never needs to be mounted on the hypervisor.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file
from ansible_collections.batchvirt.farm.plugins.module_utils._version import sort_versions

_VERSION_RE = re.compile(r"^(\d{8})\.(\d+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class GoldenError(FarmError):
    """A snapshot that could not be taken; the message says what to do (and ``option`` which input)."""


@dataclass(frozen=True)
class ImageVersion:
    identifier: str
    version: str
    path: str
    size: int
    sha512: str
    description_path: str

    def to_dict(self) -> Dict[str, Any]:
        return {
            "identifier": self.identifier,
            "version": self.version,
            "path": self.path,
            "size": self.size,
            "sha512": self.sha512,
            "description": self.description_path,
        }


def check_identifier(identifier: str) -> str:
    """Image identifiers become file names: refuse anything that is not a plain name."""
    if not _SAFE_NAME.match(identifier or "") or ".." in identifier:
        raise GoldenError(
            "identifier %r is not a safe image name: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, no '..' and no '/')" % identifier,
            option="identifier",
        )
    return identifier


def next_version(existing: List[str], today: datetime.date) -> str:
    """``YYYYMMDD.N``: the first free serial of today (dotted numeric, so it compares as a number)."""
    stamp = today.strftime("%Y%m%d")
    serials = [int(m.group(2)) for m in (_VERSION_RE.match(v) for v in existing) if m and m.group(1) == stamp]
    return "%s.%d" % (stamp, max(serials, default=0) + 1)


def versions_in(directory: str, identifier: str) -> List[str]:
    """Versions of ``identifier`` present in ``directory`` (from their description files), oldest first."""
    found: List[str] = []
    prefix = identifier + "-"
    if not os.path.isdir(directory):
        return found
    for entry in os.listdir(directory):
        if entry.startswith(prefix) and entry.endswith(".json"):
            version = entry[len(prefix) : -len(".json")]
            if _VERSION_RE.match(version):
                found.append(version)
    return sort_versions(found)


def disk_source(domain_xml: str, target: Optional[str] = None) -> str:
    """The file behind the domain's first disk (or the disk with ``target`` dev)."""
    root = ET.fromstring(domain_xml)
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        tgt = disk.find("target")
        if target and (tgt is None or tgt.get("dev") != target):
            continue
        source = disk.find("source")
        if source is not None and source.get("file"):
            return source.get("file", "")
        if source is not None and source.get("dev"):
            return source.get("dev", "")
    raise GoldenError(
        "the golden VM has no file-backed disk%s to snapshot" % (" " + target if target else ""), option="disk"
    )


def shutdown(
    domain: Any,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """ACPI shutdown and wait; True if the domain was running. Never destroys it."""
    if not domain.isActive():
        return False
    domain.shutdown()
    deadline = clock() + timeout
    while clock() < deadline:
        if not domain.isActive():
            return True
        sleep(1.0)
    if not domain.isActive():
        return True
    raise GoldenError(
        "the golden VM %s did not shut down within %d s; it was left running and nothing was "
        "snapshotted. Check that the guest reacts to ACPI power-off (systemd-logind or acpid), "
        "or raise shutdown_timeout." % (domain.name(), int(timeout)),
        option="shutdown_timeout",
    )


def write_version(
    source_disk: str,
    directory: str,
    identifier: str,
    version: str,
    compression: str = "zstd",
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    extra: Optional[Dict[str, Any]] = None,
) -> ImageVersion:
    """Flatten ``source_disk`` (and its backing chain) into ``<identifier>-<version>.qcow2``.

    The file is written under a temporary name and renamed only when complete, with its
    description JSON (the same keys as the base image's) written last.
    """
    check_identifier(identifier)
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, "%s-%s.qcow2" % (identifier, version))
    partial = final + ".partial"
    if os.path.exists(final):
        raise GoldenError("%s already exists: versions are never overwritten" % final, option="version")
    cmd = ["qemu-img", "convert", "-U", "-O", "qcow2"]
    if compression != "none":
        cmd += ["-c", "-o", "compression_type=%s" % compression]
    cmd += [source_disk, partial]
    result = run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if os.path.exists(partial):
            os.unlink(partial)
        raise GoldenError("qemu-img convert of %s failed: %s" % (source_disk, (result.stderr or "").strip()))
    size, sha512 = hash_file(partial)
    os.chmod(partial, 0o644)
    os.rename(partial, final)
    description = {
        "identifier": identifier,
        "version": version,
        "format": "qcow2",
        "file": final,
        "size": size,
        "sha512": sha512,
        "boot": {"modes": ["bootloader"]},
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": "golden-node",
    }
    description.update(extra or {})
    desc_path = os.path.join(directory, "%s-%s.json" % (identifier, version))
    tmp = desc_path + ".partial"
    with open(tmp, "w") as handle:
        json.dump(description, handle, indent=2, sort_keys=True)
    os.rename(tmp, desc_path)
    return ImageVersion(identifier, version, final, size, sha512, desc_path)


def describe_versions(directory: str, identifier: str) -> List[Dict[str, Any]]:
    """The description of every version of ``identifier`` in ``directory``, oldest first."""
    described = []
    for version in versions_in(directory, identifier):
        with open(os.path.join(directory, "%s-%s.json" % (identifier, version))) as handle:
            data = json.load(handle)
        described.append(
            {
                "identifier": identifier,
                "version": version,
                "path": data.get("file", ""),
                "size": data.get("size", 0),
                "sha512": data.get("sha512", ""),
                "format": data.get("format", "qcow2"),
            }
        )
    return described


def prune(directory: str, identifier: str, keep: int) -> List[str]:
    """Remove all but the newest ``keep`` versions (image and description); return the removed versions."""
    if keep < 1:
        raise GoldenError("keep must be at least 1 (got %d): the newest version is always kept" % keep, option="keep")
    versions = versions_in(directory, identifier)
    removed = versions[:-keep] if len(versions) > keep else []
    for version in removed:
        for suffix in (".qcow2", ".json"):
            path = os.path.join(directory, "%s-%s%s" % (identifier, version, suffix))
            if os.path.exists(path):
                os.unlink(path)
    return removed


def run_snapshot(params: Dict[str, Any], check_mode: bool, connect: Callable[[str], Any]) -> Dict[str, Any]:
    """The ``golden_snapshot`` module: plan the version, shut the golden VM down, write the
    version, start the VM again, apply the retention; returns the module result."""
    directory, identifier = params["directory"], params["identifier"]
    check_identifier(identifier)
    if params["keep"] < 1:
        raise GoldenError(
            "keep must be at least 1 (got %d): the newest version is always kept" % params["keep"], option="keep"
        )
    existing = versions_in(directory, identifier)
    version = params["version"] or next_version(existing, datetime.datetime.now(datetime.timezone.utc).date())
    base = os.path.join(directory, "%s-%s" % (identifier, version))
    planned = {
        "identifier": identifier,
        "version": version,
        "path": base + ".qcow2",
        "size": 0,
        "sha512": "",
        "description": base + ".json",
    }
    if version in existing:
        return _snapshot_result(False, planned, [], False, directory, identifier)
    conn = connect(params["uri"])
    try:
        domain = conn.lookupByName(params["name"])
    except Exception:
        raise GoldenError(
            "no golden VM named %r on %s: create it with the golden_node role first" % (params["name"], params["uri"]),
            option="name",
        ) from None
    source = disk_source(domain.XMLDesc(0), params["disk"])
    if check_mode:
        return _snapshot_result(True, planned, [], bool(domain.isActive()), directory, identifier)
    was_running = shutdown(domain, params["shutdown_timeout"])
    try:
        extra = {"boot": params["boot"]} if params["boot"] else None
        image = write_version(source, directory, identifier, version, params["compression"], extra=extra)
    finally:
        if was_running and params["restart"]:
            domain.create()
    removed = prune(directory, identifier, params["keep"])
    return _snapshot_result(True, image.to_dict(), removed, was_running, directory, identifier)


def _snapshot_result(
    changed: bool, image: Dict[str, Any], removed: List[str], shut_down: bool, directory: str, identifier: str
) -> Dict[str, Any]:
    return {
        "changed": changed,
        "image": image,
        "removed": removed,
        "shut_down": shut_down,
        "versions": describe_versions(directory, identifier),
    }
