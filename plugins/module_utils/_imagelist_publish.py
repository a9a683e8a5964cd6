# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: publishing a HEPiX image list — hash the images, sign as S/MIME, write.

Signing uses ``cryptography``'s ``PKCS7SignatureBuilder`` (SHA-256, signer certificate
embedded); no cryptography is written here by hand. :func:`publish` is the engine of the
``image_list`` module: it re-signs only when the endorsed content changed or the published
list nears its expiry, bumps ``hv:version`` in the one version order of ``_version``, and
replaces the file atomically.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._files import write_atomic
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_dn import name_to_slash
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (
    CHUNK,
    Endorser,
    Image,
    ImageList,
    ImageListError,
    check_identifier,
    from_obj,
    image_from_obj,
    parse_json,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_verify import extract_unverified
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow
from ansible_collections.batchvirt.farm.plugins.module_utils._version import compare_versions

_LAST_NUMBER = re.compile(r"^(.*?)([0-9]+)$", re.S)


def hash_file(path: str) -> Tuple[int, str]:
    """(size, sha512) of a file in one chunked pass."""
    digest = hashlib.sha512()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def bump_version(version: str) -> str:
    """The next version: the last number plus one (``3.9`` → ``3.10``, ``2026-11-21`` →
    ``2026-11-22``, ``1.0rc1`` → ``1.0rc2``; leading zeros keep their width)."""
    m = _LAST_NUMBER.match(version or "")
    if not m:
        raise ImageListError(
            f"version: cannot bump {version!r}, it does not end with a number; set O(version) explicitly "
            "(higher than the published one)",
            "malformed",
            "version",
        )
    head, number = m.groups()
    # a larger last number sorts higher in the one order whatever comes before it
    return head + str(int(number) + 1).zfill(len(number))


# --------------------------------------------------------------------------- signing


def _load_signer(cert_pem: bytes, key_pem: bytes, passphrase: Optional[str]) -> Tuple[Any, Any]:
    """The certificate and its private key; refuses a key that is not the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ImageListError(
            f"signer_cert: not a PEM X.509 certificate ({exc})", "signing_failed", "signer_cert"
        ) from None
    try:
        try:
            key = serialization.load_pem_private_key(key_pem, passphrase.encode() if passphrase else None)
        except TypeError:
            if not passphrase:
                raise
            key = serialization.load_pem_private_key(key_pem, None)  # a passphrase for a clear key: ignore it
    except (ValueError, TypeError) as exc:
        raise ImageListError(
            f"signer_key: cannot load the private key ({exc}); check the file and O(signer_key_passphrase)",
            "signing_failed",
            "signer_key",
        ) from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ImageListError(
            "signer_key: the key does not belong to signer_cert; give the key of that certificate",
            "signing_failed",
            "signer_key",
        )
    return cert, key


def sign(
    body: bytes, cert_pem: bytes, key_pem: bytes, passphrase: Optional[str] = None, detached: bool = True
) -> bytes:
    """Sign ``body`` as S/MIME with the endorser's certificate and key (cryptography)."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7
    except ImportError as exc:  # pragma: no cover - requirements.txt has it
        raise ImageListError(
            "signing needs the Python 'cryptography' package on the publisher; install it", "signing_failed"
        ) from exc
    cert, key = _load_signer(cert_pem, key_pem, passphrase)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(cert, key, hashes.SHA256())
    if detached:
        return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    # Opaque S/MIME (application/pkcs7-mime): the DER signed-data, base64 in a MIME envelope.
    der = builder.sign(serialization.Encoding.DER, [])
    header = (
        "MIME-Version: 1.0\n"
        'Content-Disposition: attachment; filename="smime.p7m"\n'
        'Content-Type: application/x-pkcs7-mime; smime-type=signed-data; name="smime.p7m"\n'
        "Content-Transfer-Encoding: base64\n\n"
    )
    return header.encode() + base64.encodebytes(der)


def cert_names(cert_pem: bytes) -> Tuple[str, str]:
    """The (subject, issuer) of a PEM certificate in slash form, for ``hv:dn`` / ``hv:ca``."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ImageListError(
            f"signer_cert: not a PEM X.509 certificate ({exc})", "signing_failed", "signer_cert"
        ) from None
    return name_to_slash(cert.subject), name_to_slash(cert.issuer)


# --------------------------------------------------------------------------- publish (image_list module)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ImageListError(f"{what}: cannot read {path!r}: {exc.strerror}", "signing_failed", what) from None


def build_image(spec: Dict[str, Any], index: int, allow_file_uri: bool = False) -> Image:
    """An :class:`Image` from the module's ``images`` entry; hashes ``path`` when given."""
    where = f"images[{index}]."
    path = spec.get("path")
    size: Any
    sha512: Any
    if path:
        try:
            size, sha512 = hash_file(path)
        except OSError as exc:
            raise ImageListError(
                f"{where}path: cannot read the image file {path!r}: {exc.strerror}", "malformed", where + "path"
            ) from None
        if spec.get("sha512") and str(spec["sha512"]).lower() != sha512:
            raise ImageListError(
                f"{where}sha512: the given checksum does not match the file {path!r} (sha512 {sha512}); "
                "remove O(images[].sha512) or fix the file",
                "malformed",
                where + "sha512",
            )
    else:
        size, sha512 = spec.get("size"), spec.get("sha512")
        if not size or not sha512:
            raise ImageListError(
                f"{where}path: give the image file (O(images[].path)) or both O(images[].sha512) and O(images[].size)",
                "malformed",
                where + "path",
            )
    fields = {
        "dc:identifier": spec.get("identifier"),
        "dc:title": spec.get("title") or spec.get("identifier") or "",
        "dc:description": spec.get("description") or "",
        "hv:version": spec.get("version"),
        "hv:uri": spec.get("uri"),
        "hv:size": size,
        "sl:checksum:sha512": sha512,
        "hv:format": spec.get("format") or "qcow2",
    }
    return image_from_obj({"hv:image": dict(spec.get("extra") or {}, **fields)}, index, allow_file_uri)


def read_published(path: str) -> Optional[ImageList]:
    """The list already published at ``path`` (its own signature is not trust-checked here)."""
    if not os.path.exists(path):
        return None
    return parse_json(extract_unverified(_read(path, "path")), allow_file_uri=True)


def _read_old(path: str, version: Optional[str]) -> Optional[ImageList]:
    """The published list; an unreadable one is replaced only when ``version`` is given."""
    try:
        return read_published(path)
    except ImageListError as exc:
        if not version:
            raise ImageListError(
                f"path: the existing file {path!r} is not a readable signed image list ({exc.message}); "
                "set O(version) higher than the last published version, or remove the file",
                exc.reason,
                "path",
            ) from None
        return None


def _next_version(old: Optional[ImageList], version: Optional[str]) -> str:
    if version:
        if old is not None and compare_versions(version, old.version) <= 0:
            raise ImageListError(
                f"version: {version!r} is not higher than the published {old.version!r}; subscribers would refuse "
                "the list as a rollback. Give a higher O(version) or omit it to bump automatically",
                "version_rollback",
                "version",
            )
        return version
    return bump_version(old.version) if old is not None else "1"


def publish(
    path: str,
    identifier: str,
    images: List[Dict[str, Any]],
    signer_cert: str,
    signer_key: str,
    signer_key_passphrase: Optional[str] = None,
    title: str = "",
    description: str = "",
    uri: str = "",
    source: str = "",
    version: Optional[str] = None,
    expires_in: int = 28,
    renew_before: int = 7,
    creator: str = "",
    email: str = "",
    extra: Optional[Dict[str, Any]] = None,
    signature: str = "detached",
    allow_file_uri: bool = False,
    mode: int = 0o644,
    check_mode: bool = False,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """Create or update the signed list at ``path``; re-sign only when the content changed or the
    published list expires within ``renew_before`` days. Returns the module result."""
    now = (now or utcnow()).replace(microsecond=0)
    check_identifier(identifier, "identifier")
    if expires_in <= 0:
        raise ImageListError("expires_in: must be a positive number of days", "malformed", "expires_in")
    cert_pem = _read(signer_cert, "signer_cert")
    dn, ca = cert_names(cert_pem)
    built = [build_image(spec, i, allow_file_uri) for i, spec in enumerate(images)]
    ids = [i.identifier for i in built]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ImageListError(f"images: the identifier {dup[0]!r} appears twice", "malformed", "images")
    old = _read_old(path, version)
    candidate = ImageList(
        identifier=identifier,
        version=old.version if old else (version or "1"),
        created=now,
        expires=now + datetime.timedelta(days=expires_in),
        endorser=Endorser(dn=dn, ca=ca, creator=creator, email=email),
        images=built,
        title=title,
        description=description,
        uri=uri,
        source=source,
        extra=dict(extra or {}),
    )
    # validate the list-level extra fields and the whole document as subscribers will read it
    from_obj(candidate.to_obj(), allow_file_uri)
    same = old is not None and old.content() == candidate.content()
    renew = old is not None and old.expires - now <= datetime.timedelta(days=renew_before)
    result: Dict[str, Any] = {"changed": False, "path": path}
    if old is not None and same and not renew and (not version or version == old.version):
        result.update(old.summary())
        if os.stat(path).st_mode & 0o7777 != mode:
            result["changed"] = True
            if not check_mode:
                os.chmod(path, mode)
        return result
    candidate.version = _next_version(old, version)
    result["changed"] = True
    result["reason"] = "created" if old is None else ("content changed" if not same else "renewed before expiry")
    result["diff"] = {
        "before": old.to_json() if old else "",
        "after": candidate.to_json(),
        "before_header": path,
        "after_header": path,
    }
    result.update(candidate.summary())
    if not check_mode:
        body = candidate.to_json().encode("utf-8")
        signed = sign(body, cert_pem, _read(signer_key, "signer_key"), signer_key_passphrase, signature == "detached")
        write_atomic(path, signed, mode)
    return result
