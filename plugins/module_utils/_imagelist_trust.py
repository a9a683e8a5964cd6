# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the trusted CA directory of an image subscription — CAs and CRLs.

``ca_dir`` is laid out as ``/etc/grid-security/certificates`` is: CA certificates as hashed
``<hash>.0`` files (or plain ``.pem``/``.crt``/``.cer`` files) and the CRLs that fetch-crl
writes next to them as ``<hash>.r0`` (also read: ``*.crl``, ``*.crl.pem``). The CAs go to
``openssl smime -verify`` as its only trust anchors. The CRLs are checked here, with the
``cryptography`` library, for every certificate of the signer's chain (the signer first):

- a certificate listed on a CRL of its CA, signed by that CA, is ``revoked`` under every
  policy but ``ignore`` (a CRL past its nextUpdate still proves a revocation);
- policy ``require``: a CA of the chain without a CRL is ``crl_missing``, one whose CRLs are
  all past nextUpdate is ``crl_expired``;
- policy ``use`` (the default): the same two conditions are warnings;
- policy ``ignore``: CRLs are not read.

A CRL counts only when its issuer is the CA and its signature verifies with the CA's key; any
other file is ignored (and named in the message when no CRL is left).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_dn import name_to_slash
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import ImageListError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time

CRL_POLICIES = ("require", "use", "ignore")
DEFAULT_CRL_POLICY = "use"

