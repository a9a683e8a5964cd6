# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hypervisors the slots inventory reads (controller side): the entries of the option
``hypervisors`` checked, a name and the SSH route worked out from a libvirt URI, and the group
names Ansible accepts."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from ansible.errors import AnsibleParserError

HYPERVISOR_KEYS = frozenset(("uri", "name", "ssh_host", "ssh_user", "ssh_port"))
_UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")


def safe_group(name: str) -> str:
    """A group name Ansible accepts without a warning: letters, digits and ``_`` only."""
    return _UNSAFE_GROUP_CHARS.sub("_", name)


@dataclass(frozen=True)
class Hypervisor:
    """One hypervisor to read and how the controller reaches it with SSH."""

    name: str
    uri: str
    ssh_host: str = ""
    ssh_user: str = ""
    ssh_port: int = 0

    @property
    def local(self) -> bool:
        return not self.ssh_host or is_loopback(self.ssh_host)

    @property
    def proxy_jump(self) -> str:
        target = self.ssh_host
        if ":" in target and not target.startswith("["):
            target = f"[{target}]" if self.ssh_port else target
        if self.ssh_user:
            target = f"{self.ssh_user}@{target}"
        if self.ssh_port:
            target = f"{target}:{self.ssh_port}"
        return target


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hypervisor_from_entry(entry: Any, index: int) -> Hypervisor:
    """Validate one item of the option ``hypervisors`` (a URI string or a dictionary)."""
    where = f"hypervisors[{index}]"
    if isinstance(entry, str):
        entry = {"uri": entry}
    if not isinstance(entry, dict):
        raise AnsibleParserError(
            f"{where}: expected a libvirt URI or a dictionary with 'uri', got {type(entry).__name__}: {entry!r}"
        )
    unknown = sorted(set(entry) - HYPERVISOR_KEYS)
    if unknown:
        raise AnsibleParserError(
            "{}: unknown key(s) {}; allowed keys are {}".format(
                where, ", ".join(unknown), ", ".join(sorted(HYPERVISOR_KEYS))
            )
        )
    uri = entry.get("uri")
    if not isinstance(uri, str) or "://" not in uri:
        raise AnsibleParserError(
            f"{where}.uri: {uri!r} is not a libvirt URI such as qemu+ssh://root@hv01.example.org/system"
        )
    port = entry.get("ssh_port") or 0
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise AnsibleParserError(f"{where}.ssh_port: {port!r} is not a port number") from None
    return make_hypervisor(uri, entry.get("name"), entry.get("ssh_host"), entry.get("ssh_user"), port)


def make_hypervisor(
    uri: str,
    name: Optional[str] = None,
    ssh_host: Optional[str] = None,
    ssh_user: Optional[str] = None,
    ssh_port: int = 0,
) -> Hypervisor:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if not name:
        if host:
            name = host
        elif parts.scheme == "test" and parts.path not in ("", "/default"):
            name = os.path.splitext(os.path.basename(parts.path))[0]
        else:
            name = "localhost"
    return Hypervisor(
        name=str(name),
        uri=uri,
        ssh_host=str(ssh_host or host),
        ssh_user=str(ssh_user or (parts.username if host else "") or ""),
        ssh_port=int(ssh_port or 0),
    )
