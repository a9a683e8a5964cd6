#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_list
short_description: Publish a signed HEPiX image list
version_added: 0.1.0
description:
  - Creates or updates a HEPiX image list (C(hv:imagelist)) that endorses image files, signed as
    S/MIME (PKCS#7) with the endorser's X.509 certificate and key, as vmcatcher subscribers expect.
  - Computes the size and sha512 of every image file in one chunked pass.
  - Re-signs only when the endorsed content changed (the images, titles, URIs, endorser or extra
    fields), or when the published list expires within O(renew_before) days. Then it bumps
    C(hv:version) (unless O(version) is given), sets C(dc:date:created) to now and
    C(dc:date:expires) to now plus O(expires_in) days, and replaces the file atomically.
  - Unchanged content leaves the file untouched; the signature bytes are never compared.
  - The trust model and the checks subscribers run are described in the collection's
    C(docs/images-trust.md).
author:
  - batchvirt.farm maintainers (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the list's JSON before and after.
  idempotent:
    support: full
    details: A second run with the same inputs leaves the file untouched and reports no change.
requirements:
  - cryptography (Python, on the host that signs)
  - the C(openssl) command (reads the already published list)
options:
  path:
    description: The signed list file to create or update (usually served by a web server).
    type: path
    required: true
  identifier:
    description:
      - The list's C(dc:identifier), which subscribers pin with M(batchvirt.farm.image_subscription)'s
        O(batchvirt.farm.image_subscription#module:identifier). A UUID is the usual choice.
    type: str
    required: true
  title:
    description: The list's C(dc:title).
    type: str
    default: ""
  description:
    description: The list's C(dc:description).
    type: str
    default: ""
  uri:
    description: The list's own C(hv:uri), the URL subscribers fetch it from.
    type: str
    default: ""
  source:
    description: The list's C(dc:source), the publisher's home page (some subscribers such as atrope require the field).
    type: str
    default: ""
  version:
    description:
      - The C(hv:version) to publish. When omitted, a new list starts at V(1) and every change
        bumps the last number of the published version (V(3.9) becomes V(3.10), V(2026-11-21)
        becomes V(2026-11-22)); a published version that does not end with a number needs O(version).
      - When given, it must be higher than the published version whenever the content changes,
        else subscribers would refuse the list as a rollback. Versions compare in the
        collection's one version order (numbers numerically, V(1.9) before V(1.10); V(.) and
        V(-) only separate; a word such as V(rc1) sorts before the release).
    type: str
  expires_in:
    description: Days from signing until C(dc:date:expires).
    type: int
    default: 28
  renew_before:
    description:
      - Re-sign an unchanged list (with a bumped version) when it expires within this many days.
    type: int
    default: 7
  creator:
    description: The endorser's name (C(hv:endorser.hv:x509.dc:creator)).
    type: str
    default: ""
  email:
    description: The endorser's e-mail address (C(hv:endorser.hv:x509.hv:email)).
    type: str
    default: ""
  extra:
    description:
      - Further list-level fields kept verbatim, such as C(ad:vo). Keys should carry a namespace
        prefix (C(ad:), C(sl:)).
    type: dict
    default: {}
  images:
    description: The images the list endorses, in order.
    type: list
    elements: dict
    required: true
    suboptions:
      identifier:
        description:
          - The image's C(dc:identifier); it becomes a file name on hypervisors, so only letters,
            digits, C(.), C(_), C(+) and C(-) are allowed.
        type: str
        required: true
      version:
        description: The image's C(hv:version) (also part of the staged file's name).
        type: str
        required: true
      uri:
        description:
          - Where hypervisors fetch the image, C(https://), C(http://), a C(.torrent) URL or a
            C(magnet:) link; C(file://) only with O(allow_file_uri=true).
        type: str
        required: true
      path:
        description:
          - The local image file; its size and sha512 are computed. Required unless O(images[].sha512)
            and O(images[].size) are given.
        type: path
      sha512:
        description: The image's sha512 (128 hexadecimal characters) when O(images[].path) is not given.
        type: str
      size:
        description: The image's size in bytes when O(images[].path) is not given.
        type: int
      title:
        description: The image's C(dc:title); defaults to the identifier.
        type: str
      description:
        description: The image's C(dc:description).
        type: str
      format:
        description: The image's C(hv:format).
        type: str
        default: qcow2
      extra:
        description: Further image fields kept verbatim, such as C(sl:os) or C(ad:mpuri).
        type: dict
  signer_cert:
    description:
      - The endorser's PEM X.509 certificate. Its subject and issuer become C(hv:dn) and C(hv:ca)
        (in OpenSSL's slash form, as real lists carry them).
    type: path
    required: true
  signer_key:
    description: The endorser's PEM private key (keep it readable by root only).
    type: path
    required: true
  signer_key_passphrase:
    description: The passphrase of O(signer_key), if it is encrypted.
    type: str
  signature:
    description:
      - V(detached) writes C(multipart/signed) S/MIME (the JSON stays readable), V(opaque) writes
        C(application/pkcs7-mime). vmcatcher accepts both.
    type: str
    choices: [detached, opaque]
    default: detached
  allow_file_uri:
    description: Allow C(file://) image URIs (only for lists used on the same host or a shared filesystem).
    type: bool
    default: false
  mode:
    description: The file mode of O(path).
    type: raw
    default: "0644"
seealso:
  - module: batchvirt.farm.image_subscription
"""

EXAMPLES = r"""
- name: Publish the farm's image list
  batchvirt.farm.image_list:
    path: /srv/www/images/farm.list
    identifier: e2c6b8a4-3f1d-4c55-9a7e-1b2c3d4e5f60
    title: Batch farm worker images
    uri: https://images.example.org/farm.list
    creator: Site image endorser
    email: images@example.org
    expires_in: 28
    signer_cert: /etc/farm/endorser.crt
    signer_key: /etc/farm/endorser.key
    signer_key_passphrase: "{{ vault_endorser_key_passphrase }}"
    images:
      - identifier: worker-el9
        version: "2026.11.21"
        path: /srv/www/images/worker-el9-2026.11.21.qcow2
        uri: https://images.example.org/worker-el9-2026.11.21.qcow2
        title: EL9 worker node
        extra:
          sl:os: Linux
          sl:arch: x86_64
  register: farm_list
"""

RETURN = r"""
path:
  description: The list file.
  returned: always
  type: str
identifier:
  description: The list's C(dc:identifier).
  returned: always
  type: str
version:
  description: The published C(hv:version) (bumped when the content changed).
  returned: always
  type: str
  sample: "4"
created:
  description: C(dc:date:created) of the published list.
  returned: always
  type: str
  sample: "2026-11-21T06:00:00Z"
expires:
  description: C(dc:date:expires) of the published list.
  returned: always
  type: str
  sample: "2026-12-19T06:00:00Z"
endorser:
  description: C(hv:dn) and C(hv:ca) as published.
  returned: always
  type: dict
  sample: {"dn": "/C=DE/O=GermanGrid/CN=Image Endorser", "ca": "/C=DE/O=GermanGrid/CN=GridKa-CA"}
images:
  description: The endorsed images.
  returned: always
  type: list
  elements: dict
  contains:
    identifier:
      description: C(dc:identifier).
      type: str
    version:
      description: C(hv:version).
      type: str
    uri:
      description: C(hv:uri).
      type: str
    size:
      description: C(hv:size) in bytes.
      type: int
    sha512:
      description: C(sl:checksum:sha512).
      type: str
    format:
      description: C(hv:format).
      type: str
    expires:
      description: The list's expiry, which is the image's endorsement expiry.
      type: str
    title:
      description: C(dc:title).
      type: str
reason:
  description: Why the list was (re-)signed, V(created), V(content changed) or V(renewed before expiry).
  returned: changed
  type: str
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import ImageListError  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_publish import publish  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule  # noqa: E402

IMAGE_SPEC = {
    "identifier": {"type": "str", "required": True},
    "version": {"type": "str", "required": True},
    "uri": {"type": "str", "required": True},
    "path": {"type": "path"},
    "sha512": {"type": "str"},
    "size": {"type": "int"},
    "title": {"type": "str"},
    "description": {"type": "str"},
    "format": {"type": "str", "default": "qcow2"},
    "extra": {"type": "dict"},
}


def main() -> None:
    module = FarmModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "identifier": {"type": "str", "required": True},
            "title": {"type": "str", "default": ""},
            "description": {"type": "str", "default": ""},
            "uri": {"type": "str", "default": ""},
            "source": {"type": "str", "default": ""},
            "version": {"type": "str"},
            "expires_in": {"type": "int", "default": 28},
            "renew_before": {"type": "int", "default": 7},
            "creator": {"type": "str", "default": ""},
            "email": {"type": "str", "default": ""},
            "extra": {"type": "dict", "default": {}},
            "images": {"type": "list", "elements": "dict", "required": True, "options": IMAGE_SPEC},
            "signer_cert": {"type": "path", "required": True},
            "signer_key": {"type": "path", "required": True, "no_log": False},
            "signer_key_passphrase": {"type": "str", "no_log": True},
            "signature": {"type": "str", "choices": ["detached", "opaque"], "default": "detached"},
            "allow_file_uri": {"type": "bool", "default": False},
            "mode": {"type": "raw", "default": "0644"},
        },
        supports_check_mode=True,
    )
    p = module.params
    mode = p["mode"]
    try:
        mode = int(mode, 8) if isinstance(mode, str) else int(mode)
    except ValueError:
        module.fail_json(msg=f"mode: {p['mode']!r} is not an octal file mode such as '0644'")
    try:
        result = publish(
            path=p["path"],
            identifier=p["identifier"],
            images=p["images"],
            signer_cert=p["signer_cert"],
            signer_key=p["signer_key"],
            signer_key_passphrase=p["signer_key_passphrase"],
            title=p["title"],
            description=p["description"],
            uri=p["uri"],
            source=p["source"],
            version=p["version"],
            expires_in=p["expires_in"],
            renew_before=p["renew_before"],
            creator=p["creator"],
            email=p["email"],
            extra=p["extra"],
            signature=p["signature"],
            allow_file_uri=p["allow_file_uri"],
            mode=mode,
            check_mode=module.check_mode,
        )
    except ImageListError as exc:
        module.fail_from(exc, reason=exc.reason, field=exc.option)
        return
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
