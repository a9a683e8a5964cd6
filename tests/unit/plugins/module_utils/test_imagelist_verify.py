"""Verification of signed HEPiX image lists with a real test PKI (cryptography + openssl)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _imagelist as il
from ansible_collections.batchvirt.farm.plugins.module_utils._version import compare_versions
from tests.unit.plugins.modules.image_list.imagelist_pki import (
    DAY,
    LIST_ID,
    PKI,
    image_obj,
    list_obj,
    sign_obj,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def verify(pki, data, **kw):
    kw.setdefault("now", pki.now)
    return il.verify(data, pki.ca_dir, kw.pop("identifier", LIST_ID), **kw)


def refused(pki, data, reason, *fragments, **kw):
    with pytest.raises(il.ImageListError) as err:
        verify(pki, data, **kw)
    assert err.value.reason == reason, str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)
    return err.value


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_signed_list_verifies(pki, detached):
    data = sign_obj(list_obj(pki), pki.endorser, detached=detached)
    assert (b"multipart/signed" in data) is detached
    assert (b"application/x-pkcs7-mime" in data) is not detached
    ilist = verify(pki, data)
    assert ilist.identifier == LIST_ID
    assert ilist.version == "3"
    assert ilist.endorser.dn == "/C=DE/O=GermanGrid/OU=KIT/CN=Image Endorser"
    assert [i.identifier for i in ilist.images] == ["worker-el9"]
    assert ilist.images[0].size == len(b"image-bytes")


def test_round_trip_keeps_unknown_fields(pki):
    obj = list_obj(
        pki,
        images=[image_obj(**{"ad:mpuri": "https://appdb.example/x", "sl:os": "Linux", "hv:hypervisor": "kvm"})],
        **{"ad:vo": "atlas", "ad:swappliance": [{"ad:id": 7}]},
    )
    obj["hv:imagelist"]["hv:endorser"]["hv:x509"]["ad:extra"] = "kept"
    ilist = verify(pki, sign_obj(obj, pki.endorser))
    rebuilt = json.loads(ilist.to_json())["hv:imagelist"]
    assert rebuilt["ad:vo"] == "atlas"
    assert rebuilt["ad:swappliance"] == [{"ad:id": 7}]
    assert rebuilt["hv:endorser"]["hv:x509"]["ad:extra"] == "kept"
    image = rebuilt["hv:images"][0]["hv:image"]
    assert image["ad:mpuri"] == "https://appdb.example/x"
    assert image["sl:os"] == "Linux"
    assert image["hv:hypervisor"] == "kvm"
    # and the rebuilt document parses to the same list
    assert il.parse_json(ilist.to_json().encode()).to_obj() == ilist.to_obj()


def test_tampered_body_is_a_bad_signature(pki):
    data = sign_obj(list_obj(pki), pki.endorser)
    tampered = data.replace(b'"hv:version": "3"', b'"hv:version": "9"')
    assert tampered != data
    refused(pki, tampered, "bad_signature", "altered after signing", "do not use this copy")


def test_tampered_opaque_signature_is_refused(pki):
    data = sign_obj(list_obj(pki), pki.endorser, detached=False)
    head, _sep, body = data.partition(b"\n\n")
    lines = body.splitlines()
    middle = len(lines) // 3
    lines[middle] = lines[middle][:10] + (b"A" if lines[middle][10:11] != b"A" else b"B") + lines[middle][11:]
    refused(pki, head + b"\n\n" + b"\n".join(lines) + b"\n", "bad_signature", "signature:")


def test_unsigned_list_is_refused(pki):
    refused(pki, json.dumps(list_obj(pki)).encode(), "bad_signature", "not an S/MIME signed message")


def test_signer_from_untrusted_ca(pki):
    data = sign_obj(list_obj(pki, signer=pki.untrusted), pki.untrusted)
    refused(pki, data, "untrusted_ca", "not issued by a CA in ca_dir", "add the endorser's CA to ca_dir")


def test_self_signed_signer(pki):
    data = sign_obj(list_obj(pki, signer=pki.rogue), pki.rogue)
    refused(pki, data, "untrusted_ca", "not issued by a CA in ca_dir")


def test_system_trust_store_is_not_used(pki, tmp_path):
    """Only ca_dir counts: a directory with another CA refuses the endorser."""
    other = tmp_path / "ca"
    other.mkdir()
    (other / "rogue.pem").write_bytes(pki.rogue.cert_pem)
    data = sign_obj(list_obj(pki), pki.endorser)
    with pytest.raises(il.ImageListError) as err:
        il.verify(data, str(other), LIST_ID, now=pki.now)
    assert err.value.reason == "untrusted_ca"


def test_signer_certificate_expired(pki):
    data = sign_obj(list_obj(pki, signer=pki.expired), pki.expired)
    refused(pki, data, "signer_expired", "not valid at this time", "re-sign with a valid certificate")


def test_signer_certificate_checked_at_injected_now(pki):
    data = sign_obj(list_obj(pki, expires=pki.now + 4000 * DAY), pki.endorser)
    refused(pki, data, "signer_expired", now=pki.now + 400 * DAY)


def test_endorser_dn_not_the_signer(pki):
    obj = list_obj(pki)
    obj["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:dn"] = pki.other.dn
    err = refused(pki, sign_obj(obj, pki.endorser), "endorser_mismatch", "Someone Else", "was signed by")
    assert err.option.endswith("hv:dn")


def test_endorser_ca_not_the_signer_issuer(pki):
    obj = list_obj(pki)
    obj["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:ca"] = pki.rogue.dn
    err = refused(pki, sign_obj(obj, pki.endorser), "endorser_mismatch", "Rogue CA", "hv:ca")
    assert err.option.endswith("hv:ca")


def test_expected_endorser_dn(pki):
    data = sign_obj(list_obj(pki), pki.endorser)
    verify(pki, data, endorser_dn="CN=Image Endorser,OU=KIT,O=GermanGrid,C=DE")
    refused(pki, data, "endorser_mismatch", "not by the expected endorser", endorser_dn=pki.other.dn)


@pytest.mark.parametrize(
    "dn",
    [
        "/C=DE/O=GermanGrid/OU=KIT/CN=Image Endorser",
        "CN=Image Endorser,OU=KIT,O=GermanGrid,C=DE",
        "cn=image endorser, ou=KIT, o=GermanGrid, c=DE",
        "/countryName=DE/O=GermanGrid/OU=KIT/commonName=Image  Endorser",
    ],
)
def test_both_dn_forms_accepted(pki, dn):
    obj = list_obj(pki)
    obj["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:dn"] = dn
    assert verify(pki, sign_obj(obj, pki.endorser)).endorser.dn == dn


def test_identifier_mismatch(pki):
    data = sign_obj(list_obj(pki, identifier="another-list"), pki.endorser)
    refused(pki, data, "identifier_mismatch", "'another-list'", LIST_ID, "O(identifier)")


def test_expired_list(pki):
    data = sign_obj(list_obj(pki, created=pki.now - 30 * DAY, expires=pki.now - DAY), pki.endorser)
    refused(pki, data, "expired", "expired at", "publish a fresh list")


def test_created_in_the_future(pki):
    future = pki.now + datetime.timedelta(hours=1)
    data = sign_obj(list_obj(pki, created=future), pki.endorser)
    refused(pki, data, "created_in_future", "clock skew of 300s", "NTP")
    # within the allowed skew it is accepted, and the skew is a parameter
    verify(pki, data, clock_skew=7200)
    near = sign_obj(list_obj(pki, created=pki.now + datetime.timedelta(seconds=60)), pki.endorser)
    verify(pki, near)


def test_version_rollback_refused(pki):
    data = sign_obj(list_obj(pki, version="3"), pki.endorser)
    refused(pki, data, "version_rollback", "'3' is lower than the version '4'", "replayed", accepted_version="4")
    assert verify(pki, data, accepted_version="3").version == "3"  # the same list again is fine
    assert verify(pki, data, accepted_version="2.9").version == "3"


def test_versions_compare_numerically():
    assert compare_versions("3.10", "3.9") == 1
    assert compare_versions("3.0", "3") == 0
    assert compare_versions("20261121", "20261120") == 1
    assert il.bump_version("3.9") == "3.10"
    # one total order (_version): a word sorts below a number, nothing is "incomparable" any more
    assert compare_versions("beta", "3") == -1
    assert "version_incomparable" not in il.REASONS


def test_malformed_json_reports_the_position(pki):
    data = sign_obj('{"hv:imagelist": {"dc:identifier": "x",,}}', pki.endorser)
    err = refused(pki, data, "malformed", "not valid JSON", "line 1 column")
    assert "char" in str(err)


def test_missing_fields_are_named(pki):
    obj = list_obj(pki)
    del obj["hv:imagelist"]["hv:endorser"]
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "hv:endorser")
    obj = list_obj(pki, images=[image_obj(**{"sl:checksum:sha512": "abc"})])
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "sl:checksum:sha512", "128 hexadecimal")
    obj = list_obj(pki, images=[image_obj(**{"hv:size": -5})])
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "hv:size", "positive integer")
    obj = list_obj(pki, images=[image_obj(), image_obj()])
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "appears twice")


def test_list_far_too_large_refused_before_parsing(pki):
    huge = list_obj(pki, **{"ad:padding": "x" * 200_000})
    data = sign_obj(huge, pki.endorser)
    refused(pki, data, "too_large", "more than the limit of 100000 bytes", "refused before parsing", max_bytes=100_000)


@pytest.mark.parametrize(
    "identifier",
    ["../../etc/passwd", "a/b", "..", "x..y", "evil\x00name", "", ".hidden", "a" * 129, "spa ce"],
)
def test_hostile_image_identifier(pki, identifier):
    obj = list_obj(pki, images=[image_obj(identifier=identifier)])
    err = refused(pki, sign_obj(obj, pki.endorser), "hostile_identifier", "part of a file name", "no '/', '..' or NUL")
    assert err.option == "hv:images[0].hv:image.dc:identifier"


def test_hostile_image_version_and_list_identifier(pki):
    obj = list_obj(pki, images=[image_obj(version="../1")])
    refused(pki, sign_obj(obj, pki.endorser), "hostile_identifier", "hv:images[0].hv:image.hv:version")
    obj = list_obj(pki, identifier="../list")
    refused(pki, sign_obj(obj, pki.endorser), "hostile_identifier", "hv:imagelist.dc:identifier", identifier="../list")


@pytest.mark.parametrize(
    "uri", ["file:///etc/shadow", "ftp://x/y", "javascript:alert(1)", "/etc/passwd", "gopher://h/"]
)
def test_forbidden_image_uri(pki, uri):
    obj = list_obj(pki, images=[image_obj(**{"hv:uri": uri})])
    err = refused(pki, sign_obj(obj, pki.endorser), "forbidden_uri", "is not allowed", "allowed: https, http, magnet")
    assert err.option == "hv:images[0].hv:image.hv:uri"


def test_file_uri_only_when_allowed(pki):
    obj = list_obj(pki, images=[image_obj(**{"hv:uri": "file:///srv/images/w.qcow2"})])
    data = sign_obj(obj, pki.endorser)
    refused(pki, data, "forbidden_uri", "O(allow_file_uri=true)")
    assert verify(pki, data, allow_file_uri=True).images[0].uri == "file:///srv/images/w.qcow2"
    obj = list_obj(pki, images=[image_obj(**{"hv:uri": "file:///srv/../etc/shadow"})])
    refused(pki, sign_obj(obj, pki.endorser), "forbidden_uri", "'..'", allow_file_uri=True)


def test_bittorrent_uris_allowed(pki):
    images = [
        image_obj(identifier="a", **{"hv:uri": "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"}),
        image_obj(identifier="b", **{"hv:uri": "https://images.example.org/b.torrent"}),
    ]
    assert len(verify(pki, sign_obj(list_obj(pki, images=images), pki.endorser)).images) == 2


def test_ca_dir_forms(pki, tmp_path):
    data = sign_obj(list_obj(pki), pki.endorser)
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    (hashed / "root.pem.real").write_bytes(pki.root.cert_pem)
    os.symlink(str(hashed / "root.pem.real"), str(hashed / "0a1b2c3d.0"))
    assert il.verify(data, str(hashed), LIST_ID, now=pki.now).version == "3"
    with pytest.raises(il.ImageListError) as err:
        il.verify(data, str(tmp_path / "missing"), LIST_ID, now=pki.now)
    assert err.value.reason == "bad_ca_dir"
    assert "is not a directory" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(il.ImageListError) as err:
        il.verify(data, str(empty), LIST_ID, now=pki.now)
    assert "no CA certificate" in str(err.value)


def test_parse_dn_forms():
    slash = il.parse_dn("/DC=org/DC=terena/C=DE/O=KIT/CN=host/vm01.example.org/emailAddress=a@b.c")
    assert slash[-2] == ("CN", "host/vm01.example.org")
    assert slash[-1] == ("EMAILADDRESS", "a@b.c")
    rfc = il.parse_dn(r"E=a@b.c,CN=host/vm01.example.org,O=KIT,C=DE,DC=terena,DC=org")
    assert rfc == slash
    assert il.parse_dn(r"CN=Doe\, John,O=X") == (("O", "x"), ("CN", "doe, john"))
    with pytest.raises(il.ImageListError):
        il.parse_dn("garbage")


@pytest.mark.parametrize(
    "flags",
    [[], ["-nodetach"], ["-text"], ["-nodetach", "-text"]],
    ids=["detached", "opaque", "detached-text", "opaque-text"],
)
def test_lists_signed_by_the_openssl_tool_verify(pki, tmp_path, flags):
    """Lists signed the classic way (``openssl smime -sign``, as hepixvmitrust's tools do)."""
    body = tmp_path / "list.json"
    body.write_text(json.dumps(list_obj(pki), indent=2))
    out = tmp_path / "list.smime"
    subprocess.run(
        ["openssl", "smime", "-sign", "-in", str(body), "-out", str(out)]
        + ["-signer", pki.endorser.cert_path, "-inkey", pki.endorser.key_path]
        + flags,
        check=True,
        capture_output=True,
    )
    ilist = verify(pki, out.read_bytes())
    assert ilist.identifier == LIST_ID
    assert ilist.images[0].identifier == "worker-el9"


# --------------------------------------------------------------------------- fail-closed parsing (issue 14)


def test_signed_list_without_hv_images_is_malformed(pki):
    """A missing hv:images is never read as "every image withdrawn"."""
    obj = list_obj(pki)
    del obj["hv:imagelist"]["hv:images"]
    err = refused(pki, sign_obj(obj, pki.endorser), "malformed", "hv:images: missing", "nothing was withdrawn")
    assert err.option == "hv:imagelist.hv:images"
    obj["hv:imagelist"]["hv:images"] = None
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "hv:images: must be a list")


