# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: HEPiX image lists — the front door to the parts that build, sign,
fetch and verify them like vmcatcher (docs/images-trust.md).

Each concept lives in one file; this one only re-exports their public names for callers that
want one import (``_golden``, the tests, bench):

- ``_imagelist_model``: :class:`ImageListError`, the data classes :class:`ImageList`,
  :class:`Image`, :class:`Endorser`, parsing and the rules of every field (fail-closed);
- ``_imagelist_dn``: distinguished names in RFC 4514 and OpenSSL slash form;
- ``_imagelist_publish``: hashing image files, S/MIME signing, :func:`publish` (``image_list``);
- ``_imagelist_trust``: the CA directory and its CRLs (``crl: require | use | ignore``);
- ``_imagelist_verify``: the signature (``openssl smime``) and the checks in order, :func:`verify`;
- ``_imagelist_fetch``: reading a list from a path or URL with size and time limits;
- ``_imagelist_subscribe``: :func:`subscribe` (``image_subscription``): fetch, verify, record.
"""

from __future__ import annotations

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_dn import (
    DN,
    name_to_dn,
    name_to_slash,
    parse_dn,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_fetch import fetch
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    REASONS,
    URI_SCHEMES,
    Endorser,
    Image,
    ImageList,
    ImageListError,
    check_format,
    check_identifier,
    check_size,
    check_uri,
    from_obj,
    image_from_obj,
    parse_json,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_publish import (
    build_image,
    bump_version,
    cert_names,
    hash_file,
    publish,
    read_published,
    sign,
    write_atomic,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_subscribe import subscribe
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_trust import (
    CRL_POLICIES,
    DEFAULT_CRL_POLICY,
    TrustStore,
    check_revocation,
    load_trust_store,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_verify import (
    Signed,
    check_pinning,
    extract_unverified,
    verify,
    verify_signature,
)

__all__ = [
    "CRL_POLICIES",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_CRL_POLICY",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "DN",
    "REASONS",
    "URI_SCHEMES",
    "Endorser",
    "Image",
    "ImageList",
    "ImageListError",
    "Signed",
    "TrustStore",
    "build_image",
    "bump_version",
    "cert_names",
    "check_format",
    "check_identifier",
    "check_pinning",
    "check_revocation",
    "check_size",
    "check_uri",
    "extract_unverified",
    "fetch",
    "from_obj",
    "hash_file",
    "image_from_obj",
    "load_trust_store",
    "name_to_dn",
    "name_to_slash",
    "parse_dn",
    "parse_json",
    "publish",
    "read_published",
    "sign",
    "subscribe",
    "verify",
    "verify_signature",
    "write_atomic",
]
