# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: verification of a signed HEPiX image list, the way vmcatcher does it.

``cryptography`` offers no PKCS#7 verification, so the S/MIME signature and the signer's chain
are checked by ``openssl smime -verify`` against the CAs of ``ca_dir`` only (never the system
trust store), at the injected ``now``. :func:`verify` runs every check in this order (see
docs/images-trust.md); the first failure raises :class:`ImageListError`:

size → pinning (``endorser_ca`` needed when ``ca_dir`` holds several CAs) → signature and
chain → signer valid now → CRLs of the chain (``_imagelist_trust``) → JSON → schema, hostile
content and ``hv:format`` (``_imagelist_model``) → endorser DN/CA equal to the signer →
pinned ``endorser_dn``/``endorser_ca`` → list identifier → created not in the future → not
expired → version not rolled back (the one version order of ``_version``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_dn import (
    DN,
    name_to_dn,
    name_to_slash,
    parse_dn,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_BYTES,
    ImageList,
    ImageListError,
    check_size,
    parse_json,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_trust import (
    DEFAULT_CRL_POLICY,
    TrustStore,
    Warn,
    check_policy,
    check_revocation,
    load_trust_store,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, utcnow
from ansible_collections.batchvirt.farm.plugins.module_utils._version import compare_versions


@dataclass
class Signed:
    """The verified body of a signed list and its signer."""

    body: bytes
    signer_subject: DN
    signer_issuer: DN
    signer_subject_text: str
    signer_issuer_text: str
    cert: Any = None  # the signer's cryptography certificate


def _openssl() -> str:
    path = shutil.which("openssl")
    if not path:
        raise ImageListError(
            "the 'openssl' command is needed to verify image lists and was not found on PATH; install openssl",
            "openssl_missing",
        )
    return path


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


_ADVICE = {
    "signer_expired": "the publisher must re-sign with a valid certificate",
    "untrusted_ca": "add the endorser's CA to ca_dir if you trust it, or subscribe to a list you trust",
    "bad_signature": "fetch the list again from its publisher; do not use this copy",
}

_CASTORE: Dict[str, bool] = {}


def _has_castore(openssl: str, run: Callable[..., Any]) -> bool:
    """OpenSSL 3 has a default CA store besides file and dir; 1.1 has no -no-CAstore option."""
    if openssl not in _CASTORE:
        proc = run([openssl, "version"], capture_output=True, text=True, check=False)
        _CASTORE[openssl] = not proc.stdout.startswith(("OpenSSL 0", "OpenSSL 1", "LibreSSL"))
    return _CASTORE[openssl]


def _strip_text_header(body: bytes) -> bytes:
    """Content signed with ``openssl smime -sign -text`` carries a ``Content-Type: text/plain``
    MIME header before the JSON; drop it."""
    if body[:13].lower() == b"content-type:":
        for sep in (b"\r\n\r\n", b"\n\n"):
            head, found, rest = body.partition(sep)
            if found and b"{" not in head:
                return rest
    return body


def _smime_verify(
    data: bytes, store: TrustStore, now: datetime.datetime, run: Callable[..., Any]
) -> Tuple[bytes, bytes]:
    """Run ``openssl smime -verify``; (the signed content, the signer's PEM certificate)."""
    openssl = _openssl()
    tmp = tempfile.mkdtemp(prefix="bvt-imagelist-")
    try:
        paths = {n: os.path.join(tmp, n) for n in ("in.smime", "ca.pem", "out", "signer.pem")}
        with open(paths["in.smime"], "wb") as fh:
            fh.write(data)
        with open(paths["ca.pem"], "wb") as fh:
            fh.write(store.bundle)
        cmd = [openssl, "smime", "-verify", "-in", paths["in.smime"], "-CAfile", paths["ca.pem"], "-no-CApath"]
        if _has_castore(openssl, run):
            cmd.append("-no-CAstore")
        cmd += ["-purpose", "any", "-attime", str(int(now.timestamp()))]
        cmd += ["-out", paths["out"], "-signer", paths["signer.pem"]]
        proc = run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason, what = _classify(proc.stderr)
            detail = " ".join(line.split(":")[-1].strip() for line in proc.stderr.splitlines() if line.strip())
            raise ImageListError(
                f"signature: {what} ({detail.strip() or 'openssl exit ' + str(proc.returncode)}); {_ADVICE[reason]}",
                reason,
                "signature",
            )
        with open(paths["out"], "rb") as fh:
            body = fh.read()
        with open(paths["signer.pem"], "rb") as fh:
            return body, fh.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_signature(
    data: bytes,
    store: TrustStore,
    now: Optional[datetime.datetime] = None,
    run: Optional[Callable[..., Any]] = None,
) -> Signed:
    """Verify an S/MIME (detached or opaque) signature with ``openssl smime -verify`` against
    the CAs of ``store`` only (never the system trust store), with the chain checked at ``now``."""
    from cryptography import x509  # load_trust_store has already reported a missing library

    now = now or utcnow()
    body, signer_pem = _smime_verify(data, store, now, run or subprocess.run)
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
        cert=cert,
    )


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


def check_pinning(store: TrustStore, endorser_dn: Optional[str], endorser_ca: Optional[str]) -> None:
    """``endorser_dn`` alone pins one endorser only when ``ca_dir`` holds one CA: any other CA of
    the directory could issue a certificate with the same DN. With several, ``endorser_ca`` is
    required as well (refused, not warned: unattended runs have nobody to read a warning)."""
    count = store.ca_count()
    if endorser_dn and not endorser_ca and count > 1:
        raise ImageListError(
            f"endorser_ca: ca_dir {store.ca_dir!r} holds {count} CAs, and any of them could issue a certificate "
            f"with the DN {endorser_dn!r}, so O(endorser_dn) alone does not pin one endorser; set "
            "O(endorser_ca) to the issuer of the endorser's certificate as well (the hv:ca of its list, such as "
            "'/C=DE/O=GermanGrid/CN=GridKa-CA'), or point ca_dir at a directory with only that CA",
            "endorser_ca_required",
            "endorser_ca",
        )


def _check_endorser(ilist: ImageList, signed: Signed, endorser_dn: Optional[str], endorser_ca: Optional[str]) -> None:
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


def _check_dates(ilist: ImageList, now: datetime.datetime, clock_skew: int) -> None:
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


def _check_rollback(ilist: ImageList, accepted_version: Optional[str]) -> None:
    """Every two versions compare in the one order of ``_version``, so there is no "incomparable"."""
    if accepted_version is not None and compare_versions(ilist.version, accepted_version) < 0:
        raise ImageListError(
            f"hv:imagelist.hv:version: {ilist.version!r} is lower than the version {accepted_version!r} already "
            "accepted: an old list replayed (rollback); fetch the current list, and if the publisher really went "
            "back, it must publish a higher version",
            "version_rollback",
            "hv:imagelist.hv:version",
        )


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
    crl: str = DEFAULT_CRL_POLICY,
    warn: Optional[Warn] = None,
) -> ImageList:
    """Verify a signed list (checks in the order of the module doc); returns it or raises
    :class:`ImageListError`. ``warn`` receives the warnings of ``crl="use"``."""
    now = now or utcnow()
    check_size(data, max_bytes)
    check_policy(crl)
    store = load_trust_store(ca_dir)
    check_pinning(store, endorser_dn, endorser_ca)
    signed = verify_signature(data, store, now)
    check_revocation(store, signed.cert, now, crl, warn)
    ilist = parse_json(signed.body, max_bytes, allow_file_uri)
    _check_endorser(ilist, signed, endorser_dn, endorser_ca)
    if ilist.identifier != identifier:
        raise ImageListError(
            f"hv:imagelist.dc:identifier: the list is {ilist.identifier!r}, not the subscribed {identifier!r}; "
            "check O(identifier) and O(url) (a list served at the wrong URL, or substituted)",
            "identifier_mismatch",
            "hv:imagelist.dc:identifier",
        )
    _check_dates(ilist, now, clock_skew)
    _check_rollback(ilist, accepted_version)
    return ilist
