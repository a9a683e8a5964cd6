# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: HEPiX image lists — build, sign, parse and verify like vmcatcher.

An image list is a JSON document ``{"hv:imagelist": {...}}`` signed as S/MIME (PKCS#7) by the
endorser's X.509 certificate. Signing uses ``cryptography``'s ``PKCS7SignatureBuilder``;
verification uses the ``openssl smime -verify`` tool (``cryptography`` offers no PKCS#7
verification). No cryptography is written here by hand.

Every refusal raises :class:`ImageListError` with a machine-readable ``reason`` and a message
that names the field and what to do. Verification checks, in order (see docs/images-trust.md):
size → signature and signer chain against the trusted CAs (at ``now``) → JSON → schema and
hostile content → endorser DN/CA equal to the signer → list identifier → created not in the
future → not expired → version not rolled back.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_CLOCK_SKEW = 300  # seconds
DEFAULT_TIMEOUT = 30
CHUNK = 1024 * 1024

URI_SCHEMES = ("https", "http", "magnet")

REASONS = (
    "bad_signature",
    "untrusted_ca",
    "signer_expired",
    "endorser_mismatch",
    "expired",
    "created_in_future",
    "version_rollback",
    "version_incomparable",
    "identifier_mismatch",
    "malformed",
    "too_large",
    "hostile_identifier",
    "forbidden_uri",
    "fetch_failed",
    "bad_ca_dir",
    "openssl_missing",
    "missing_library",
    "signing_failed",
)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA512 = re.compile(r"^[0-9a-fA-F]{128}$")
_DOTTED = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class ImageListError(Exception):
    """An image list refused or not buildable; ``reason`` is machine-readable, the message
    names the field and what to do."""

    def __init__(self, message: str, reason: str = "malformed", field_name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.field_name = field_name


# --------------------------------------------------------------------------- time


def format_time(value: datetime.datetime) -> str:
    """UTC ISO-8601 with ``Z`` and whole seconds, as real image lists carry."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, field_name: str) -> datetime.datetime:
    """Parse an ISO-8601 time (``Z``, an offset, or naive = UTC)."""
    text = value.strip() if isinstance(value, str) else ""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ImageListError(
            f"{field_name}: {value!r} is not an ISO-8601 UTC time such as 2026-11-21T06:00:00Z; "
            "the publisher must re-sign the list with a valid date",
            "malformed",
            field_name,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# --------------------------------------------------------------------------- versions


def version_key(version: str) -> Optional[Tuple[int, ...]]:
    """Dotted numeric versions as a comparable tuple (trailing zeros ignored), else None."""
    if not _DOTTED.match(version or ""):
        return None
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def compare_versions(new: str, old: str) -> int:
    """-1, 0 or 1 as ``new`` is lower, equal or higher than ``old``; refuses non-numeric ones."""
    if new == old:
        return 0
    knew, kold = version_key(new), version_key(old)
    if knew is None or kold is None:
        raise ImageListError(
            f"hv:version: cannot compare {new!r} with the accepted {old!r}: only dotted numeric versions "
            "(such as 3.1.2 or 20261121) can be ordered; ask the publisher to use numeric versions, "
            "or remove the accepted list from the image cache to start over",
            "version_incomparable",
            "hv:version",
        )
    return (knew > kold) - (knew < kold)


def bump_version(version: str) -> str:
    """The next version: the last numeric component plus one."""
    if not _DOTTED.match(version or ""):
        raise ImageListError(
            f"hv:version: cannot bump {version!r}, it is not dotted numeric; set O(version) explicitly",
            "version_incomparable",
            "hv:version",
        )
    parts = version.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


# --------------------------------------------------------------------------- distinguished names

_ATTR_ALIASES = {
    "C": "C",
    "COUNTRYNAME": "C",
    "ST": "ST",
    "S": "ST",
    "STATEORPROVINCENAME": "ST",
    "L": "L",
    "LOCALITYNAME": "L",
    "O": "O",
    "ORGANIZATIONNAME": "O",
    "OU": "OU",
    "ORGANIZATIONALUNITNAME": "OU",
    "CN": "CN",
    "COMMONNAME": "CN",
    "DC": "DC",
    "DOMAINCOMPONENT": "DC",
    "UID": "UID",
    "USERID": "UID",
    "EMAILADDRESS": "EMAILADDRESS",
    "EMAIL": "EMAILADDRESS",
    "E": "EMAILADDRESS",
    "SERIALNUMBER": "SERIALNUMBER",
    "STREET": "STREET",
    "TITLE": "TITLE",
    "GN": "GN",
    "GIVENNAME": "GN",
    "SN": "SN",
    "SURNAME": "SN",
}
_OID_NAMES = {
    "2.5.4.6": "C",
    "2.5.4.8": "ST",
    "2.5.4.7": "L",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.3": "CN",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "1.2.840.113549.1.9.1": "EMAILADDRESS",
    "2.5.4.5": "SERIALNUMBER",
    "2.5.4.9": "STREET",
    "2.5.4.12": "TITLE",
    "2.5.4.42": "GN",
    "2.5.4.4": "SN",
}
_SLASH_NAMES = {"EMAILADDRESS": "emailAddress", "SERIALNUMBER": "serialNumber", "STREET": "street", "TITLE": "title"}

DN = Tuple[Tuple[str, str], ...]


def _attr(name: str) -> str:
    key = name.strip().upper()
    return _ATTR_ALIASES.get(key, key)


def _norm_value(value: str) -> str:
    return " ".join(value.split()).casefold()


def _split_unescaped(text: str, sep: str) -> List[str]:
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _unescape_rfc4514(value: str) -> str:
    value = value.strip()
    if len(value) > 1 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]

    def repl(m: re.Match) -> str:
        s = m.group(1)
        return chr(int(s, 16)) if len(s) == 2 else s

    return re.sub(r"\\([0-9A-Fa-f]{2}|.)", repl, value)


def parse_dn(text: str, field_name: str = "DN") -> DN:
    """A DN in RFC 4514 (``CN=x,O=y,C=DE``) or OpenSSL slash form (``/C=DE/O=y/CN=x``) as one
    comparable form: most significant RDN first, attribute names canonical, values casefolded."""
    if not isinstance(text, str) or not text.strip():
        raise ImageListError(f"{field_name}: an empty distinguished name", "malformed", field_name)
    text = text.strip()
    pairs: List[Tuple[str, str]] = []
    if text.startswith("/"):
        # "/C=DE/O=GermanGrid/CN=host/vm.example.org": a "/" not followed by NAME= belongs to the value
        for part in re.split(r"/(?=[A-Za-z][A-Za-z0-9.-]*=)", text[1:]):
            if "=" not in part:
                raise ImageListError(f"{field_name}: cannot read {text!r} as a DN", "malformed", field_name)
            for ava in _split_unescaped(part, "+") if "+" in part else [part]:
                name, _sep, value = ava.partition("=")
                pairs.append((_attr(name), _norm_value(value.replace("\\/", "/"))))
    else:
        rdns = [r for r in _split_unescaped(text, ",") if r.strip()]
        for rdn in reversed(rdns):
            for ava in _split_unescaped(rdn, "+"):
                name, sep, value = ava.partition("=")
                if not sep or not name.strip():
                    raise ImageListError(f"{field_name}: cannot read {text!r} as a DN", "malformed", field_name)
                pairs.append((_attr(name), _norm_value(_unescape_rfc4514(value))))
    return tuple(pairs)


def name_to_dn(name: Any) -> DN:
    """A ``cryptography.x509.Name`` in the same comparable form as :func:`parse_dn`."""
    pairs = []
    for rdn in name.rdns:
        for attr in rdn:
            oid = attr.oid.dotted_string
            pairs.append((_OID_NAMES.get(oid, oid), _norm_value(str(attr.value))))
    return tuple(pairs)


def name_to_slash(name: Any) -> str:
    """OpenSSL's slash form, as real image lists carry it in ``hv:dn`` / ``hv:ca``."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _OID_NAMES.get(attr.oid.dotted_string, attr.oid.dotted_string)
            parts.append("/{}={}".format(_SLASH_NAMES.get(key, key), str(attr.value).replace("/", "\\/")))
    return "".join(parts)


# --------------------------------------------------------------------------- the data model

_IMAGE_KNOWN = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "hv:version",
    "hv:uri",
    "hv:size",
    "sl:checksum:sha512",
    "hv:format",
)
_LIST_KNOWN = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "hv:version",
    "dc:date:created",
    "dc:date:expires",
    "hv:endorser",
    "hv:uri",
    "dc:source",
    "hv:images",
)


