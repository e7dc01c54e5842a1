"""Development and throw-away certificates for pcapd's mutual TLS (``pcapd certs init``).

These are for a laptop, CI and ``pcapd capture local``; production certificates come from
BOSH/CredHub. One CA issues four leaves:

- ``agent``: the agents' server certificate (serverAuth), named by the agent server name that
  the api checks, plus any ``--agent-host`` (IP addresses as IP SANs, names as DNS SANs);
- ``api-client``: the api's client certificate towards agents (clientAuth), named by the api
  client name the agents check (``tls.client_name``, ``pcapd-api`` by default);
- ``api``: the api's server certificate towards users (serverAuth; localhost, 127.0.0.1, ::1
  and any api host), for an api that terminates TLS itself;
- ``ca``: the CA, whose key stays beside them so more leaves can be issued later.

Keys are EC P-256: generated in a millisecond (RSA-2048 takes ~100 times longer, which tests
feel), small, and accepted by every TLS stack pcapd meets (OpenSSL, Go, browsers). The CA lives
10 years so a dev setup survives renewing its leaves; leaves live ``days`` (1 year by default);
throw-away ones a day. Every validity starts an hour back to forgive clock skew between hosts.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pcapd.config.model import DEFAULT_AGENT_SERVER_NAME, DEFAULT_API_CLIENT_NAME, is_host
from pcapd.errors import UsageError

CA_DAYS = 3650
DEFAULT_DAYS = 365
THROWAWAY_DAYS = 1
_SKEW = timedelta(hours=1)
_API_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key; repr hides the key."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class Pki:
    """A CA and the three leaves pcapd's links need, all in memory."""

    ca: CertKey
    agent: CertKey
    api_client: CertKey
    api: CertKey


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`write_pki` put each file."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    agent_cert: Path
    agent_key: Path
    api_client_cert: Path
    api_client_key: Path
    api_cert: Path
    api_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        return cls(
            directory,
            *(directory / f"{stem}.{ext}" for stem in _STEMS.values() for ext in ("crt", "key")),
        )

    def files(self) -> Iterator[Path]:
        for stem in _STEMS:
            yield getattr(self, f"{stem}_cert")
            yield getattr(self, f"{stem}_key")


_STEMS = {"ca": "ca", "agent": "agent", "api_client": "api-client", "api": "api"}


def init_certs(
    directory: str | os.PathLike[str],
    agent_hosts: Sequence[str] = (),
    *,
    agent_server_name: str = DEFAULT_AGENT_SERVER_NAME,
    api_hosts: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    force: bool = False,
    api_client_name: str = DEFAULT_API_CLIENT_NAME,
) -> CertPaths:
    """``pcapd certs init DIR``: make a dev CA and its leaves and write them into ``directory``.

    Files: ``ca.crt/.key``, ``agent.crt/.key``, ``api-client.crt/.key``, ``api.crt/.key``.
    Refuses (:class:`UsageError` naming the file) to overwrite any of them unless ``force``.
    """
    pki = make_pki(agent_server_name, agent_hosts, api_hosts, days=days,
                   api_client_name=api_client_name)
    return write_pki(pki, directory, force=force)


def make_throwaway_pki(
    agent_server_name: str = DEFAULT_AGENT_SERVER_NAME, agent_hosts: Sequence[str] = ()
) -> Pki:
    """A one-day PKI for ``pcapd capture local``: nothing is written until asked.

    ``ssl.SSLContext.load_cert_chain`` reads only files, so write it with :func:`write_pki`
    into a private temporary directory; ``load_verify_locations(cadata=...)`` takes the CA as is.
    """
    return make_pki(agent_server_name, agent_hosts, days=THROWAWAY_DAYS, ca_days=THROWAWAY_DAYS)


def make_pki(
    agent_server_name: str = DEFAULT_AGENT_SERVER_NAME,
    agent_hosts: Sequence[str] = (),
    api_hosts: Sequence[str] = (),
    *,
    days: int = DEFAULT_DAYS,
    ca_days: int = CA_DAYS,
    now: datetime | None = None,
    api_client_name: str = DEFAULT_API_CLIENT_NAME,
) -> Pki:
    """Generate the CA and the leaves in memory; ``now`` is a parameter so tests can age them."""
    if days < 1 or ca_days < 1:
        raise UsageError(f"certificate validity must be at least 1 day, got {min(days, ca_days)}")
    now = now or datetime.now(UTC)
    agent_sans = _sans([agent_server_name], "agent server name")
    agent_sans += [n for n in _sans(agent_hosts, "--agent-host") if n not in agent_sans]
    api_sans = _sans([*_API_HOSTS, *api_hosts], "--api-host")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(
        "pcapd development CA", ca_key.public_key(), ca_key, None, now=now, days=ca_days, ca=True
    )
    ca = CertKey(_cert_pem(ca_cert), _key_pem(ca_key))

    def leaf(name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> CertKey:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(
            name, key.public_key(), ca_key, ca_cert, now=now, days=days, sans=sans, usage=usage
        )
        return CertKey(_cert_pem(cert), _key_pem(key))

    return Pki(
        ca=ca,
        agent=leaf("pcapd agent", agent_sans, ExtendedKeyUsageOID.SERVER_AUTH),
        api_client=leaf("pcapd api client", _sans([api_client_name], "api client name"),
                        ExtendedKeyUsageOID.CLIENT_AUTH),
        api=leaf("pcapd api", api_sans, ExtendedKeyUsageOID.SERVER_AUTH),
    )


def write_pki(pki: Pki, directory: str | os.PathLike[str], *, force: bool = False) -> CertPaths:
    """Write ``pki`` into ``directory`` (created 0700): keys 0600, certificates 0644.

    Each file is written under a temporary name created 0600 with ``O_EXCL`` and then renamed
    into place, so a key is never readable by others, not even for an instant, and a reader never
    sees half a file. Without ``force`` the rename is a hard link, which cannot overwrite.
    """
    paths = CertPaths.in_directory(Path(directory))
    if not force:
        for path in paths.files():
            if path.exists() or path.is_symlink():
                raise UsageError(
                    f"{path}: already exists — use --force to overwrite it, or another directory"
                )
    try:
        _make_private_dir(paths.directory)
        for stem in _STEMS:
            pair: CertKey = getattr(pki, stem)
            _write_atomic(getattr(paths, f"{stem}_key"), pair.key_pem, 0o600, force)
            _write_atomic(getattr(paths, f"{stem}_cert"), pair.cert_pem, 0o644, force)
    except FileExistsError as exc:  # os.link's target appeared since the check above
        where = exc.filename2 or exc.filename
        raise UsageError(f"{where}: already exists — use --force to overwrite it") from exc
    except OSError as exc:
        raise UsageError(f"{exc.filename or directory}: cannot write ({exc.strerror})") from exc
    return paths


def _make_private_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: is not a directory")
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return  # an existing directory keeps its mode: it may be shared, like /tmp
    directory.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened: make it exact


def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with open(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sans(hosts: Sequence[str], flag: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        bare = host.strip()
        if bare.startswith("[") and bare.endswith("]"):
            bare = bare[1:-1]
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(bare))
        except ValueError:
            if not is_host(bare.removeprefix("*.")):
                raise UsageError(f"{flag} {host!r}: expected an IP address or a DNS name") from None
            name = x509.DNSName(bare.rstrip(".").lower())
        if name not in names:
            names.append(name)
    return names


def _certificate(
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    *,
    now: datetime,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
    ca: bool = False,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pcapd (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
