"""A throw-away test PKI for the image list tests, generated with ``cryptography``.

Root CA, an endorser certificate (issued by the root), a second endorser (another DN, same CA),
an expired endorser, an untrusted CA and an endorser issued by it; everything is written to a
directory as PEM files, and ``ca_dir`` holds only the trusted root (as a hashed-style ``.0``
file and as a plain ``.pem``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist as il
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time

DAY = datetime.timedelta(days=1)


def _name(*pairs: tuple) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


@dataclass
class Party:
    cert: x509.Certificate
    key: Any
    cert_path: str
    key_path: str

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def dn(self) -> str:
        return il.name_to_slash(self.cert.subject)

    @property
    def ca(self) -> str:
        return il.name_to_slash(self.cert.issuer)


class PKI:
    def __init__(self, directory: str, now: Optional[datetime.datetime] = None) -> None:
        self.dir = directory
        self.now = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
        os.makedirs(directory, exist_ok=True)
        self.root = self._ca(
            "root",
            _name(
                (NameOID.COUNTRY_NAME, "DE"),
                (NameOID.ORGANIZATION_NAME, "GermanGrid"),
                (NameOID.COMMON_NAME, "Test Root CA"),
            ),
        )
        self.rogue = self._ca(
            "rogue",
            _name(
                (NameOID.COUNTRY_NAME, "XX"), (NameOID.ORGANIZATION_NAME, "Rogue"), (NameOID.COMMON_NAME, "Rogue CA")
            ),
        )
        person = (
            (NameOID.COUNTRY_NAME, "DE"),
            (NameOID.ORGANIZATION_NAME, "GermanGrid"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "KIT"),
        )
        self.endorser = self._leaf("endorser", _name(*person, (NameOID.COMMON_NAME, "Image Endorser")), self.root)
        self.other = self._leaf("other", _name(*person, (NameOID.COMMON_NAME, "Someone Else")), self.root)
        self.expired = self._leaf(
            "expired",
            _name(*person, (NameOID.COMMON_NAME, "Old Endorser")),
            self.root,
            not_before=self.now - 60 * DAY,
            not_after=self.now - DAY,
        )
        self.untrusted = self._leaf("untrusted", _name(*person, (NameOID.COMMON_NAME, "Image Endorser")), self.rogue)
        self.ca_dir = os.path.join(directory, "ca")
        os.makedirs(self.ca_dir, exist_ok=True)
        with open(os.path.join(self.ca_dir, "a1b2c3d4.0"), "wb") as fh:
            fh.write(self.root.cert_pem)
        with open(os.path.join(self.ca_dir, "TestRoot.pem"), "wb") as fh:
            fh.write(self.root.cert_pem)
        with open(os.path.join(self.ca_dir, "TestRoot.signing_policy"), "w") as fh:
            fh.write("not a certificate\n")

    def _write(self, stem: str, cert: x509.Certificate, key: Any) -> Party:
        cert_path = os.path.join(self.dir, stem + ".crt")
        key_path = os.path.join(self.dir, stem + ".key")
        party = Party(cert, key, cert_path, key_path)
        with open(cert_path, "wb") as fh:
            fh.write(party.cert_pem)
        with open(key_path, "wb") as fh:
            fh.write(party.key_pem)
        os.chmod(key_path, 0o600)
        return party

    def _ca(self, stem: str, name: x509.Name) -> Party:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - 365 * DAY)
            .not_valid_after(self.now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return self._write(stem, cert, key)

    def _leaf(
        self,
        stem: str,
        name: x509.Name,
        issuer: Party,
        not_before: Optional[datetime.datetime] = None,
        not_after: Optional[datetime.datetime] = None,
    ) -> Party:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self.now - 30 * DAY)
            .not_valid_after(not_after or self.now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(issuer.key, hashes.SHA256())
        )
        return self._write(stem, cert, key)

    def crl(
        self,
        issuer: Party,
        revoked: Sequence[Party] = (),
        last_update: Optional[datetime.datetime] = None,
        next_update: Optional[datetime.datetime] = None,
        signed_by: Optional[Party] = None,
    ) -> bytes:
        """A real X.509 CRL (PEM) of ``issuer`` listing ``revoked``, signed by ``issuer`` (or,
        to forge one, by ``signed_by``'s key under ``issuer``'s name)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(last_update or self.now - DAY)
            .next_update(next_update or self.now + 7 * DAY)
        )
        for party in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(party.cert.serial_number)
                .revocation_date(self.now - DAY)
                .build()
            )
        key = (signed_by or issuer).key
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def ca_dir_of(self, directory: str, cas: Sequence[Party], crls: Sequence[bytes] = ()) -> str:
        """A ``ca_dir`` laid out as /etc/grid-security/certificates: ``<hash>.0`` per CA, and the
        CRLs as ``<hash>.r0`` of the CA whose name they carry (as fetch-crl writes them)."""
        os.makedirs(directory, exist_ok=True)
        for ca in cas:
            with open(os.path.join(directory, subject_hash(ca.cert_path) + ".0"), "wb") as fh:
                fh.write(ca.cert_pem)
        for data in crls:
            issuer = x509.load_pem_x509_crl(data).issuer
            ca = next(c for c in cas if c.cert.subject == issuer)
            with open(os.path.join(directory, subject_hash(ca.cert_path) + ".r0"), "wb") as fh:
                fh.write(data)
        return directory


def subject_hash(cert_path: str) -> str:
    """OpenSSL's subject hash of a certificate, the stem of its ``<hash>.0`` and ``<hash>.r0`` files."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-hash", "-in", cert_path], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


LIST_ID = "e2c6b8a4-3f1d-4c55-9a7e-1b2c3d4e5f60"


def image_obj(
    identifier: str = "worker-el9", version: str = "1.0", data: bytes = b"image-bytes", **extra: Any
) -> Dict[str, Any]:
    body = {
        "dc:identifier": identifier,
        "dc:title": "Worker " + identifier,
        "dc:description": "a worker image",
        "hv:version": version,
        "hv:uri": f"https://images.example.org/{identifier}-{version}.qcow2",
        "hv:size": len(data),
        "sl:checksum:sha512": sha(data),
        "hv:format": "qcow2",
    }
    body.update(extra)
    return {"hv:image": body}


def list_obj(
    pki: PKI,
    signer: Optional[Party] = None,
    version: str = "3",
    identifier: str = LIST_ID,
    created: Optional[datetime.datetime] = None,
    expires: Optional[datetime.datetime] = None,
    images: Optional[List[Dict[str, Any]]] = None,
    **extra: Any,
) -> Dict[str, Any]:
    signer = signer or pki.endorser
    body = {
        "dc:identifier": identifier,
        "dc:title": "Batch farm images",
        "dc:description": "test list",
        "hv:version": version,
        "dc:date:created": format_time(created or pki.now - DAY),
        "dc:date:expires": format_time(expires or pki.now + 27 * DAY),
        "hv:endorser": {
            "hv:x509": {
                "hv:dn": signer.dn,
                "hv:ca": signer.ca,
                "dc:creator": "Image Endorser",
                "hv:email": "endorser@example.org",
            }
        },
        "hv:uri": "https://images.example.org/farm.list",
        "hv:images": images if images is not None else [image_obj()],
    }
    body.update(extra)
    return {"hv:imagelist": body}


def sign_obj(obj: Any, signer: Party, detached: bool = True) -> bytes:
    import json

    text = obj if isinstance(obj, (bytes, str)) else json.dumps(obj, indent=2)
    data = text.encode() if isinstance(text, str) else text
    return il.sign(data, signer.cert_pem, signer.key_pem, detached=detached)