@dataclass
class Image:
    identifier: str
    uri: str
    size: int
    sha512: str
    version: str = ""
    title: str = ""
    description: str = ""
    format: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_obj(self) -> Dict[str, Any]:
        body: Dict[str, Any] = dict(self.extra)
        body.update(
            {
                "dc:identifier": self.identifier,
                "dc:title": self.title,
                "dc:description": self.description,
                "hv:version": self.version,
                "hv:uri": self.uri,
                "hv:size": self.size,
                "sl:checksum:sha512": self.sha512.lower(),
                "hv:format": self.format,
            }
        )
        return {"hv:image": body}

    def to_cache(self, expires: Optional[datetime.datetime] = None) -> Dict[str, Any]:
        """The image as the image cache records it."""
        return {
            "identifier": self.identifier,
            "version": self.version,
            "uri": self.uri,
            "size": self.size,
            "sha512": self.sha512.lower(),
            "format": self.format,
            "expires": format_time(expires) if expires else None,
        }


@dataclass
class Endorser:
    dn: str
    ca: str
    creator: str = ""
    email: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_obj(self) -> Dict[str, Any]:
        body: Dict[str, Any] = dict(self.extra)
        body.update({"hv:dn": self.dn, "hv:ca": self.ca, "dc:creator": self.creator, "hv:email": self.email})
        return {"hv:x509": body}


