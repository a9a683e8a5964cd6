# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: cloud-init NoCloud seed data and the seed ISO (label ``cidata``).

user-data is the merge of the site's ``cloud_init`` dict, the SSH authorized keys and the
batch registration (``write_files``/``runcmd``); meta-data carries an instance-id that is
stable for one incarnation of a slot; network-config (v2) carries a static address.
"""

from __future__ import annotations

import copy
import io
import json
import traceback
from typing import Any, Dict, List, Optional

try:
    import pycdlib

    HAS_PYCDLIB = True
    PYCDLIB_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - depends on the host
    pycdlib = None  # type: ignore[assignment]
    HAS_PYCDLIB = False
    PYCDLIB_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

# Keys whose lists accumulate across sources instead of being replaced.
_LIST_KEYS = ("write_files", "runcmd", "bootcmd", "packages", "ssh_authorized_keys", "users", "mounts")
SEED_LABEL = "cidata"


class SeedError(FarmError, ValueError):
    """Seed data that cannot be built; ``option`` names the option."""


def merge_user_data(*sources: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Merge cloud-config dicts left to right: known list keys accumulate, dicts merge, scalars win."""
    merged: Dict[str, Any] = {}
    for source in sources:
        if not source:
            continue
        if not isinstance(source, dict):
            raise SeedError(
                f"cloud_init must be a dict of cloud-config keys, got {type(source).__name__}", "cloud_init"
            )
        for key, value in source.items():
            if key in merged and key in _LIST_KEYS and isinstance(merged[key], list) and isinstance(value, list):
                merged[key] = merged[key] + copy.deepcopy(value)
            elif key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
                merged[key] = merge_user_data(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def user_data(
    cloud_init: Optional[Dict[str, Any]] = None,
    ssh_authorized_keys: Optional[List[str]] = None,
    registration: Optional[Dict[str, Any]] = None,
    hostname: str = "",
) -> str:
    """The ``#cloud-config`` document (JSON, which is YAML) for one slot."""
    base: Dict[str, Any] = {}
    if hostname:
        base["hostname"] = hostname
    keys: Dict[str, Any] = {"ssh_authorized_keys": list(ssh_authorized_keys)} if ssh_authorized_keys else {}
    merged = merge_user_data(base, cloud_init, keys, registration)
    return "#cloud-config\n" + json.dumps(merged, indent=2, sort_keys=True) + "\n"


def meta_data(instance_id: str, hostname: str) -> str:
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=2, sort_keys=True) + "\n"


def network_config(
    mac: str, address: str, gateway: str = "", dns: Optional[List[str]] = None, dhcp: bool = False
) -> Optional[str]:
    """netplan-style v2 config matching the NIC by MAC; None when the guest should just use DHCP."""
    if not address and not dhcp:
        return None
    nic: Dict[str, Any] = {"match": {"macaddress": mac}, "set-name": "eth0"}
    if address:
        if "/" not in address:
            raise SeedError(
                f"network.address must carry its prefix length (such as 192.0.2.10/24), got {address!r}",
                "network.address",
            )
        nic["addresses"] = [address]
        if gateway:
            nic["routes"] = [{"to": "default", "via": gateway}]
        if dns:
            nic["nameservers"] = {"addresses": list(dns)}
    else:
        nic["dhcp4"] = True
    return json.dumps({"version": 2, "ethernets": {"eth0": nic}}, indent=2, sort_keys=True) + "\n"


def build_iso(files: Dict[str, str]) -> bytes:
    """An ISO 9660 image with Joliet and Rock Ridge names, volume label ``cidata``."""
    if not HAS_PYCDLIB:
        raise SeedError(
            "the Python module pycdlib is needed on the hypervisor to build seed ISOs: pip install pycdlib", "seed"
        )
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for number, (name, text) in enumerate(sorted(files.items())):
        data = text.encode("utf-8")
        iso_name = "/%s%d.;1" % ("".join(c for c in name.upper() if c.isalnum())[:7], number)
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
