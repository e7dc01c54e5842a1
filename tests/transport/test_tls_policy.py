"""TLS 1.2 offers AEAD suites only (issue 12, hardening): a peer offering only CBC suites is
refused, in both directions, by the contexts every pcapd link is built with."""

from __future__ import annotations

import ssl

import pytest

from pcapd.certs import CertPaths, init_certs
from pcapd.transport.tls import client_context, server_context

CBC_ONLY = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:" \
           "ECDHE-ECDSA-AES256-SHA384:AES128-SHA:AES256-SHA:AES128-SHA256"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki"))


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> str:
    """A TLS handshake in memory; the cipher agreed, or ssl.SSLError."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if c.cipher() and s.cipher() and not c_out.pending and not s_out.pending:
            try:
                c.do_handshake()
                s.do_handshake()
            except ssl.SSLWantReadError:
                continue
            return str(c.cipher()[0])  # type: ignore[index]
    raise AssertionError("handshake did not finish")


def old_client(pki: CertPaths, ciphers: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


def test_a_client_offering_only_cbc_suites_is_refused(pki: CertPaths) -> None:
    server = server_context(pki.api_cert, pki.api_key)
    with pytest.raises(ssl.SSLError):
        handshake(old_client(pki, CBC_ONLY), server, "localhost")


def test_tls12_agrees_on_an_aead_suite(pki: CertPaths) -> None:
    server = server_context(pki.api_cert, pki.api_key)
    cipher = handshake(old_client(pki, "ALL"), server, "localhost")
    assert "GCM" in cipher or "CHACHA20" in cipher


def test_pcapd_as_client_offers_no_cbc_suite(pki: CertPaths) -> None:
    ctx = client_context(ca=pki.ca_cert)
    offered = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert offered and all(c["aead"] for c in ctx.get_ciphers() if c["name"] in offered)
    cbc_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cbc_server.load_cert_chain(pki.api_cert, pki.api_key)
    cbc_server.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc_server.set_ciphers(CBC_ONLY)
    with pytest.raises(ssl.SSLError):
        handshake(ctx, cbc_server, "localhost")
