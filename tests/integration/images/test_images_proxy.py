"""Image downloads honour http_proxy / https_proxy / no_proxy (through a real forwarding proxy on
127.0.0.1) and refuse a redirect from https to http (a real TLS server with a real openssl
certificate), as the image lists and .torrent downloads do through Ansible's open_url."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import TransferError, fetch
from tests.integration.images._proxy import ForwardingProxy
from tests.integration.images._server import ImageServer

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy")


@pytest.fixture
def proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with ForwardingProxy() as running:
        yield running


@pytest.fixture
def tls_server(served, tmp_path):
    """The ``served`` directory over https, with a certificate for 127.0.0.1 made by openssl."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    with ImageServer(served.directory, tls=(cert, key)) as server:
        server.cert = cert  # type: ignore[attr-defined]
        yield server


def test_http_download_goes_through_http_proxy(served, proxy, tmp_path, monkeypatch):
    img = served.add("p.raw", size=2 * 1024 * 1024 + 3)
    monkeypatch.setenv("http_proxy", proxy.url.replace("http://", "http://farm:s%40cret@"))
    result = fetch(served.url("p.raw"), str(tmp_path / "p.part"), img.size, img.sha512)
    assert result.sha512 == img.sha512 and result.transferred == img.size
    credentials = "Basic " + base64.b64encode(b"farm:s@cret").decode()
    assert proxy.requests == [("GET", served.url("p.raw"), credentials)]
    assert served.server.requests == [("p.raw", None)]


def test_no_proxy_goes_direct(served, proxy, tmp_path, monkeypatch):
    img = served.add("d.raw", size=300 * 1024)
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    fetch(served.url("d.raw"), str(tmp_path / "d.part"), img.size, img.sha512)
    assert proxy.requests == []
    assert served.server.requests == [("d.raw", None)]


def test_https_download_is_tunnelled_through_https_proxy(served, tls_server, proxy, tmp_path, monkeypatch):
    img = served.add("t.raw", size=1024 * 1024 + 5)
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # the wrong one: never used for https
    result = fetch(tls_server.url("t.raw"), str(tmp_path / "t.part"), img.size, img.sha512, ca_path=tls_server.cert)
    assert result.sha512 == img.sha512
    assert proxy.requests == [("CONNECT", "127.0.0.1:%d" % tls_server.port, None)]  # TLS end to end
    assert tls_server.requests == [("t.raw", None)]


def test_a_resume_through_the_proxy_asks_for_the_rest(served, proxy, tmp_path, monkeypatch):
    img = served.add("r.raw", size=1024 * 1024)
    dest = tmp_path / "r.part"
    with open(img.path, "rb") as src:
        dest.write_bytes(src.read(1000))
    monkeypatch.setenv("http_proxy", proxy.url)
    result = fetch(served.url("r.raw"), str(dest), img.size, img.sha512)
    assert (result.resumed_from, result.sha512) == (1000, img.sha512)
    assert served.server.requests == [("r.raw", "bytes=1000-")]


def test_a_redirect_from_https_to_http_is_refused(served, tls_server, proxy, tmp_path):
    img = served.add("img.raw", size=64 * 1024)
    tls_server.behave("img.raw", "redirect", location=served.url("img.raw"))
    dest = tmp_path / "img.part"
    with pytest.raises(TransferError) as err:
        fetch(tls_server.url("img.raw"), str(dest), img.size, img.sha512, ca_path=tls_server.cert)
    assert err.value.message.startswith(
        "%s redirects from https to %s: refusing to continue without TLS"
        % (tls_server.url("img.raw"), served.url("img.raw"))
    )
    assert err.value.status == 302 and not err.value.resumable
    assert served.server.requests == [], "the plain-http location must never be asked"
    assert not os.path.exists(dest)


def test_a_redirect_from_http_to_https_is_followed(served, tls_server, proxy, tmp_path):
    img = served.add("up.raw", size=64 * 1024)
    served.server.behave("up.raw", "redirect", location=tls_server.url("up.raw"))
    result = fetch(served.url("up.raw"), str(tmp_path / "up.part"), img.size, img.sha512, ca_path=tls_server.cert)
    assert result.sha512 == img.sha512 and tls_server.requests == [("up.raw", None)]
