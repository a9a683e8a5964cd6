"""Revocation (real X.509 CRLs signed by the test CA) and endorser pinning with several CAs in ca_dir."""

from __future__ import annotations

import os

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist as il
from tests.unit.plugins.modules.image_list.imagelist_pki import DAY, LIST_ID, PKI, list_obj, sign_obj, subject_hash


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def signed(pki):
    return sign_obj(list_obj(pki), pki.endorser)


def verify(pki, data, ca_dir, **kw):
    kw.setdefault("now", pki.now)
    return il.verify(data, ca_dir, LIST_ID, **kw)


def refused(pki, data, ca_dir, reason, *fragments, **kw):
    with pytest.raises(il.ImageListError) as err:
        verify(pki, data, ca_dir, **kw)
    assert err.value.reason == reason, str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)
    return err.value


# --------------------------------------------------------------------------- CRLs


def test_revoked_endorser_is_refused(pki, signed, tmp_path):
    """The default policy (use) refuses a list signed by a certificate its CA has revoked."""
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [pki.crl(pki.root, revoked=[pki.endorser])])
    err = refused(pki, signed, ca_dir, "revoked", "Image Endorser", "was revoked by", "Test Root CA", ".r0")
    assert f"{pki.endorser.cert.serial_number:x}" in str(err)
    assert err.option == "signature"
    for policy in ("use", "require"):
        refused(pki, signed, ca_dir, "revoked", crl=policy)


def test_revoked_endorser_is_refused_even_when_the_crl_is_past_next_update(pki, signed, tmp_path):
    stale = pki.crl(pki.root, revoked=[pki.endorser], last_update=pki.now - 9 * DAY, next_update=pki.now - DAY)
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [stale])
    refused(pki, signed, ca_dir, "revoked")


def test_endorser_not_on_the_crl_is_accepted_without_warning(pki, signed, tmp_path):
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [pki.crl(pki.root, revoked=[pki.other])])
    warnings = []
    assert verify(pki, signed, ca_dir, crl="require", warn=warnings.append).version == "3"
    assert warnings == []


def test_crl_past_next_update_is_an_error_under_require(pki, signed, tmp_path):
    stale = pki.crl(pki.root, last_update=pki.now - 9 * DAY, next_update=pki.now - DAY)
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [stale])
    err = refused(
        pki, signed, ca_dir, "crl_expired", "past its nextUpdate", "fetch-crl", "O(crl=require)", crl="require"
    )
    assert err.option == "crl"


def test_crl_past_next_update_is_a_warning_under_use(pki, signed, tmp_path):
    stale = pki.crl(pki.root, last_update=pki.now - 9 * DAY, next_update=pki.now - DAY)
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [stale])
    warnings = []
    assert verify(pki, signed, ca_dir, warn=warnings.append).version == "3"
    assert len(warnings) == 1
    assert "past its nextUpdate" in warnings[0] and "O(crl=use)" in warnings[0]


def test_missing_crl_is_an_error_under_require_and_a_warning_under_use(pki, signed, tmp_path):
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root])
    refused(pki, signed, ca_dir, "crl_missing", "no CRL of", "Test Root CA", "fetch-crl", crl="require")
    warnings = []
    verify(pki, signed, ca_dir, crl="use", warn=warnings.append)
    assert len(warnings) == 1 and "no CRL of" in warnings[0]
    warnings.clear()
    verify(pki, signed, ca_dir, crl="ignore", warn=warnings.append)
    assert warnings == []


def test_crl_ignore_accepts_a_revoked_endorser(pki, signed, tmp_path):
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [pki.crl(pki.root, revoked=[pki.endorser])])
    assert verify(pki, signed, ca_dir, crl="ignore").version == "3"


def test_crl_not_signed_by_its_ca_does_not_count(pki, signed, tmp_path):
    """A CRL carrying the CA's name but signed by another key neither revokes nor satisfies require."""
    forged = pki.crl(pki.root, revoked=[pki.endorser], signed_by=pki.rogue)
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [forged])
    warnings = []
    assert verify(pki, signed, ca_dir, warn=warnings.append).version == "3"
    assert "signature does not verify" in warnings[0]
    refused(pki, signed, ca_dir, "crl_missing", "signature does not verify", crl="require")


def test_crl_found_under_any_name_and_in_der(pki, signed, tmp_path):
    """Site directories that do not use hash names: the CRL files are matched by issuer and signature."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "site-ca.pem").write_bytes(pki.root.cert_pem)
    (ca_dir / "unrelated.crl.pem").write_bytes(pki.crl(pki.rogue, revoked=[pki.endorser]))
    (ca_dir / "junk.crl").write_bytes(b"not a crl")
    verify(pki, signed, str(ca_dir), warn=lambda m: None)  # the rogue CA's CRL does not apply
    der = x509.load_pem_x509_crl(pki.crl(pki.root, revoked=[pki.endorser])).public_bytes(serialization.Encoding.DER)
    (ca_dir / "site-ca.crl").write_bytes(der)
    refused(pki, signed, str(ca_dir), "revoked")


def test_unknown_crl_policy_is_refused(pki, signed):
    refused(pki, signed, pki.ca_dir, "malformed", "crl:", crl="sometimes")


# --------------------------------------------------------------------------- pinning


@pytest.fixture
def two_cas(pki, tmp_path):
    """An IGTF-like ca_dir: the endorser's CA and another trusted CA (with CRLs, so no warnings)."""
    return pki.ca_dir_of(str(tmp_path / "igtf"), [pki.root, pki.rogue], [pki.crl(pki.root), pki.crl(pki.rogue)])


def test_endorser_dn_alone_is_refused_when_ca_dir_holds_several_cas(pki, signed, two_cas):
    err = refused(
        pki, signed, two_cas, "endorser_ca_required", "holds 2 CAs", "O(endorser_ca)", endorser_dn=pki.endorser.dn
    )
    assert err.option == "endorser_ca"


def test_same_dn_from_another_trusted_ca_is_refused_when_dn_and_ca_are_pinned(pki, two_cas):
    """The attack DN-only pinning let through: a certificate with the endorser's DN from another trusted CA."""
    assert pki.untrusted.dn == pki.endorser.dn and pki.untrusted.ca != pki.endorser.ca
    pins = {"endorser_dn": pki.endorser.dn, "endorser_ca": pki.endorser.ca}
    impostor = sign_obj(list_obj(pki, signer=pki.untrusted), pki.untrusted)
    refused(pki, impostor, two_cas, "endorser_mismatch", "Rogue CA", "O(endorser_ca)", **pins)
    genuine = sign_obj(list_obj(pki), pki.endorser)
    assert verify(pki, genuine, two_cas, **pins).version == "3"


def test_endorser_dn_alone_is_enough_with_one_ca(pki, signed, tmp_path):
    """One CA (even as several files: hashed link and .pem, old and new certificate) pins by DN alone."""
    ca_dir = pki.ca_dir_of(str(tmp_path / "ca"), [pki.root], [pki.crl(pki.root)])
    with open(os.path.join(ca_dir, "root-copy.pem"), "wb") as fh:
        fh.write(pki.root.cert_pem)
    assert verify(pki, signed, ca_dir, endorser_dn=pki.endorser.dn).version == "3"
    assert os.path.exists(os.path.join(ca_dir, subject_hash(pki.root.cert_path) + ".r0"))
