# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: libvirt connections, error handling and host capabilities.

Every plugin opens libvirt through :func:`connect` so that errors read the same everywhere
and libvirt never prints to stderr behind Ansible's back.
"""

from __future__ import annotations

import traceback
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import NAMESPACE

DEFAULT_URI = "qemu:///system"
# Options every libvirt-facing module shares; documented in the doc fragment batchvirt.farm.libvirt.
LIBVIRT_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "uri": {"type": "str", "default": DEFAULT_URI},
}


# virDomainState numbers and their names (virsh's words), for results and inventory variables.
DOMAIN_STATE_NAMES: Dict[int, str] = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


class FarmLibvirtError(FarmError):
    """A libvirt failure explained for a site admin (``option``: ``uri`` when connecting failed)."""


def _quiet(_ctx: object, _err: object) -> None:
    """Swallow libvirt's default stderr printing; errors reach us as exceptions."""


def connect(uri: str = DEFAULT_URI, readonly: bool = False) -> Any:
    """Open a libvirt connection or raise :class:`FarmLibvirtError` saying what to check."""
    if not HAS_LIBVIRT:
        raise FarmLibvirtError(
            "the Python module 'libvirt' (libvirt-python) is not installed on this host: "
            "install python3-libvirt (Debian/Ubuntu, EL) or 'pip install libvirt-python'"
        )
    libvirt.registerErrorHandler(_quiet, None)
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise FarmLibvirtError(
            "cannot connect to libvirt at %s: %s; check that libvirtd (or virtqemud) runs on the "
            "hypervisor and that the URI is right" % (uri, exc.get_error_message()),
            "uri",
        ) from None


def is_no_metadata(exc: Exception) -> bool:
    """True when libvirt says a domain simply has no metadata element of that namespace."""
    return (
        HAS_LIBVIRT
        and isinstance(exc, libvirt.libvirtError)
        and (exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA)
    )


def slot_metadata_xml(domain: Any, flags: int = 0) -> Optional[str]:
    """The collection's ``<farm:slot>`` metadata of a domain, or None if it is not a slot."""
    try:
        return domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, flags)
    except libvirt.libvirtError as exc:
        if is_no_metadata(exc):
            return None
        raise


def host_domain_types(capabilities_xml: str, arch: str = "x86_64") -> List[str]:
    """Domain types (``kvm``, ``qemu``) the host offers for ``arch``, usable or not."""
    root = ET.fromstring(capabilities_xml)
    types: List[str] = []
    for guest in root.findall("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for dom in arch_el.findall("domain"):
            kind = dom.get("type")
            if kind and kind not in types:
                types.append(kind)
    return types


def host_has_hw_virt(capabilities_xml: str) -> bool:
    """True when the host CPU exposes hardware virtualisation (vmx or svm).

    ``/dev/kvm`` can exist on a nested host without it, where KVM guests do not boot; the
    capabilities' host CPU features tell the truth, also over a remote connection.
    """
    root = ET.fromstring(capabilities_xml)
    features = {f.get("name") for f in root.findall("./host/cpu/feature")}
    return bool(features & {"vmx", "svm"})


def default_domain_type(capabilities_xml: str, arch: str = "x86_64") -> str:
    """``kvm`` where KVM is offered and the CPU has vmx/svm; ``qemu`` (TCG) otherwise."""
    types = host_domain_types(capabilities_xml, arch)
    if "kvm" in types and host_has_hw_virt(capabilities_xml):
        return "kvm"
    if "qemu" in types or not types:
        return "qemu"
    return types[0]
