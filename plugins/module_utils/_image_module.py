# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: what the ``image`` module does (:func:`run_image`): stage, remove, prune."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
from ansible_collections.batchvirt.farm.plugins.module_utils._image_prune import prune
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import (
    DEFAULT_POOL,
    DEFAULT_ROOT,
    READY,
    Clock,
    ImageCacheError,
    ImageInUse,
    ImageRecord,
    image_filename,
    validate_format,
    validate_name,
    validate_sha512,
    validate_size,
)

IMAGE_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "identifier": {"type": "str"},
    "version": {"type": "str", "default": "latest"},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent", "pruned"]},
    "source": {"type": "str", "aliases": ["url"]},
    "sha512": {"type": "str"},
    "size": {"type": "int"},
    "format": {"type": "str", "default": "qcow2"},
    "force": {"type": "bool", "default": False},
    "root": {"type": "path", "default": DEFAULT_ROOT},
    "pool": {"type": "str", "default": DEFAULT_POOL},
    "refresh_pool": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 60},
    "connect_timeout": {"type": "int", "default": 30},
    "lock_timeout": {"type": "int", "default": 600},
    "event_hook": {"type": "str"},
    "validate_certs": {"type": "bool", "default": True},
    "allow_file_uri": {"type": "bool", "default": True},
    "transport_options": {"type": "dict", "default": {}},
}


def _fetch_options(params: Dict[str, Any]) -> Dict[str, Any]:
    options = dict(params.get("transport_options") or {})
    options.update(
        timeout=params["timeout"],
        connect_timeout=params["connect_timeout"],
        validate_certs=params["validate_certs"],
        allow_file=params["allow_file_uri"],
    )
    return options


def refresh_pool(conn: Any, pool: str) -> Optional[str]:
    """Refresh the libvirt pool so a new or removed volume shows; a warning when it cannot."""
    if conn is None:
        return None
    try:
        handle = conn.storagePoolLookupByName(pool)
    except Exception:
        return (
            "the libvirt storage pool %s is not defined: the image is staged but slots cannot clone it as a "
            "volume; run the hypervisor role (or set pool to the dir pool over the cache root)" % pool
        )
    try:
        if not handle.isActive():
            return "the libvirt storage pool %s is not active: start it (virsh pool-start %s)" % (pool, pool)
        handle.refresh(0)
    except Exception as exc:
        return "refreshing the libvirt storage pool %s failed: %s" % (pool, exc)
    return None


def run_image(
    params: Dict[str, Any], check_mode: bool, conn: Any = None, clock: Optional[Clock] = None
) -> Dict[str, Any]:
    """What ``batchvirt.farm.image`` does; returns the module result (raises ImageCacheError)."""
    cache = ImageCache(
        params["root"], pool=params["pool"], clock=clock, event_hook=params.get("event_hook"), libvirt_conn=conn
    )
    try:
        state = params["state"]
        if state == "pruned":
            return _prune(cache, params, check_mode, conn)
        identifier = params.get("identifier")
        if not identifier:
            raise ImageCacheError("identifier is required with state=%s" % state)
        validate_name(identifier, "identifier")
        if state == "absent":
            return _absent(cache, identifier, params, check_mode, conn)
        return _present(cache, identifier, params, check_mode, conn)
    finally:
        cache.close()


