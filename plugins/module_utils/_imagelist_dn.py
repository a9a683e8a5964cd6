# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: X.509 distinguished names as image lists carry them.

``hv:dn``/``hv:ca`` of a list and the module options ``endorser_dn``/``endorser_ca`` may be
written in RFC 4514 form (``CN=x,O=y,C=DE``) or OpenSSL's slash form (``/C=DE/O=y/CN=x``).
:func:`parse_dn` reads both into one comparable form; :func:`name_to_dn` and
:func:`name_to_slash` turn a certificate's ``cryptography`` name into it and into slash form.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import ImageListError

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
