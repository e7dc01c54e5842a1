"""TLS contexts for pcapd's links, built one way everywhere.

Agents only talk to clients holding a certificate from their configured CA (mutual TLS), and
the api only trusts agents whose certificate chains to ``agents.tls.ca`` *and* names
``agents.server_name``. TLS 1.2 is the floor: older versions are refused in both directions,
and TLS 1.2 offers only AEAD suites with forward secrecy (ECDHE with AES-GCM or
ChaCha20-Poly1305): the CBC suites OpenSSL still enables by default (Lucky13-style padding
oracles, no forward secrecy with the ``RSA`` key exchange) are never negotiated. TLS 1.3
suites are all AEAD already. The api's HTTPS clients of the platform (Cloud Controller, UAA,
the BOSH director) and of S3 are built here too (:func:`platform_context`), the same way.
Files are read here, once, at start-up; a failure names the file and the config key it came from.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from pcapd.errors import PcapdError

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""OpenSSL's cipher string for TLS 1.2: AEAD suites with an ephemeral key exchange only."""


class TlsSetupError(PcapdError):
    """A certificate, key or CA file could not be loaded."""


def harden(ctx: ssl.SSLContext) -> None:
    """TLS 1.2 at least, and in TLS 1.2 only :data:`TLS12_CIPHERS` (TLS 1.3's are AEAD)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)


def _load_chain(ctx: ssl.SSLContext, certificate: Path | str, private_key: Path | str,
                what: str) -> None:
    try:
        ctx.load_cert_chain(certfile=str(certificate), keyfile=str(private_key))
    except FileNotFoundError as exc:
        raise TlsSetupError(f"{what}: file not found: {exc.filename}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"{what}: cannot load certificate {certificate} with key "
                            f"{private_key}: {exc.strerror or exc}") from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path | str, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except FileNotFoundError as exc:
        raise TlsSetupError(f"{what}: CA file not found: {ca}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"{what}: cannot load CA {ca}: {exc}") from exc


def server_context(certificate: Path | str, private_key: Path | str, *,
                   client_ca: Path | str | None = None, what: str = "tls") -> ssl.SSLContext:
    """A server context; with ``client_ca`` it requires a client certificate from that CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx)
    _load_chain(ctx, certificate, private_key, what)
    if client_ca is not None:
        _load_ca(ctx, client_ca, f"{what}.client_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(*, ca: Path | str | None = None, certificate: Path | str | None = None,
                   private_key: Path | str | None = None, insecure: bool = False,
                   what: str = "tls") -> ssl.SSLContext:
    """A client context that checks the server's chain and name (unless ``insecure``).

    With ``ca`` only that CA is trusted (an agent signed by any other CA, public ones included,
    is refused); without it the system trust store is used (the api behind gorouter). With
    ``certificate`` the context presents it (the api's client certificate toward agents).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name by default
    harden(ctx)
    if ca is None:
        ctx.load_default_certs()
    else:
        _load_ca(ctx, ca, f"{what}.ca")
    if certificate is not None:
        if private_key is None:
            raise TlsSetupError(f"{what}: a certificate needs its private_key")
        _load_chain(ctx, certificate, private_key, what)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def platform_context(ca: Path | str | None, *, what: str) -> ssl.SSLContext:
    """The api's client context toward a platform service (Cloud Controller, UAA, the BOSH
    director, S3), hardened like pcapd's own links: the server's chain and name checked
    against ``ca`` or, without one, the trust the HTTP libraries use by default —
    ``$SSL_CERT_FILE``, ``$SSL_CERT_DIR``, else certifi's bundle (what the api used before it
    built these contexts itself, so no deployment's trust changes). ``what`` names the config
    key for errors (``cf.ca``)."""
    if ca is not None:
        return client_context(ca=ca, what=what.removesuffix(".ca"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile:
        source, capath = f"$SSL_CERT_FILE {cafile}", None
    elif capath:
        source = f"$SSL_CERT_DIR {capath}"
    else:
        import certifi  # noqa: PLC0415  # the api's; a laptop's install never gets here

        cafile = certifi.where()
        source = f"certifi's bundle {cafile}"
    try:
        ctx.load_verify_locations(cafile=cafile or None, capath=capath)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"{what}: not set, and the default CAs ({source}) cannot be "
                            f"loaded: {exc}") from exc
    return ctx


def client_identity_problem(der: bytes | None, name: str) -> str | None:
    """Why a client certificate (DER, already chained to the CA by OpenSSL) is not the
    api's; None when it is.

    OpenSSL accepts any leaf of the CA as a client: one without an extended key usage is good
    for every purpose, so the agents' own server certificates' siblings — any certificate
    the CA ever issued — would be a full api. The api's certificate must say it is a TLS
    *client* (``clientAuth``) and name ``name`` (a DNS SAN, or the common name when it has
    no DNS SAN), compared exactly, ignoring case.
    """
    # the agent's question only: a laptop's client install has no cryptography
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    if der is None:
        return "no client certificate"
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        if not names:
            names = [str(a.value) for a in cert.subject.get_attributes_for_oid(
                NameOID.COMMON_NAME)]
    except ValueError as exc:
        return f"unreadable client certificate ({exc})"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return "its certificate is not for TLS clients (no clientAuth extended key usage)"
    if name.lower() not in (n.lower() for n in names):
        shown = ", ".join(n[:64] for n in names[:4]) or "no name"
        return f"its certificate names {shown}, not the api's {name} (tls.client_name)"
    return None
