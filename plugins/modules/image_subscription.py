#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_subscription
short_description: Subscribe a hypervisor to a signed HEPiX image list
version_added: 0.1.0
description:
  - Fetches a signed HEPiX image list, verifies it the way vmcatcher does, records the accepted
    list in the hypervisor's image cache and reports which images are new, still endorsed
    (current), or no longer endorsed (withdrawn).
  - "Checks, in order: size limit, pinning (O(endorser_ca) required with O(endorser_dn) when
    O(ca_dir) holds more than one CA), S/MIME signature and signer chain against the CAs in
    O(ca_dir) only (at the current time), revocation of the signer and its CAs against the CRLs in
    O(ca_dir) (see O(crl)), JSON, schema and hostile content (a missing required field such as
    C(hv:images) or an image's C(hv:version), identifiers and C(hv:format) values that would
    escape the image directory, forbidden URI schemes), endorser C(hv:dn)/C(hv:ca) equal to the
    signer's subject/issuer (RFC 4514 or OpenSSL slash form), O(endorser_dn) and O(endorser_ca),
    list identifier equal to O(identifier), C(dc:date:created) not in the future, not past
    C(dc:date:expires), and C(hv:version) not lower than the version already accepted (rollback
    or replay), in the collection's one version order."
  - A list without C(hv:images) is refused as V(malformed); only an explicit empty C(hv:images)
    withdraws every image.
  - A refused list fails the task with the reason and leaves the cache as it was, so the
    previously accepted list and its images stay usable.
  - It never downloads an image and never marks one ready; M(batchvirt.farm.image) stages them.
  - The trust model and every error are described in the collection's C(docs/images-trust.md).