@dataclass
class ImageList:
    identifier: str
    version: str
    created: datetime.datetime
    expires: datetime.datetime
    endorser: Endorser
    images: List[Image] = field(default_factory=list)
    title: str = ""
    description: str = ""
    uri: str = ""
    source: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    endorser_extra: Dict[str, Any] = field(default_factory=dict)  # siblings of hv:x509

    def to_obj(self) -> Dict[str, Any]:
        body: Dict[str, Any] = dict(self.extra)
        endorser = dict(self.endorser_extra)
        endorser.update(self.endorser.to_obj())
        body.update(
            {
                "dc:identifier": self.identifier,
                "dc:title": self.title,
                "dc:description": self.description,
                "hv:version": self.version,
                "dc:date:created": format_time(self.created),
                "dc:date:expires": format_time(self.expires),
                "hv:endorser": endorser,
                "hv:uri": self.uri,
                "dc:source": self.source,
                "hv:images": [i.to_obj() for i in self.images],
            }
        )
        return {"hv:imagelist": body}

    def to_json(self) -> str:
        return json.dumps(self.to_obj(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def content(self) -> Dict[str, Any]:
        """What the publisher endorses: everything but the version and the two dates.

        Two lists with equal content need no new signature (idempotence compares this, never
        the signature bytes)."""
        body = dict(self.to_obj()["hv:imagelist"])
        for key in ("hv:version", "dc:date:created", "dc:date:expires"):
            body.pop(key, None)
        return body

    def image(self, identifier: str) -> Optional[Image]:
        for img in self.images:
            if img.identifier == identifier:
                return img
        return None


# --------------------------------------------------------------------------- validation


def check_identifier(value: Any, field_name: str) -> str:
    """An identifier that becomes a file name on hypervisors: no ``/``, no ``..``, no NUL."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ImageListError(
            f"{field_name}: {value!r} is not safe; it becomes part of a file name on hypervisors, so it must "
            "be 1-128 characters of letters, digits, '.', '_', '+' or '-', start with a letter or digit, "
            "and contain no '/', '..' or NUL (a UUID is the usual choice); the publisher must fix the list",
            "hostile_identifier",
            field_name,
        )
    return value


def check_uri(value: Any, field_name: str, allow_file: bool = False) -> str:
    """``https``/``http``/``magnet`` (BitTorrent) URIs; ``file`` only when allowed."""
    if not isinstance(value, str) or not value or "\x00" in value or any(c in value for c in "\r\n"):
        raise ImageListError(f"{field_name}: {value!r} is not a URI", "forbidden_uri", field_name)
    m = _SCHEME.match(value)
    scheme = m.group(1).lower() if m else ""
    allowed = URI_SCHEMES + (("file",) if allow_file else ())
    if scheme not in allowed:
        hint = (
            " (set O(allow_file_uri=true) to accept file: URIs from a trusted local list)" if scheme == "file" else ""
        )
        raise ImageListError(
            f"{field_name}: the URI scheme {scheme or '(none)'!r} of {value!r} is not allowed; "
            f"allowed: {', '.join(allowed)}{hint}",
            "forbidden_uri",
            field_name,
        )
    if scheme == "file" and ".." in value.split("?")[0].split("/"):
        raise ImageListError(f"{field_name}: {value!r} contains a '..' path component", "forbidden_uri", field_name)
    return value


def _str(obj: Dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or (required and not value):
        raise ImageListError(
            f"{where}{key}: {'missing' if key not in obj else 'must be a non-empty string'}; "
            "the publisher must fix the list",
            "malformed",
            where + key,
        )
    return value


def image_from_obj(obj: Any, index: int, allow_file_uri: bool = False) -> Image:
    where = f"hv:images[{index}].hv:image."
    if not isinstance(obj, dict) or not isinstance(obj.get("hv:image"), dict):
        raise ImageListError(
            f"hv:images[{index}]: must be an object {{'hv:image': {{...}}}}", "malformed", f"hv:images[{index}]"
        )
    body = obj["hv:image"]
    identifier = check_identifier(body.get("dc:identifier"), where + "dc:identifier")
    uri = check_uri(_str(body, "hv:uri", where), where + "hv:uri", allow_file_uri)
    sha512 = body.get("sl:checksum:sha512")
    if not isinstance(sha512, str) or not _SHA512.match(sha512):
        raise ImageListError(
            f"{where}sl:checksum:sha512: must be 128 hexadecimal characters, got {sha512!r}",
            "malformed",
            where + "sl:checksum:sha512",
        )
    size = body.get("hv:size")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ImageListError(
            f"{where}hv:size: must be a positive integer (bytes), got {size!r}", "malformed", where + "hv:size"
        )
    version = body.get("hv:version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    # the image version is part of the staged file's name on hypervisors, as the identifier is
    check_identifier(version, where + "hv:version")
    return Image(
        identifier=identifier,
        uri=uri,
        size=size,
        sha512=sha512.lower(),
        version=version,
        title=_str(body, "dc:title", where, required=False),
        description=_str(body, "dc:description", where, required=False),
        format=_str(body, "hv:format", where, required=False),
        extra={k: v for k, v in body.items() if k not in _IMAGE_KNOWN},
    )


def from_obj(obj: Any, allow_file_uri: bool = False) -> ImageList:
    """An :class:`ImageList` from parsed JSON; unknown fields (``ad:*`` ...) are kept verbatim."""
    if not isinstance(obj, dict) or not isinstance(obj.get("hv:imagelist"), dict):
        raise ImageListError(
            "hv:imagelist: the document is not a HEPiX image list (no top-level 'hv:imagelist' object)",
            "malformed",
            "hv:imagelist",
        )
    body = obj["hv:imagelist"]
    where = "hv:imagelist."
    identifier = check_identifier(body.get("dc:identifier"), where + "dc:identifier")
    version = body.get("hv:version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise ImageListError(f"{where}hv:version: missing or not a string", "malformed", where + "hv:version")
    created = parse_time(body.get("dc:date:created"), where + "dc:date:created")
    expires = parse_time(body.get("dc:date:expires"), where + "dc:date:expires")
    endorser_obj = body.get("hv:endorser")
    if not isinstance(endorser_obj, dict) or not isinstance(endorser_obj.get("hv:x509"), dict):
        raise ImageListError(
            f"{where}hv:endorser.hv:x509: missing; a list must name its endorser's certificate",
            "malformed",
            where + "hv:endorser",
        )
    x509_obj = endorser_obj["hv:x509"]
    ewhere = where + "hv:endorser.hv:x509."
    endorser = Endorser(
        dn=_str(x509_obj, "hv:dn", ewhere),
        ca=_str(x509_obj, "hv:ca", ewhere),
        creator=_str(x509_obj, "dc:creator", ewhere, required=False),
        email=_str(x509_obj, "hv:email", ewhere, required=False),
        extra={k: v for k, v in x509_obj.items() if k not in ("hv:dn", "hv:ca", "dc:creator", "hv:email")},
    )
    images_obj = body.get("hv:images", [])
    if not isinstance(images_obj, list):
        raise ImageListError(f"{where}hv:images: must be a list", "malformed", where + "hv:images")
    images = [image_from_obj(o, i, allow_file_uri) for i, o in enumerate(images_obj)]
    seen = set()
    for img in images:
        if img.identifier in seen:
            raise ImageListError(
                f"{where}hv:images: the image identifier {img.identifier!r} appears twice", "malformed", "hv:images"
            )
        seen.add(img.identifier)
    uri = body.get("hv:uri") or ""
    if uri:
        check_uri(uri, where + "hv:uri", allow_file=True)
    return ImageList(
        identifier=identifier,
        version=version,
        created=created,
        expires=expires,
        endorser=endorser,
        images=images,
        title=_str(body, "dc:title", where, required=False),
        description=_str(body, "dc:description", where, required=False),
        uri=uri,
        source=_str(body, "dc:source", where, required=False),
        extra={k: v for k, v in body.items() if k not in _LIST_KNOWN},
        endorser_extra={k: v for k, v in endorser_obj.items() if k != "hv:x509"},
    )


def check_size(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    if len(data) > max_bytes:
        raise ImageListError(
            f"the image list is {len(data)} bytes, more than the limit of {max_bytes} bytes (O(max_size)); "
            "refused before parsing — check the URL, or raise the limit if the list is really that big",
            "too_large",
            "max_size",
        )


def parse_json(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, allow_file_uri: bool = False) -> ImageList:
    """Parse the (already verified) JSON body of a list."""
    check_size(data, max_bytes)
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ImageListError(
            f"the image list is not UTF-8 text (byte {exc.start}); the publisher must fix it", "malformed"
        ) from None
    except json.JSONDecodeError as exc:
        raise ImageListError(
            f"the image list is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos}); "
            "the publisher must fix and re-sign it",
            "malformed",
        ) from None
    return from_obj(obj, allow_file_uri)


# --------------------------------------------------------------------------- signing


def sign(
    body: bytes, cert_pem: bytes, key_pem: bytes, passphrase: Optional[str] = None, detached: bool = True
) -> bytes:
    """Sign ``body`` as S/MIME with the endorser's certificate and key (cryptography)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7
    except ImportError as exc:  # pragma: no cover - requirements.txt has it
        raise ImageListError(
            "signing needs the Python 'cryptography' package on the publisher; install it", "signing_failed"
        ) from exc
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
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ImageListError(
            "signer_key: the key does not belong to signer_cert; give the key of that certificate",
            "signing_failed",
            "signer_key",
        )
    builder = pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- verification


@dataclass
class Signed:
    """The verified body of a signed list and its signer."""

    body: bytes
    signer_subject: DN
    signer_issuer: DN
    signer_subject_text: str
    signer_issuer_text: str


def _openssl() -> str:
    path = shutil.which("openssl")
    if not path:
        raise ImageListError(
            "the 'openssl' command is needed to verify image lists and was not found on PATH; install openssl",
            "openssl_missing",
        )
    return path


def _is_cert_file(name: str) -> bool:
    if re.match(r"^[0-9a-f]{8}\.[0-9]+$", name):
        return True
    return name.lower().endswith((".pem", ".crt", ".cer"))


def ca_bundle(ca_dir: str) -> bytes:
    """All CA certificates of a directory (hashed ``xxxxxxxx.0`` links or plain PEM files)."""
    if not os.path.isdir(ca_dir):
        raise ImageListError(
            f"ca_dir: {ca_dir!r} is not a directory; give the directory of trusted CA certificates "
            "(such as /etc/grid-security/certificates)",
            "bad_ca_dir",
            "ca_dir",
        )
    seen = set()
    chunks: List[bytes] = []
    for name in sorted(os.listdir(ca_dir)):
        path = os.path.join(ca_dir, name)
        if not _is_cert_file(name) or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            data = fh.read(1024 * 1024)
        for m in re.finditer(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S):
            pem = m.group(0)
            if pem not in seen:
                seen.add(pem)
                chunks.append(pem + b"\n")
    if not chunks:
        raise ImageListError(
            f"ca_dir: no CA certificate (*.pem, *.crt, *.cer or hashed *.0 files) in {ca_dir!r}",
            "bad_ca_dir",
            "ca_dir",
        )
    return b"".join(chunks)


def _classify(stderr: str) -> Tuple[str, str]:
    low = stderr.lower()
    if "certificate has expired" in low or "certificate is not yet valid" in low:
        return "signer_expired", "the signer's certificate (or its CA) is not valid at this time"
    if (
        "unable to get local issuer" in low
        or "self-signed certificate" in low
        or "self signed certificate" in low
        or "unable to get issuer" in low
        or "unable to verify the first certificate" in low
    ):
        return "untrusted_ca", "the signer's certificate is not issued by a CA in ca_dir"
    if "certificate verify error" in low:
        return "untrusted_ca", "the signer's certificate chain does not verify against ca_dir"
    if "digest failure" in low or "signature failure" in low or "content verify error" in low:
        return "bad_signature", "the signature does not match the content (the list was altered after signing)"
    if "no content type" in low or "error reading s/mime" in low or "invalid mime" in low or "no multipart" in low:
        return "bad_signature", "the file is not an S/MIME signed message (an unsigned or damaged list)"
    return "bad_signature", "the signature could not be verified"


def verify_signature(
    data: bytes,
    ca_dir: str,
    now: Optional[datetime.datetime] = None,
    run: Optional[Callable[..., Any]] = None,
) -> Signed:
    """Verify an S/MIME (detached or opaque) signature with ``openssl smime -verify`` against
    the CAs in ``ca_dir`` only (never the system trust store), with the chain checked at ``now``."""
    try:
        from cryptography import x509
    except ImportError:
        raise ImageListError(
            "verifying image lists needs the Python 'cryptography' package on this host (it reads the signer "
            "certificate); install python3-cryptography or 'pip install cryptography'",
            "missing_library",
        ) from None

    now = now or utcnow()
    openssl = _openssl()
    bundle = ca_bundle(ca_dir)
    run = run or subprocess.run
    tmp = tempfile.mkdtemp(prefix="bvt-imagelist-")
    try:
        paths = {n: os.path.join(tmp, n) for n in ("in.smime", "ca.pem", "out", "signer.pem")}
        with open(paths["in.smime"], "wb") as fh:
            fh.write(data)
        with open(paths["ca.pem"], "wb") as fh:
            fh.write(bundle)
        cmd = [openssl, "smime", "-verify", "-in", paths["in.smime"], "-CAfile", paths["ca.pem"], "-no-CApath"]
        if _has_castore(openssl, run):
            cmd.append("-no-CAstore")
        cmd += [
            "-purpose",
            "any",
            "-attime",
            str(int(now.timestamp())),
            "-out",
            paths["out"],
            "-signer",
            paths["signer.pem"],
        ]
        proc = run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason, what = _classify(proc.stderr)
            detail = " ".join(line.split(":")[-1].strip() for line in proc.stderr.splitlines() if line.strip())
            raise ImageListError(
                f"signature: {what} ({detail.strip() or 'openssl exit ' + str(proc.returncode)}); "
                + {
                    "signer_expired": "the publisher must re-sign with a valid certificate",
                    "untrusted_ca": "add the endorser's CA to ca_dir if you trust it, or subscribe to a list you trust",
                    "bad_signature": "fetch the list again from its publisher; do not use this copy",
                }[reason],
                reason,
                "signature",
            )
        with open(paths["out"], "rb") as fh:
            body = fh.read()
        with open(paths["signer.pem"], "rb") as fh:
            signer_pem = fh.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    certs = x509.load_pem_x509_certificates(signer_pem)
    if not certs:
        raise ImageListError("signature: the signature carries no signer certificate", "bad_signature", "signature")
    cert = certs[0]
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ImageListError(
            f"signature: the signer certificate {name_to_slash(cert.subject)} is valid only from "
            f"{format_time(cert.not_valid_before_utc)} to {format_time(cert.not_valid_after_utc)}; "
            "the publisher must re-sign with a valid certificate",
            "signer_expired",
            "signature",
        )
    return Signed(
        body=_strip_text_header(body),
        signer_subject=name_to_dn(cert.subject),
        signer_issuer=name_to_dn(cert.issuer),
        signer_subject_text=name_to_slash(cert.subject),
        signer_issuer_text=name_to_slash(cert.issuer),
    )


def _strip_text_header(body: bytes) -> bytes:
    """Content signed with ``openssl smime -sign -text`` carries a ``Content-Type: text/plain``
    MIME header before the JSON; drop it."""
    if body[:13].lower() == b"content-type:":
        for sep in (b"\r\n\r\n", b"\n\n"):
            head, found, rest = body.partition(sep)
            if found and b"{" not in head:
                return rest
    return body


_CASTORE: Dict[str, bool] = {}


def _has_castore(openssl: str, run: Callable[..., Any]) -> bool:
    """OpenSSL 3 has a default CA store besides file and dir; 1.1 has no -no-CAstore option."""
    if openssl not in _CASTORE:
        proc = run([openssl, "version"], capture_output=True, text=True, check=False)
        _CASTORE[openssl] = not proc.stdout.startswith(("OpenSSL 0", "OpenSSL 1", "LibreSSL"))
    return _CASTORE[openssl]


def extract_unverified(data: bytes) -> bytes:
    """The body of a signed list without checking trust (the publisher reading its own file)."""
    openssl = _openssl()
    tmp = tempfile.mkdtemp(prefix="bvt-imagelist-")
    try:
        src, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(src, "wb") as fh:
            fh.write(data)
        proc = subprocess.run(
            [openssl, "smime", "-verify", "-noverify", "-in", src, "-out", out],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageListError("the existing list file is not a readable S/MIME signed list", "bad_signature", "path")
        with open(out, "rb") as fh:
            return _strip_text_header(fh.read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify(
    data: bytes,
    ca_dir: str,
    identifier: str,
    now: Optional[datetime.datetime] = None,
    accepted_version: Optional[str] = None,
    endorser_dn: Optional[str] = None,
    endorser_ca: Optional[str] = None,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_file_uri: bool = False,
) -> ImageList:
    """Verify a signed list the way vmcatcher does; returns it or raises :class:`ImageListError`."""
    now = now or utcnow()
    check_size(data, max_bytes)
    signed = verify_signature(data, ca_dir, now)
    ilist = parse_json(signed.body, max_bytes, allow_file_uri)
    where = "hv:imagelist.hv:endorser.hv:x509."
    if parse_dn(ilist.endorser.dn, where + "hv:dn") != signed.signer_subject:
        raise ImageListError(
            f"{where}hv:dn: the list names the endorser {ilist.endorser.dn!r} but was signed by "
            f"{signed.signer_subject_text!r}; the publisher must sign with the endorser's certificate",
            "endorser_mismatch",
            where + "hv:dn",
        )
    if parse_dn(ilist.endorser.ca, where + "hv:ca") != signed.signer_issuer:
        raise ImageListError(
            f"{where}hv:ca: the list names the CA {ilist.endorser.ca!r} but the signer's certificate was issued by "
            f"{signed.signer_issuer_text!r}; the publisher must fix hv:ca",
            "endorser_mismatch",
            where + "hv:ca",
        )
    if endorser_dn and parse_dn(endorser_dn, "endorser_dn") != signed.signer_subject:
        raise ImageListError(
            f"endorser_dn: the list was signed by {signed.signer_subject_text!r}, not by the expected endorser "
            f"{endorser_dn!r}; check O(endorser_dn) or the list URL",
            "endorser_mismatch",
            "endorser_dn",
        )
    if endorser_ca and parse_dn(endorser_ca, "endorser_ca") != signed.signer_issuer:
        raise ImageListError(
            f"endorser_ca: the signer's certificate was issued by {signed.signer_issuer_text!r}, not by "
            f"{endorser_ca!r}; check O(endorser_ca)",
            "endorser_mismatch",
            "endorser_ca",
        )
    if ilist.identifier != identifier:
        raise ImageListError(
            f"hv:imagelist.dc:identifier: the list is {ilist.identifier!r}, not the subscribed {identifier!r}; "
            "check O(identifier) and O(url) (a list served at the wrong URL, or substituted)",
            "identifier_mismatch",
            "hv:imagelist.dc:identifier",
        )
    skew = datetime.timedelta(seconds=clock_skew)
    if ilist.created > now + skew:
        raise ImageListError(
            f"hv:imagelist.dc:date:created: the list claims to be created at {format_time(ilist.created)}, after now "
            f"({format_time(now)}) plus the allowed clock skew of {clock_skew}s; check this host's clock (NTP) "
            "or the publisher's",
            "created_in_future",
            "hv:imagelist.dc:date:created",
        )
    if now > ilist.expires:
        raise ImageListError(
            f"hv:imagelist.dc:date:expires: the list expired at {format_time(ilist.expires)} (now {format_time(now)}); "
            "the publisher must publish a fresh list (re-run the image_list module)",
            "expired",
            "hv:imagelist.dc:date:expires",
        )
    if accepted_version is not None and compare_versions(ilist.version, accepted_version) < 0:
        raise ImageListError(
            f"hv:imagelist.hv:version: {ilist.version!r} is lower than the version {accepted_version!r} already "
            "accepted: an old list replayed (rollback); fetch the current list, and if the publisher really went "
            "back, it must publish a higher version",
            "version_rollback",
            "hv:imagelist.hv:version",
        )
    return ilist


# --------------------------------------------------------------------------- fetching and hashing


def fetch(
    url: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: int = DEFAULT_TIMEOUT,
    validate_certs: bool = True,
) -> bytes:
    """Read a list from a path, ``file://``, ``http://`` or ``https://`` URL, at most ``max_bytes``."""
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else ""
    if scheme in ("", "file"):
        path = url[len("file://") :] if scheme == "file" else url
        try:
            with open(path, "rb") as fh:
                return _read_limited(fh, max_bytes)
        except OSError as exc:
            raise ImageListError(
                f"url: cannot read {path!r}: {exc.strerror}; check O(url)", "fetch_failed", "url"
            ) from None
    if scheme not in ("http", "https"):
        raise ImageListError(
            f"url: the scheme {scheme!r} is not supported; use a path, file://, http:// or https://",
            "forbidden_uri",
            "url",
        )
    from ansible.module_utils.urls import open_url

    try:
        resp = open_url(url, timeout=timeout, validate_certs=validate_certs, follow_redirects="safe")
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise ImageListError(
                f"the image list is {length} bytes (Content-Length), more than the limit of {max_bytes} bytes "
                "(O(max_size)); refused before reading — check the URL, or raise the limit",
                "too_large",
                "max_size",
            )
        return _read_limited(resp, max_bytes, time.monotonic() + timeout)
    except ImageListError:
        raise
    except Exception as exc:  # urllib raises many types: HTTPError, URLError, socket.timeout, ...
        code = getattr(exc, "code", None)
        what = f"HTTP {code}" if code else str(getattr(exc, "reason", "") or exc)
        raise ImageListError(
            f"url: cannot fetch {url}: {what} (timeout {timeout}s); check O(url) and that the server is up",
            "fetch_failed",
            "url",
        ) from None


def _read_limited(fh: IO[bytes], max_bytes: int, deadline: Optional[float] = None) -> bytes:
    """Read at most ``max_bytes`` (+1 to notice more); a server that trickles bytes slower than
    the whole-transfer ``deadline`` (a ``time.monotonic()`` value) is given up on."""
    chunks: List[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = fh.read(min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise ImageListError(
                f"url: the transfer did not finish within the timeout ({total} bytes read); "
                "check the server, or raise O(timeout)",
                "fetch_failed",
                "url",
            )
    data = b"".join(chunks)
    check_size(data, max_bytes)
    return data


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


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".imagelist-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def images_diff(new: Sequence[Image], old: Sequence[Image]) -> Dict[str, List[str]]:
    """new / current / withdrawn identifiers between two lists (used when no cache answers)."""
    old_ids = {i.identifier: i for i in old}
    new_ids = {i.identifier: i for i in new}
    return {
        "new": [i for i in new_ids if i not in old_ids or old_ids[i].sha512 != new_ids[i].sha512],
        "current": [i for i in new_ids if i in old_ids and old_ids[i].sha512 == new_ids[i].sha512],
        "withdrawn": [i for i in old_ids if i not in new_ids],
    }


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
    obj = {
        "hv:image": dict(
            spec.get("extra") or {},
            **{
                "dc:identifier": spec.get("identifier"),
                "dc:title": spec.get("title") or spec.get("identifier") or "",
                "dc:description": spec.get("description") or "",
                "hv:version": spec.get("version"),
                "hv:uri": spec.get("uri"),
                "hv:size": size,
                "sl:checksum:sha512": sha512,
                "hv:format": spec.get("format") or "qcow2",
            },
        )
    }
    return image_from_obj(obj, index, allow_file_uri)


def read_published(path: str) -> Optional[ImageList]:
    """The list already published at ``path`` (its own signature is not trust-checked here)."""
    if not os.path.exists(path):
        return None
    return parse_json(extract_unverified(_read(path, "path")), allow_file_uri=True)


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
    try:
        old = read_published(path)
    except ImageListError as exc:
        if not version:
            raise ImageListError(
                f"path: the existing file {path!r} is not a readable signed image list ({exc.message}); "
                "set O(version) higher than the last published version, or remove the file",
                exc.reason,
                "path",
            ) from None
        old = None
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
        result.update(_summary(old))
        current_mode = os.stat(path).st_mode & 0o7777
        if current_mode != mode:
            result["changed"] = True
            if not check_mode:
                os.chmod(path, mode)
        return result
    if version:
        if old is not None and compare_versions(version, old.version) <= 0:
            raise ImageListError(
                f"version: {version!r} is not higher than the published {old.version!r}; subscribers would refuse "
                "the list as a rollback. Give a higher O(version) or omit it to bump automatically",
                "version_rollback",
                "version",
            )
        candidate.version = version
    elif old is not None:
        candidate.version = bump_version(old.version)
    result["changed"] = True
    result["reason"] = "created" if old is None else ("content changed" if not same else "renewed before expiry")
    result["diff"] = {
        "before": old.to_json() if old else "",
        "after": candidate.to_json(),
        "before_header": path,
        "after_header": path,
    }
    result.update(_summary(candidate))
    if check_mode:
        return result
    key_pem = _read(signer_key, "signer_key")
    signed = sign(
        candidate.to_json().encode("utf-8"), cert_pem, key_pem, signer_key_passphrase, signature == "detached"
    )
    write_atomic(path, signed, mode)
    return result


def _summary(ilist: ImageList) -> Dict[str, Any]:
    return {
        "identifier": ilist.identifier,
        "version": ilist.version,
        "created": format_time(ilist.created),
        "expires": format_time(ilist.expires),
        "endorser": {"dn": ilist.endorser.dn, "ca": ilist.endorser.ca},
        "images": [dict(i.to_cache(ilist.expires), title=i.title) for i in ilist.images],
    }


# --------------------------------------------------------------------------- subscribe (image_subscription)


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
    )
    images = [i.to_cache(ilist.expires) for i in ilist.images]
    if check_mode:
        before = [] if fresh_cache else [r for r in cache.endorsed(include_expired=True) if r["list_id"] == identifier]
        now_keys = {(i["identifier"], i["version"]) for i in images}
        old_keys = {(r["identifier"], r["version"]) for r in before}
        report = {
            "new": [i for i in images if (i["identifier"], i["version"]) not in old_keys],
            "current": [i for i in images if (i["identifier"], i["version"]) in old_keys],
            "withdrawn": [
                {k: v for k, v in r.items() if k != "list_id"}
                for r in before
                if (r["identifier"], r["version"]) not in now_keys
            ],
        }
    else:
        report = cache.record_list(identifier, ilist.version, images)
    changed = accepted != ilist.version or bool(report["new"]) or bool(report["withdrawn"])
    summary = _summary(ilist)
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