def test_explicit_empty_hv_images_withdraws_everything(pki):
    assert verify(pki, sign_obj(list_obj(pki, images=[]), pki.endorser)).images == []


@pytest.mark.parametrize("version", [None, ""], ids=["absent", "empty"])
def test_image_without_hv_version_is_malformed(pki, version):
    image = image_obj()
    if version is None:
        del image["hv:image"]["hv:version"]
    else:
        image["hv:image"]["hv:version"] = version
    err = refused(pki, sign_obj(list_obj(pki, images=[image]), pki.endorser), "malformed", "hv:version: missing")
    assert err.option == "hv:images[0].hv:image.hv:version"


@pytest.mark.parametrize("fmt", ["../../etc/cron.d/x", "qcow2/../x", "qc ow2", "a" * 17])
def test_hostile_hv_format_is_refused_while_verifying(pki, fmt):
    obj = list_obj(pki, images=[image_obj(**{"hv:format": fmt})])
    err = refused(pki, sign_obj(obj, pki.endorser), "hostile_identifier", "file name")
    assert err.option == "hv:images[0].hv:image.hv:format"


def test_hv_format_of_the_wrong_type_is_malformed(pki):
    obj = list_obj(pki, images=[image_obj(**{"hv:format": ["qcow2"]})])
    refused(pki, sign_obj(obj, pki.endorser), "malformed", "hv:format: must be a string")
    # absent or the usual names are fine
    image = image_obj()
    del image["hv:image"]["hv:format"]
    assert verify(pki, sign_obj(list_obj(pki, images=[image]), pki.endorser)).images[0].format == ""
    assert verify(pki, sign_obj(list_obj(pki, images=[image_obj(**{"hv:format": "raw"})]), pki.endorser))


def test_rollback_check_uses_the_one_total_version_order(pki):
    """No more version_incomparable: a word sorts below a number, dashed and dotted dates are equal."""
    assert verify(pki, sign_obj(list_obj(pki, version="3"), pki.endorser), accepted_version="beta").version == "3"
    refused(pki, sign_obj(list_obj(pki, version="beta"), pki.endorser), "version_rollback", accepted_version="3")
    dashed = sign_obj(list_obj(pki, version="2026-11-21"), pki.endorser)
    assert verify(pki, dashed, accepted_version="2026.11.21").version == "2026-11-21"
    refused(pki, dashed, "version_rollback", accepted_version="2026.11.22")
    assert verify(pki, sign_obj(list_obj(pki, version="1.10"), pki.endorser), accepted_version="1.9")