_HASHED_CERT = re.compile(r"^([0-9a-f]{8})\.[0-9]+$")
_HASHED_CRL = re.compile(r"^([0-9a-f]{8})\.r[0-9]+$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_MAX_CHAIN = 8

Warn = Callable[[str], None]


def _is_cert_file(name: str) -> bool:
    return bool(_HASHED_CERT.match(name)) or name.lower().endswith((".pem", ".crt", ".cer"))


def _is_crl_file(name: str) -> bool:
    return bool(_HASHED_CRL.match(name)) or name.lower().endswith((".crl", ".crl.pem"))


def _x509() -> Any:
    try:
        from cryptography import x509
    except ImportError:
        raise ImageListError(
            "verifying image lists needs the Python 'cryptography' package on this host (it reads the signer "
            "certificate and the CRLs); install python3-cryptography or 'pip install cryptography'",
            "missing_library",
        ) from None
    return x509


def _utc(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


@dataclass
class TrustStore:
    """The CA certificates of ``ca_dir`` (``bundle`` for openssl, ``cas`` parsed) and its CRLs."""

    ca_dir: str
    bundle: bytes
    cas: List[Any]
    unparsed: int = 0
    stems: Dict[Any, Set[str]] = field(default_factory=dict)  # CA certificate -> hash stems of its files
    _crls: Dict[str, Any] = field(default_factory=dict)  # file name -> CRL, or an error text

    def ca_count(self) -> int:
        """How many distinct CAs (by subject; a CA's old and new certificate count once)."""
        return len({ca.subject for ca in self.cas}) + self.unparsed

    def issuer_of(self, cert: Any) -> Optional[Any]:
        """The CA of ``ca_dir`` whose key signed ``cert``, or None."""
        for ca in self.cas:
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: not this CA
                continue
            return ca
        return None

    def crls_for(self, ca: Any) -> Tuple[List[Tuple[str, Any]], List[str]]:
        """(the CRLs issued and signed by ``ca`` as (file, CRL), the other CRL files considered)."""
        names = sorted(n for n in os.listdir(self.ca_dir) if _is_crl_file(n))
        stems = self.stems.get(ca, set())
        by_stem = [n for n in names if n.split(".", 1)[0] in stems]
        good, other = self._matching(ca, by_stem)
        if not good:  # not under the CA's hash name: look at every CRL file of the directory
            good, other = self._matching(ca, names)
        return good, other

    def _matching(self, ca: Any, names: List[str]) -> Tuple[List[Tuple[str, Any]], List[str]]:
        good: List[Tuple[str, Any]] = []
        other: List[str] = []
        for name in names:
            crl = self._load_crl(name)
            if isinstance(crl, str):
                other.append(f"{name}: {crl}")
            elif crl.issuer == ca.subject:
                if crl.is_signature_valid(ca.public_key()):
                    good.append((name, crl))
                else:
                    other.append(f"{name}: names this CA as issuer but its signature does not verify")
        return good, other

    def _load_crl(self, name: str) -> Any:
        if name not in self._crls:
            x509 = _x509()
            try:
                with open(os.path.join(self.ca_dir, name), "rb") as fh:
                    data = fh.read()
                if b"-----BEGIN" in data:
                    self._crls[name] = x509.load_pem_x509_crl(data)
                else:
                    self._crls[name] = x509.load_der_x509_crl(data)
            except (OSError, ValueError) as exc:
                self._crls[name] = f"not a readable CRL ({exc})"
        return self._crls[name]


def load_trust_store(ca_dir: str) -> TrustStore:
    """All CA certificates of a directory (hashed ``xxxxxxxx.0`` links or plain PEM files)."""
    if not os.path.isdir(ca_dir):
        raise ImageListError(
            f"ca_dir: {ca_dir!r} is not a directory; give the directory of trusted CA certificates "
            "(such as /etc/grid-security/certificates)",
            "bad_ca_dir",
            "ca_dir",
        )
    x509 = _x509()
    store = TrustStore(ca_dir=ca_dir, bundle=b"", cas=[])
    index: Dict[bytes, Any] = {}
    chunks: List[bytes] = []
    for name in sorted(os.listdir(ca_dir)):
        path = os.path.join(ca_dir, name)
        if not _is_cert_file(name) or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            data = fh.read(1024 * 1024)
        stem = _HASHED_CERT.match(name)
        for m in _PEM_CERT.finditer(data):
            pem = m.group(0)
            if pem not in index:
                chunks.append(pem + b"\n")
                try:
                    index[pem] = x509.load_pem_x509_certificate(pem)
                    store.cas.append(index[pem])
                except ValueError:  # openssl may still read it; it counts as a CA of the directory
                    index[pem] = None
                    store.unparsed += 1
            if stem and index[pem] is not None:
                store.stems.setdefault(index[pem], set()).add(stem.group(1))
    if not chunks:
        raise ImageListError(
            f"ca_dir: no CA certificate (*.pem, *.crt, *.cer or hashed *.0 files) in {ca_dir!r}",
            "bad_ca_dir",
            "ca_dir",
        )
    store.bundle = b"".join(chunks)
    return store


def check_policy(policy: str) -> str:
    if policy not in CRL_POLICIES:
        raise ImageListError(f"crl: {policy!r} is not one of {', '.join(CRL_POLICIES)}", "malformed", "crl")
    return policy


def check_revocation(
    store: TrustStore,
    cert: Any,
    now: datetime.datetime,
    policy: str = DEFAULT_CRL_POLICY,
    warn: Optional[Warn] = None,
) -> None:
    """Check ``cert`` and every CA above it in ``store`` against their CAs' CRLs (see the module doc)."""
    if check_policy(policy) == "ignore":
        return
    for _depth in range(_MAX_CHAIN):
        ca = store.issuer_of(cert)
        if ca is None:
            _problem(
                policy,
                warn,
                "crl_missing",
                f"crl: the CA that issued {name_to_slash(cert.subject)} ({name_to_slash(cert.issuer)}) is not in "
                f"{store.ca_dir}, so its CRL cannot be checked; add that CA (and its CRL) to ca_dir",
            )
            return
        _check_one(store, cert, ca, now, policy, warn)
        if ca.subject == ca.issuer:  # the self-signed root: a trust anchor, no CRL above it
            return
        cert = ca


def _check_one(
    store: TrustStore, cert: Any, ca: Any, now: datetime.datetime, policy: str, warn: Optional[Warn]
) -> None:
    subject, ca_name = name_to_slash(cert.subject), name_to_slash(ca.subject)
    crls, other = store.crls_for(ca)
    for name, crl in crls:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            when = entry.revocation_date_utc if hasattr(entry, "revocation_date_utc") else _utc(entry.revocation_date)
            raise ImageListError(
                f"signature: the certificate {subject} (serial {cert.serial_number:x}) was revoked by {ca_name} "
                f"on {format_time(when) if when else 'an unknown date'} (CRL {name} in ca_dir); the list is "
                "refused: the publisher must re-sign it with a certificate that is not revoked",
                "revoked",
                "signature",
            )
    if not crls:
        ignored = f" (ignored: {'; '.join(other)})" if other else ""
        _problem(
            policy,
            warn,
            "crl_missing",
            f"crl: no CRL of {ca_name} in {store.ca_dir}{ignored}, so the revocation of {subject} is not "
            "checked; install fetch-crl (or copy the CA's CRL there as <hash>.r0) and run it regularly",
        )
        return
    dated = [(_next_update(crl), name) for name, crl in crls]
    if all(next_update is not None and next_update < now for next_update, _name in dated):
        next_update, name = max((n, f) for n, f in dated if n is not None)
        _problem(
            policy,
            warn,
            "crl_expired",
            f"crl: the CRL of {ca_name} ({name} in {store.ca_dir}) is past its nextUpdate {format_time(next_update)} "
            f"(now {format_time(now)}), so a recent revocation of {subject} would be missed; run fetch-crl "
            "(is its cron job or timer running?)",
        )


def _next_update(crl: Any) -> Optional[datetime.datetime]:
    """The CRL's nextUpdate as aware UTC (cryptography < 42 has only the naive attribute)."""
    return crl.next_update_utc if hasattr(crl, "next_update_utc") else _utc(crl.next_update)


def _problem(policy: str, warn: Optional[Warn], reason: str, message: str) -> None:
    """An error under ``require``, a warning under ``use``."""
    if policy == "require":
        raise ImageListError(message + " (O(crl=require))", reason, "crl")
    if warn is not None:
        warn(message + " (O(crl=use): the list was accepted; set O(crl=require) to refuse it)")
