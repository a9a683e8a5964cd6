# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the hypervisor image cache, :class:`ImageCache`, put together from its parts.

Where each part lives:

========================  ==================================================================
``_image_store.py``       layout on disk, errors, validators, records, the SQLite database and
                          the deploy lock (:class:`ImageStore`)
``_image_states.py``      image states and their history, staging (download, verify, rename
                          into place), event hooks (:class:`ImageStates`)
``_image_selection.py``   subscriptions (accepted lists and what they endorse) and THE image
                          selection rule :func:`select_version`, withdrawn markers
``_image_prune.py``       who uses an image (libvirt domains, qcow2 backing chains), expiry,
                          pruning what no list endorses
``_image_module.py``      what the ``image`` module does (:func:`run_image`)
========================  ==================================================================

Callers import :class:`ImageCache` (and the errors) from here.
"""

from __future__ import annotations

from ansible_collections.batchvirt.farm.plugins.module_utils._image_prune import (
    ImagePrune,
    backing_chain,
    disk_sources,
    domains_backed_by,
    qcow2_backing_file,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._image_selection import (
    LATEST,
    WITHDRAWN_SUFFIX,
    ImageAvoided,
    ImageNotEndorsed,
    select_version,
    withdrawn_marker,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._image_store import (
    DEFAULT_POOL,
    DEFAULT_ROOT,
    EXPIRED,
    FAILED,
    FORMATS,
    PARTIAL,
    READY,
    SCHEMA_VERSION,
    STATES,
    CacheLockTimeout,
    Clock,
    ImageCacheError,
    ImageInUse,
    ImageRecord,
    ImageVerificationError,
    StageResult,
    image_filename,
    validate_format,
    validate_name,
    validate_sha512,
    validate_size,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_ROOT",
    "EXPIRED",
    "FAILED",
    "FORMATS",
    "LATEST",
    "PARTIAL",
    "READY",
    "SCHEMA_VERSION",
    "STATES",
    "WITHDRAWN_SUFFIX",
    "CacheLockTimeout",
    "ImageAvoided",
    "Clock",
    "ImageCache",
    "ImageCacheError",
    "ImageInUse",
    "ImageNotEndorsed",
    "ImageRecord",
    "ImageVerificationError",
    "StageResult",
    "backing_chain",
    "disk_sources",
    "domains_backed_by",
    "image_filename",
    "qcow2_backing_file",
    "select_version",
    "validate_format",
    "validate_name",
    "validate_sha512",
    "validate_size",
    "withdrawn_marker",
]


class ImageCache(ImagePrune):
    """The image cache of one hypervisor (see the parts above for what each method does).

    The methods the slot engine and the modules call: :meth:`resolve` and :meth:`latest` (both
    through :func:`select_version`: never a withdrawn or expired version), :meth:`lock`,
    :meth:`add_user`, :meth:`remove_user`, :meth:`users`, :meth:`stage`, :meth:`expire`,
    :meth:`record_list`.
    """
