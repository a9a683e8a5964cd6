# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: subscribing to an image list — fetch, verify, record in the image cache.

The engine of the ``image_subscription`` module. A refused list raises before anything is
written, so the previously accepted list and its images stay as they were; check mode fetches
and verifies the same way and reports what recording would change.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_fetch import fetch
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    check_identifier,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_trust import DEFAULT_CRL_POLICY, Warn
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_verify import verify
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow


def _preview(cache: Any, identifier: str, images: List[Dict[str, Any]], fresh_cache: bool) -> Dict[str, Any]:
    """What ``cache.record_list`` would report, without writing (check mode)."""
    before = [] if fresh_cache else [r for r in cache.endorsed(include_expired=True) if r["list_id"] == identifier]
    now_keys = {(i["identifier"], i["version"]) for i in images}
    old_keys = {(r["identifier"], r["version"]) for r in before}
    return {
        "new": [i for i in images if (i["identifier"], i["version"]) not in old_keys],
        "current": [i for i in images if (i["identifier"], i["version"]) in old_keys],
        "withdrawn": [
            {k: v for k, v in r.items() if k != "list_id"}
            for r in before
            if (r["identifier"], r["version"]) not in now_keys
        ],
    }


def subscribe(
    cache: Any,
    url: str,
    identifier: str,
    ca_dir: str,
    endorser_dn: Optional[str] = None,
    endorser_ca: Optional[str] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: int = DEFAULT_TIMEOUT,
    validate_certs: bool = True,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
    allow_file_uri: bool = False,
    crl: str = DEFAULT_CRL_POLICY,
    warn: Optional[Warn] = None,
    check_mode: bool = False,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """Fetch, verify and record a list in ``cache`` (an ``ImageCache``). A refused list raises
    before anything is written, so the previously accepted list stays as it was."""
    now = now or utcnow()
    check_identifier(identifier, "identifier")
    fresh_cache = check_mode and not os.path.exists(cache.db_path)
    accepted = None if fresh_cache else cache.accepted_list_version(identifier)
    data = fetch(url, max_bytes, timeout, validate_certs)
    ilist = verify(
        data,
        ca_dir,
        identifier,
        now=now,
        accepted_version=accepted,
        endorser_dn=endorser_dn,
        endorser_ca=endorser_ca,
        clock_skew=clock_skew,
        max_bytes=max_bytes,
        allow_file_uri=allow_file_uri,
        crl=crl,
        warn=warn,
    )
    images = [i.to_cache(ilist.expires) for i in ilist.images]
    if check_mode:
        report = _preview(cache, identifier, images, fresh_cache)
    else:
        report = cache.record_list(identifier, ilist.version, images)
    changed = accepted != ilist.version or bool(report["new"]) or bool(report["withdrawn"])
    summary = ilist.summary()
    summary.pop("images")
    return dict(
        summary,
        changed=changed,
        url=url,
        previous_version=accepted,
        new=report["new"],
        current=report["current"],
        withdrawn=report["withdrawn"],
    )


def unsubscribe(cache: Any, identifier: str, check_mode: bool = False) -> Dict[str, Any]:
    """Forget the list ``identifier`` in ``cache``: its accepted version and its endorsements go,
    so a later list of that identifier starts again from any version (the rollback check has
    nothing to compare with); the staged image files stay. Unknown lists change nothing."""
    check_identifier(identifier, "identifier")
    if not os.path.exists(cache.db_path):
        report: Dict[str, Any] = {"previous_version": None, "withdrawn": []}
    elif check_mode:
        report = {
            "previous_version": cache.accepted_list_version(identifier),
            "withdrawn": [
                {k: v for k, v in r.items() if k != "list_id"}
                for r in cache.endorsed(include_expired=True)
                if r["list_id"] == identifier
            ],
        }
    else:
        report = cache.forget_list(identifier)
    changed = report["previous_version"] is not None or bool(report["withdrawn"])
    return {
        "changed": changed,
        "identifier": identifier,
        "previous_version": report["previous_version"],
        "new": [],
        "current": [],
        "withdrawn": report["withdrawn"],
    }
