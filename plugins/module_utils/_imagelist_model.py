# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the HEPiX image list model — data classes, fields, fail-closed parsing.

An image list is a JSON document ``{"hv:imagelist": {...}}``. This file reads one into
:class:`ImageList` (and writes it back), and owns every rule about its fields: which are
required, their types, the identifiers and formats that become file names on hypervisors, and
the URI schemes allowed. Parsing is fail-closed: a missing or wrong field is ``malformed``
(never read as a default that changes meaning, such as "no images"), an unsafe name is
``hostile_identifier``, a refused URI is ``forbidden_uri``. Signing lives in
``_imagelist_publish``, trust checks in ``_imagelist_verify``.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCacheError, validate_format
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_CLOCK_SKEW = 300  # seconds
DEFAULT_TIMEOUT = 30
CHUNK = 1024 * 1024

URI_SCHEMES = ("https", "http", "magnet")

REASONS = (
    "bad_signature",
    "untrusted_ca",
    "signer_expired",
    "revoked",
    "crl_missing",
    "crl_expired",
    "endorser_mismatch",
    "endorser_ca_required",
    "expired",
    "created_in_future",
    "version_rollback",
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
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class ImageListError(FarmError):
    """An image list refused or not buildable; ``reason`` is machine-readable, ``option`` the
    list field or module option at fault, the message names it and what to do."""

    def __init__(self, message: str, reason: str = "malformed", option: str = "") -> None:
        super().__init__(message, option)
        self.reason = reason


def list_time(value: Any, field_name: str) -> datetime.datetime:
    """A list date (``dc:date:created``/``dc:date:expires``); a bad one is ``malformed``."""

    def error(message: str, option: str) -> ImageListError:
        return ImageListError(message + "; the publisher must re-sign the list with a valid date", "malformed", option)

    return parse_time(value, field_name, error=error)


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
_X509_KNOWN = ("hv:dn", "hv:ca", "dc:creator", "hv:email")


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

    def summary(self) -> Dict[str, Any]:
        """The list as the modules return it."""
        return {
            "identifier": self.identifier,
            "version": self.version,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "endorser": {"dn": self.endorser.dn, "ca": self.endorser.ca},
            "images": [dict(i.to_cache(self.expires), title=i.title) for i in self.images],
        }


# --------------------------------------------------------------------------- field rules


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


def check_format(value: Any, field_name: str) -> str:
    """``hv:format`` (optional; the image cache defaults to qcow2): it ends the staged file's name
    on hypervisors, so the image cache's own rule applies here, while the list is verified."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ImageListError(
            f"{field_name}: must be a string such as 'qcow2', got {value!r}; the publisher must fix the list",
            "malformed",
            field_name,
        )
    try:
        validate_format(value)
    except ImageCacheError as exc:
        raise ImageListError(
            f"{field_name}: {exc}; it ends the image's file name on hypervisors, so the publisher must fix the list",
            "hostile_identifier",
            field_name,
        ) from None
    return value


def check_uri(value: Any, field_name: str, allow_file: bool = False) -> str:
    """``https``/``http``/``magnet`` (BitTorrent) URIs; ``file`` only when allowed."""
    if not isinstance(value, str) or not value or "\x00" in value or any(c in value for c in "\r\n"):
        raise ImageListError(f"{field_name}: {value!r} is not a URI", "forbidden_uri", field_name)
    m = SCHEME.match(value)
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


def _version(obj: Dict[str, Any], where: str) -> str:
    """``hv:version``: required; a JSON number is read as its text."""
    version = obj.get("hv:version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if version is None or version == "":
        raise ImageListError(
            f"{where}hv:version: missing; every list and image must carry a version, the publisher must fix the list",
            "malformed",
            where + "hv:version",
        )
    if not isinstance(version, str):
        raise ImageListError(
            f"{where}hv:version: must be a string, got {version!r}; the publisher must fix the list",
            "malformed",
            where + "hv:version",
        )
    return version


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
    # the image version is part of the staged file's name on hypervisors, as the identifier is
    version = check_identifier(_version(body, where), where + "hv:version")
    return Image(
        identifier=identifier,
        uri=uri,
        size=size,
        sha512=sha512.lower(),
        version=version,
        title=_str(body, "dc:title", where, required=False),
        description=_str(body, "dc:description", where, required=False),
        format=check_format(body.get("hv:format"), where + "hv:format"),
        extra={k: v for k, v in body.items() if k not in _IMAGE_KNOWN},
    )


def _endorser_from_obj(body: Dict[str, Any], where: str) -> Endorser:
    endorser_obj = body.get("hv:endorser")
    if not isinstance(endorser_obj, dict) or not isinstance(endorser_obj.get("hv:x509"), dict):
        raise ImageListError(
            f"{where}hv:endorser.hv:x509: missing; a list must name its endorser's certificate",
            "malformed",
            where + "hv:endorser",
        )
    x509_obj = endorser_obj["hv:x509"]
    ewhere = where + "hv:endorser.hv:x509."
    return Endorser(
        dn=_str(x509_obj, "hv:dn", ewhere),
        ca=_str(x509_obj, "hv:ca", ewhere),
        creator=_str(x509_obj, "dc:creator", ewhere, required=False),
        email=_str(x509_obj, "hv:email", ewhere, required=False),
        extra={k: v for k, v in x509_obj.items() if k not in _X509_KNOWN},
    )


def _images_from_obj(body: Dict[str, Any], where: str, allow_file_uri: bool) -> List[Image]:
    """``hv:images`` is required: a list without it is ``malformed``, never "everything withdrawn";
    only an explicit empty list withdraws every image."""
    if "hv:images" not in body:
        raise ImageListError(
            f"{where}hv:images: missing; a list that endorses nothing must say so with an empty "
            "'hv:images': [] — the publisher must fix the list (nothing was withdrawn)",
            "malformed",
            where + "hv:images",
        )
    images_obj = body["hv:images"]
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
    return images


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
    version = _version(body, where)
    created = list_time(body.get("dc:date:created"), where + "dc:date:created")
    expires = list_time(body.get("dc:date:expires"), where + "dc:date:expires")
    endorser = _endorser_from_obj(body, where)
    images = _images_from_obj(body, where, allow_file_uri)
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
        endorser_extra={k: v for k, v in body["hv:endorser"].items() if k != "hv:x509"},
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
