"""pcapd.certs: the generated PKI must work for real mutual TLS, and keep its keys private."""

from __future__ import annotations

import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from pcapd.certs import (
    CertPaths,
    init_certs,
    make_pki,
    make_throwaway_pki,
    write_pki,
)
from pcapd.config import DEFAULT_AGENT_SERVER_NAME
from pcapd.errors import UsageError

AGENT_HOSTS = ("10.0.16.5", "fd00::5", "cell-1.example.internal")
X509_V_ERR_HOSTNAME_MISMATCH = 62


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs", AGENT_HOSTS)


def agent_context(certs: CertPaths, client_ca: Path | None = None) -> ssl.SSLContext:
    """The agent's side: its server certificate, and client certificates required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.agent_cert, certs.agent_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca or certs.ca_cert)
    return ctx


def api_context(
    certs: CertPaths, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The api's side towards an agent: its client certificate; the agent's checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.ca_cert)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> str | None:
    """A real TLS handshake and a round trip through memory BIOs; returns the client's CN.

    The round trip matters: in TLS 1.3 the server judges the client certificate after the
    client already thinks the handshake is done.
    """
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    pending = {"client": True, "server": True}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if pending[name]:
                try:
                    side.do_handshake()
                    pending[name] = False
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not any(pending.values()):
            break
    assert not any(pending.values()), "handshake did not finish"
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    server.write(b"pong")
    c_in.write(s_out.read())
    assert client.read(4) == b"pong"
    der = server.getpeercert(binary_form=True)
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


@pytest.mark.parametrize("server_name", [DEFAULT_AGENT_SERVER_NAME, *AGENT_HOSTS])
def test_mutual_tls_verifies_by_server_name_and_each_agent_host(
    certs: CertPaths, server_name: str
) -> None:
    client = api_context(certs, certs.api_client_cert, certs.api_client_key)
    assert handshake(agent_context(certs), client, server_name) == "pcapd api client"


def test_wrong_server_name_is_refused(certs: CertPaths) -> None:
    client = api_context(certs, certs.api_client_cert, certs.api_client_key)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake(agent_context(certs), client, "other.service.cf.internal")
    assert info.value.verify_code == X509_V_ERR_HOSTNAME_MISMATCH  # OpenSSL's code, not its words


def test_agent_refuses_a_client_without_certificate(certs: CertPaths) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(agent_context(certs), api_context(certs), DEFAULT_AGENT_SERVER_NAME)


def test_agent_refuses_a_client_certificate_from_another_ca(
    certs: CertPaths, tmp_path: Path
) -> None:
    other = init_certs(tmp_path / "other")
    client = api_context(certs, other.api_client_cert, other.api_client_key)
    with pytest.raises(ssl.SSLError):
        handshake(agent_context(certs), client, DEFAULT_AGENT_SERVER_NAME)


def test_agent_refuses_a_server_certificate_used_as_client_certificate(certs: CertPaths) -> None:
    # The agent certificate has only serverAuth: the extended key usage is enforced.
    client = api_context(certs, certs.agent_cert, certs.agent_key)
    with pytest.raises(ssl.SSLError):
        handshake(agent_context(certs), client, DEFAULT_AGENT_SERVER_NAME)


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1", "::1"])
def test_api_server_certificate_names_loopback(certs: CertPaths, server_name: str) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.api_cert, certs.api_key)
    client = ssl.create_default_context(cafile=certs.ca_cert)
    assert handshake(server, client, server_name) is None  # no client certificate asked


def test_certificate_contents(certs: CertPaths) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    agent = x509.load_pem_x509_certificate(certs.agent_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = agent.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        DEFAULT_AGENT_SERVER_NAME,
        "cell-1.example.internal",
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.16.5", "fd00::5"]
    assert agent.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = agent.not_valid_after_utc - agent.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=366)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)


def test_file_modes(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen them
    try:
        paths = init_certs(tmp_path / "a" / "certs")
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    for path in paths.files():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".key" else 0o644), path
    names = sorted(p.name for p in paths.directory.iterdir())
    assert names == sorted(p.name for p in paths.files())  # no temporary files left behind
    assert names == [
        "agent.crt", "agent.key", "api-client.crt", "api-client.key",
        "api.crt", "api.key", "ca.crt", "ca.key",
    ]  # fmt: skip


def test_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    init_certs(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_certs(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(UsageError, match=r"ca\.crt: already exists — use --force"):
        init_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before
    again = init_certs(tmp_path, force=True)
    assert again.ca_cert.read_bytes() != before
    assert stat.S_IMODE(again.ca_key.stat().st_mode) == 0o600


def test_refuses_when_any_one_file_exists(tmp_path: Path) -> None:
    (tmp_path / "api.key").write_text("mine")
    with pytest.raises(UsageError, match=r"api\.key"):
        init_certs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["api.key"]  # nothing half-written


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        init_certs(tmp_path / "file")


@pytest.mark.parametrize("host", ["not a host", "-bad-.example", "10.0.0.300", ""])
def test_bad_agent_host_is_a_usage_error(tmp_path: Path, host: str) -> None:
    with pytest.raises(UsageError, match="--agent-host"):
        init_certs(tmp_path, [host])
    assert not list(tmp_path.iterdir())


def test_bracketed_ipv6_host_is_an_ip_san() -> None:
    pki = make_pki(agent_hosts=["[fd00::7]"])
    cert = x509.load_pem_x509_certificate(pki.agent.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["fd00::7"]


def test_throwaway_pki_is_in_memory_short_lived_and_hides_its_keys(tmp_path: Path) -> None:
    pki = make_throwaway_pki("agent.local.test")
    assert b"PRIVATE KEY" in pki.agent.key_pem
    text = repr(pki)
    assert "PRIVATE" not in text and "key_pem" not in text
    agent = x509.load_pem_x509_certificate(pki.agent.cert_pem)
    assert agent.not_valid_after_utc - datetime.now(UTC) < timedelta(days=2)
    # what capture local does: write it privately, then real contexts from it
    paths = write_pki(pki, tmp_path / "throwaway")
    server = agent_context(paths)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=pki.ca.cert_pem.decode())
    client.load_cert_chain(paths.api_client_cert, paths.api_client_key)
    assert handshake(server, client, "agent.local.test") == "pcapd api client"


def test_each_pki_has_its_own_ca() -> None:
    assert make_throwaway_pki().ca.cert_pem != make_throwaway_pki().ca.cert_pem


def test_validity_must_be_positive() -> None:
    with pytest.raises(UsageError, match="at least 1 day"):
        make_pki(days=0)