def _wanted(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    version = params["version"]
    if params.get("source"):
        missing = [name for name in ("sha512", "size") if not params.get(name)]
        if missing or version == "latest":
            raise ImageCacheError(
                "with source, also give %s: an explicit image must be verifiable (sha512 and size as published) "
                "and have an explicit version (not 'latest')"
                % ", ".join(missing + (["version"] if version == "latest" else []))
            )
        return {
            "identifier": identifier,
            "version": validate_name(version, "version"),
            "uri": params["source"],
            "size": validate_size(params["size"]),
            "sha512": validate_sha512(params["sha512"]),
            "format": validate_format(params["format"]),
            "expires": "",
            "list_id": "",
        }
    try:
        entry = cache.resolve(identifier, version)
    except ImageCacheError:
        if not (check_mode and version != "latest" and params.get("sha512") and params.get("size")):
            raise
        # Check mode after a subscription that, in check mode, recorded nothing: preview.
        return {
            "identifier": identifier,
            "version": validate_name(version, "version"),
            "uri": "",
            "size": validate_size(params["size"]),
            "sha512": validate_sha512(params["sha512"]),
            "format": validate_format(params["format"]),
            "expires": "",
            "list_id": "",
        }
    if params.get("sha512") and validate_sha512(params["sha512"]) != entry["sha512"]:
        raise ImageCacheError(
            "sha512 given for image %s version %s differs from the one its image list %s endorses: drop the "
            "sha512 option or fix it" % (identifier, entry["version"], entry["list_id"])
        )
    return entry


def _result(record: Optional[ImageRecord], changed: bool, **extra: Any) -> Dict[str, Any]:
    result: Dict[str, Any] = {"changed": changed}
    if record is not None:
        result.update(
            identifier=record.identifier,
            version=record.version,
            state=record.state,
            path=record.path,
            volume=record.volume,
            pool=record.pool,
            sha512=record.sha512,
            size=record.size,
            format=record.format,
        )
    result.update(extra)
    return result


def _present(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    want = _wanted(cache, identifier, params, check_mode)
    version = want["version"]
    if not cache.needs_stage(identifier, version, want["sha512"], want["size"]):
        return _result(cache.get(identifier, version), False, transferred=0, resumed_from=0)
    if check_mode:
        fmt = want["format"]
        record = cache.get(identifier, version)
        filename = record.volume if record is not None else image_filename(identifier, version, fmt)
        preview = ImageRecord(
            identifier=identifier,
            version=version,
            state=READY,
            path=os.path.join(cache.root, filename),
            volume=filename,
            pool=cache.pool,
            sha512=want["sha512"],
            size=want["size"],
            format=fmt,
        )
        return _result(preview, True, transferred=0, resumed_from=0)
    with cache.lock(params["lock_timeout"], purpose="stage %s version %s" % (identifier, version)):
        staged = cache.stage(
            identifier,
            version,
            want["uri"],
            want["size"],
            want["sha512"],
            want["format"],
            list_id=want.get("list_id", ""),
            expires=want.get("expires", ""),
            fetch_options=_fetch_options(params),
        )
    warnings = list(staged.warnings)
    if staged.changed and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return _result(
        staged.record,
        staged.changed,
        transferred=staged.transferred,
        resumed_from=staged.resumed_from,
        seconds=round(staged.seconds, 3),
        warnings=warnings,
    )


def _absent(cache: ImageCache, identifier: str, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    version = params["version"]
    if version == "latest":
        raise ImageCacheError("state=absent needs an explicit version of image %s (not 'latest')" % identifier)
    validate_name(version, "version")
    record = cache.get(identifier, version)
    present = record is not None and (
        os.path.exists(record.path) or os.path.exists(cache.partial_path(record.volume)) or record.state == READY
    )
    if not present:
        return _result(record, False)
    users = cache.users(identifier, version)
    if users and not params["force"]:
        raise ImageInUse(
            "image %s version %s is still used by %s: destroy or recycle those slots first, or set force=true "
            "(which breaks them on their next start)" % (identifier, version, ", ".join(users)),
            users=users,
        )
    if check_mode:
        return _result(record, True, users=users)
    with cache.lock(params["lock_timeout"], purpose="expire %s version %s" % (identifier, version)):
        changed, warnings = cache.expire(identifier, version, "removed by state=absent", force=params["force"])
    if changed and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return _result(cache.get(identifier, version), changed, users=users, warnings=warnings)


def _prune(cache: ImageCache, params: Dict[str, Any], check_mode: bool, conn: Any) -> Dict[str, Any]:
    result = prune(cache, params["force"], params["lock_timeout"], check_mode)
    # a kept image is withdrawn and in use: refresh so libvirt lists its marker for the inventory
    refresh = result.pop("markers_changed") or (not check_mode and bool(result["expired"] or result["kept"]))
    warnings: List[str] = result["warnings"]
    if refresh and params["refresh_pool"]:
        warning = refresh_pool(conn, cache.pool)
        if warning:
            warnings.append(warning)
    return result