author:
  - batchvirt.farm maintainers (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
    details: The list is fetched and verified; the cache is not written.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Accepting the same list version again records nothing new and reports no change.
requirements:
  - the C(openssl) command (verifies the S/MIME signature)
  - cryptography (Python; reads the signer certificate)
options:
  state:
    description:
      - V(present) fetches, verifies and records the list.
      - V(absent) unsubscribes, forgetting the accepted version of the list O(identifier) and the images it
        endorsed in this hypervisor's cache (O(url) and O(ca_dir) are not needed). The staged image files stay;
        an image no other list endorses counts as withdrawn from then on. A later subscription to a list of that
        identifier accepts any version again (the rollback check has nothing left to compare with), so use it
        when a publisher really starts again, or to take a test or demo list down.
    type: str
    choices: [present, absent]
    default: present
    version_added: 0.2.0
  url:
    description:
      - Where the list is, a local path, a C(file://) URL, or an C(http://) or C(https://) URL.
      - Required with O(state=present).
    type: str
  identifier:
    description: The C(dc:identifier) of the list subscribed to; any other list is refused.
    type: str
    required: true
  ca_dir:
    description:
      - The directory of trusted CA certificates (hashed C(xxxxxxxx.0) files as in
        C(/etc/grid-security/certificates), or plain C(.pem)/C(.crt) files) and their CRLs
        (C(xxxxxxxx.r0)). The system trust store is not used.
      - Required with O(state=present).
    type: path
  endorser_dn:
    description:
      - The expected subject of the signer (RFC 4514 or OpenSSL slash form). When given, a list
        signed by anyone else is refused even if their CA is trusted.
      - A DN pins one endorser only together with its CA. When O(ca_dir) holds more than one CA
        (such as the IGTF bundle), O(endorser_dn) without O(endorser_ca) is refused with
        RV(reason=endorser_ca_required).
    type: str
  endorser_ca:
    description:
      - The expected issuer of the signer's certificate (RFC 4514 or OpenSSL slash form), the
        C(hv:ca) of the list. Required with O(endorser_dn) when O(ca_dir) holds more than one CA.
    type: str
  crl:
    description:
      - How the certificate revocation lists in O(ca_dir) (the C(<hash>.r0) files that fetch-crl
        writes; also C(*.crl), C(*.crl.pem)) are used. A CRL counts only when it is signed by its CA.
      - V(use) refuses a list whose signer (or a CA above it) is revoked, and warns when a CA of the
        chain has no CRL or only CRLs past their nextUpdate.
      - V(require) refuses the list in those two cases too (RV(reason=crl_missing), RV(reason=crl_expired)).
      - V(ignore) does not read CRLs.
    type: str
    choices: [require, use, ignore]
    default: use
  cache_root:
    description: The image cache's pool directory; its database lives in C(<cache_root>.cache).
    type: path
    default: /var/lib/batchvirt/images
  max_size:
    description: The largest list accepted, in bytes; bigger ones are refused before parsing.
    type: int
    default: 16777216
  timeout:
    description: Seconds to wait for the list server, and the limit for the whole transfer.
    type: int
    default: 30
  validate_certs:
    description: Validate the HTTPS server's certificate.
    type: bool
    default: true
  clock_skew:
    description: Seconds a list's C(dc:date:created) may lie in the future (clock differences).
    type: int
    default: 300
  allow_file_uri:
    description: Accept images whose C(hv:uri) is a C(file://) URL (lists for the same host or a shared filesystem).
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for the image cache's deploy lock.
    type: int
    default: 600
seealso:
  - module: batchvirt.farm.image_list
  - module: batchvirt.farm.image
"""

EXAMPLES = r"""
- name: Subscribe to the farm's image list
  batchvirt.farm.image_subscription:
    url: https://images.example.org/farm.list
    identifier: e2c6b8a4-3f1d-4c55-9a7e-1b2c3d4e5f60
    ca_dir: /etc/grid-security/certificates
    # the IGTF bundle holds many CAs: pin the endorser's DN and its CA
    endorser_dn: /C=DE/O=GermanGrid/OU=KIT/CN=Image Endorser
    endorser_ca: /C=DE/O=GermanGrid/CN=GridKa-CA
    crl: require
  register: farm_subscription

- name: Show what the list no longer endorses
  ansible.builtin.debug:
    msg: "{{ farm_subscription.withdrawn | map(attribute='identifier') | list }}"

- name: Unsubscribe from a list that is taken down (its images stay staged, no longer endorsed)
  batchvirt.farm.image_subscription:
    identifier: e2c6b8a4-3f1d-4c55-9a7e-1b2c3d4e5f60
    state: absent
"""

RETURN = r"""
url:
  description: The list's URL.
  returned: when O(state=present)
  type: str
identifier:
  description: The list's C(dc:identifier).
  returned: success
  type: str
version:
  description: The accepted C(hv:version).
  returned: success
  type: str
previous_version:
  description: The version accepted before this run, or null (with O(state=absent), the version forgotten).
  returned: success
  type: str
created:
  description: The list's C(dc:date:created).
  returned: success
  type: str
expires:
  description: The list's C(dc:date:expires).
  returned: success
  type: str
endorser:
  description: C(hv:dn) and C(hv:ca) of the list.
  returned: success
  type: dict
new:
  description: Images endorsed now and not by the previously accepted version (identifier, version, uri, size, sha512, format, expires).
  returned: success
  type: list
  elements: dict
current:
  description: Images endorsed before and now.
  returned: success
  type: list
  elements: dict
withdrawn:
  description:
    - Images the previously accepted version endorsed and this one does not (with O(state=absent), every image
      the forgotten list endorsed).
  returned: success
  type: list
  elements: dict
reason:
  description:
    - Why the list was refused, one of V(bad_signature), V(untrusted_ca), V(signer_expired),
      V(revoked), V(crl_missing), V(crl_expired), V(endorser_mismatch), V(endorser_ca_required),
      V(expired), V(created_in_future), V(version_rollback), V(identifier_mismatch), V(malformed),
      V(too_large), V(hostile_identifier), V(forbidden_uri), V(fetch_failed), V(bad_ca_dir),
      V(openssl_missing), V(missing_library), V(cache_error).
  returned: failure
  type: str
field:
  description: The list field or module option at fault when the list was refused.
  returned: failure
  type: str
  sample: hv:imagelist.hv:endorser.hv:x509.hv:dn
"""

import os  # noqa: E402

from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache, ImageCacheError  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (  # noqa: E402
    DEFAULT_MAX_BYTES,
    ImageListError,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_subscribe import (  # noqa: E402
    subscribe,
    unsubscribe,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_trust import (  # noqa: E402
    CRL_POLICIES,
    DEFAULT_CRL_POLICY,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule  # noqa: E402


def main() -> None:
    module = FarmModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "url": {"type": "str"},
            "identifier": {"type": "str", "required": True},
            "ca_dir": {"type": "path"},
            "endorser_dn": {"type": "str"},
            "endorser_ca": {"type": "str"},
            "crl": {"type": "str", "choices": list(CRL_POLICIES), "default": DEFAULT_CRL_POLICY},
            "cache_root": {"type": "path", "default": "/var/lib/batchvirt/images"},
            "max_size": {"type": "int", "default": DEFAULT_MAX_BYTES},
            "timeout": {"type": "int", "default": 30},
            "validate_certs": {"type": "bool", "default": True},
            "clock_skew": {"type": "int", "default": 300},
            "allow_file_uri": {"type": "bool", "default": False},
            "lock_timeout": {"type": "int", "default": 600},
        },
        supports_check_mode=True,
        required_if=[("state", "present", ("url", "ca_dir"))],
    )
    p = module.params
    if p["state"] == "absent":
        _unsubscribe(module)
        return
    kwargs = {
        "url": p["url"],
        "identifier": p["identifier"],
        "ca_dir": p["ca_dir"],
        "endorser_dn": p["endorser_dn"],
        "endorser_ca": p["endorser_ca"],
        "max_bytes": p["max_size"],
        "timeout": p["timeout"],
        "validate_certs": p["validate_certs"],
        "clock_skew": p["clock_skew"],
        "allow_file_uri": p["allow_file_uri"],
        "crl": p["crl"],
        "warn": module.warn,
        "check_mode": module.check_mode,
    }
    try:
        with ImageCache(p["cache_root"]) as cache:
            if module.check_mode:
                result = subscribe(cache, **kwargs)
            else:
                with cache.lock(timeout=p["lock_timeout"], purpose="image_subscription " + p["identifier"]):
                    result = subscribe(cache, **kwargs)
    except ImageListError as exc:
        module.fail_from(exc, reason=exc.reason, field=exc.option, url=p["url"])
        return
    except ImageCacheError as exc:
        module.fail_from(exc, reason="cache_error", url=p["url"])
        return
    module.exit_json(**result)


def _unsubscribe(module: FarmModule) -> None:
    p = module.params
    try:
        with ImageCache(p["cache_root"]) as cache:
            if module.check_mode or not os.path.exists(cache.db_path):
                result = unsubscribe(cache, p["identifier"], check_mode=True)
            else:
                with cache.lock(timeout=p["lock_timeout"], purpose="image_subscription absent " + p["identifier"]):
                    result = unsubscribe(cache, p["identifier"])
    except ImageListError as exc:
        module.fail_from(exc, reason=exc.reason, field=exc.option)
        return
    except ImageCacheError as exc:
        module.fail_from(exc, reason="cache_error")
        return
    module.exit_json(**result)


if __name__ == "__main__":
    main()
