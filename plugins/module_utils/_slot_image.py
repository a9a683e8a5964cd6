# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the staged image a slot boots from, and its protection from prune.

:func:`resolve_image` finds the image (an explicit path, or identifier and version in the
image cache); :func:`kernel_boot` its kernel for direct kernel boot; :func:`image_guard` holds
the image cache's lock while slots are made on its images, so that a prune never removes a
file between the overlay's creation and the domain's definition (after that, the domain's
disk is backed by the file and the cache counts it as a user).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError

DEFAULT_IMAGE_ROOT = "/var/lib/batchvirt/images"
GUARD_TIMEOUT = 600  # seconds to wait for a pre-stage or prune holding the image cache lock


@dataclass(frozen=True)
class ImageSource:
    """A staged image: where it is, its format and the size a guest sees."""

    identifier: str
    version: str
    path: str
    format: str
    sha512: str = ""
    virtual_size: int = 0
    cache_root: str = ""  # the image cache that holds it ("" for an explicit image.path)


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


def _from_path(spec: Dict[str, Any], path: str) -> ImageSource:
    if not os.path.isfile(path):
        raise SlotError(f"image.path {path} does not exist on the hypervisor: stage the image first", "image.path")
    fmt = spec.get("format") or detect_format(path)
    base = os.path.basename(path)
    return ImageSource(
        identifier=spec.get("identifier") or base.split(".")[0] or base,
        version=spec.get("version") or "local",
        path=path,
        format=fmt,
        sha512=spec.get("sha512") or "",
        virtual_size=image_virtual_size(path, fmt),
    )


def _not_staged(identifier: str, version: str, state: str, root: str) -> SlotError:
    return SlotError(
        "image %s version %s is not staged on this hypervisor (%s, cache %s): stage it first "
        "(playbooks/prestage.yml or batchvirt.farm.image)" % (identifier, version, state, root),
        "image",
    )


def resolve_image(spec: Dict[str, Any]) -> ImageSource:
    """The staged image of ``image`` (identifier + version from the cache, or an explicit path).

    ``image.avoid``: versions that ``latest`` skips (SlotError naming ``image.avoid`` when no other
    is left); a pinned version among them is refused (``avoid`` never swaps one version for another).
    """
    spec = spec or {}
    avoid = [str(v) for v in spec.get("avoid") or []]
    if avoid and spec.get("version") and spec["version"] != "latest" and spec["version"] in avoid:
        raise SlotError(
            "image.version %s is in image.avoid (%s): image.avoid only makes version latest skip versions; "
            "give another version, or version latest" % (spec["version"], ", ".join(avoid)),
            "image.avoid",
        )
    if spec.get("path"):
        return _from_path(spec, spec["path"])
    identifier = spec.get("identifier") or ""
    version = spec.get("version") or ""
    if not identifier or not version:
        raise SlotError("image needs identifier and version (a staged image), or path", "image")
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import (
        ImageAvoided,
        ImageCache,
        ImageCacheError,
    )

    root = spec.get("cache_root") or DEFAULT_IMAGE_ROOT
    record = None
    if os.path.exists(os.path.join(root.rstrip("/") + ".cache", "cache.sqlite")):
        cache = ImageCache(root)
        try:
            if version == "latest":  # the newest ready version of the image on this hypervisor
                record = cache.latest(identifier, avoid=avoid)
                version = record.version if record is not None else version
            else:  # a pinned version: if it is staged, still only one that may be deployed (never withdrawn)
                record = cache.get(identifier, version)
                if record is not None and record.state == "ready":
                    cache.resolve(identifier, version, staged=True)
        except ImageAvoided as exc:
            raise SlotError(
                f"{exc} by image.avoid (versions in back-off on this hypervisor): no other version is left for a "
                "new slot. Stage and endorse a newer version, wait until the back-off ends, or leave image.avoid "
                "out to take the newest anyway",
                "image.avoid",
            ) from None
        except ImageCacheError as exc:
            raise SlotError(f"image {identifier} {version}: {exc}", "image") from None
        finally:
            cache.close()
    if record is None or record.state != "ready" or not os.path.isfile(record.path):
        state = record.state if record is not None else "unknown to the image cache"
        raise _not_staged(identifier, version, state, root)
    fmt = spec.get("format") or record.format
    return ImageSource(
        identifier, version, record.path, fmt, record.sha512, image_virtual_size(record.path, fmt), cache_root=root
    )


@contextlib.contextmanager
def image_guard(images: Sequence[ImageSource], timeout: float = GUARD_TIMEOUT) -> Iterator[None]:
    """Hold the lock of every image cache among ``images`` and check, under it, that each image
    is still ready with its file in place. A prune takes the same lock and counts the domains
    backed by an image as its users, so once the slots are defined inside this block their
    images are safe; a prune that won the race makes this raise (nothing is created)."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, ImageCacheError

    by_root: Dict[str, List[ImageSource]] = {}
    for image in images:
        if image.cache_root:
            by_root.setdefault(image.cache_root, []).append(image)
    with contextlib.ExitStack() as stack:
        for root, members in sorted(by_root.items()):
            cache = ImageCache(root)
            stack.callback(cache.close)
            try:
                stack.enter_context(cache.lock(timeout, purpose="slot creation"))
            except ImageCacheError as exc:
                raise SlotError(f"image cache {root}: {exc}", "image") from None
            for image in members:
                record = cache.get(image.identifier, image.version)
                if record is None or record.state != "ready" or not os.path.isfile(record.path):
                    state = record.state if record is not None else "unknown to the image cache"
                    raise _not_staged(image.identifier, image.version, state + ", pruned meanwhile", root)
        yield


def kernel_boot(boot: Dict[str, Any], image: ImageSource) -> Tuple[str, str, str]:
    """kernel, initrd and cmdline: explicit, or from the image description JSON beside the image."""
    kernel, initrd, cmdline = boot.get("kernel") or "", boot.get("initrd") or "", boot.get("cmdline") or ""
    if not kernel:
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
