"""Checks of the files a config names: what ``--check`` and start-up add to the pure parse.

Kept apart from parsing because it reads the disk and the clock: a config can be valid on a
laptop whose ``/var/vcap/jobs/...`` paths do not exist. Problems make ``--check`` fail; warnings
(a key readable by others, a certificate close to expiry, a netns directory not there yet) are
printed but do not. No message carries file contents.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pcapd.config.model import AgentConfig, ApiConfig, LocalStorageConfig
from pcapd.config.parse import load_agent_config, load_api_config
from pcapd.errors import ConfigError

EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class CheckResult:
    """``problems`` fail ``--check`` (exit 1); ``warnings`` are worth reading but do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_agent_config_file(
    path: str | os.PathLike[str], *, now: datetime | None = None
) -> CheckResult:
    """Parse the agent config at ``path`` and, if it parses, check the files it names."""
    try:
        config = load_agent_config(path)
    except ConfigError as exc:
        return CheckResult(problems=exc.problems)
    return check_files(config, now=now)


def check_api_config_file(
    path: str | os.PathLike[str], *, now: datetime | None = None
) -> CheckResult:
    """Parse the api config at ``path`` and, if it parses, check the files it names."""
    try:
        config = load_api_config(path)
    except ConfigError as exc:
        return CheckResult(problems=exc.problems)
    return check_files(config, now=now)


def check_files(config: AgentConfig | ApiConfig, *, now: datetime | None = None) -> CheckResult:
    """Certificates, keys and CAs exist, parse, match and are in date; directories fit."""
    check = _Checker(now or datetime.now(UTC))
    if isinstance(config, AgentConfig):
        tls = config.tls
        check.pair("tls", tls.certificate, tls.private_key, ExtendedKeyUsageOID.SERVER_AUTH)
        check.ca("tls.client_ca", tls.client_ca)
        if config.containers.netns_dir is not None:
            check.directory("containers.netns_dir", config.containers.netns_dir)
        if config.containers.metadata_store is not None:
            check.optional_file("containers.metadata_store", config.containers.metadata_store)
    else:
        if config.listen.tls is not None:
            server = config.listen.tls
            check.pair(
                "listen.tls",
                server.certificate,
                server.private_key,
                ExtendedKeyUsageOID.SERVER_AUTH,
            )
        agents = config.agents.tls
        check.pair(
            "agents.tls", agents.certificate, agents.private_key, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        check.ca("agents.tls.ca", agents.ca)
        if config.cf is not None and config.cf.ca is not None:
            check.ca("cf.ca", config.cf.ca)
        if config.bosh is not None and config.bosh.ca is not None:
            check.ca("bosh.ca", config.bosh.ca)
        if isinstance(config.storage, LocalStorageConfig):
            check.directory("storage.path", config.storage.path, created=True)
    return CheckResult(check.problems, check.warnings)


class _Checker:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def _read(self, key: str, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            self.problems.append(f"{key}: {path}: no such file — create it or fix the path")
        except IsADirectoryError:
            self.problems.append(f"{key}: {path}: is a directory — name a PEM file")
        except PermissionError:
            self.problems.append(
                f"{key}: {path}: not readable by this user — fix its owner or mode"
            )
        except OSError as exc:
            self.problems.append(f"{key}: {path}: cannot read it ({exc.strerror})")
        return None

    def certificates(
        self, key: str, path: str, usage: x509.ObjectIdentifier | None = None
    ) -> list[x509.Certificate]:
        data = self._read(key, path)
        if data is None:
            return []
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            self.problems.append(
                f"{key}: {path}: not a PEM certificate — expected -----BEGIN CERTIFICATE-----"
            )
            return []
        for cert in certs:
            self._dates(key, path, cert)
        if usage is not None:
            self._usage(key, path, certs[0], usage)
        return certs

    def _dates(self, key: str, path: str, cert: x509.Certificate) -> None:
        name = cert.subject.rfc4514_string() or "(no subject)"
        ends = cert.not_valid_after_utc
        if self.now > ends:
            self.problems.append(
                f"{key}: {path}: certificate {name} expired on {ends:%Y-%m-%d} — renew it"
            )
        elif self.now < cert.not_valid_before_utc:
            self.problems.append(
                f"{key}: {path}: certificate {name} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC — check the clock"
            )
        elif ends - self.now < EXPIRY_WARNING:
            self.warnings.append(
                f"{key}: {path}: certificate {name} expires on {ends:%Y-%m-%d} — renew it soon"
            )

    def _usage(
        self, key: str, path: str, cert: x509.Certificate, usage: x509.ObjectIdentifier
    ) -> None:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return  # no EKU: usable for anything
        if usage not in eku:
            wanted = "server" if usage == ExtendedKeyUsageOID.SERVER_AUTH else "client"
            self.problems.append(
                f"{key}: {path}: certificate is not for TLS {wanted} authentication "
                f"(its extended key usage lacks {wanted}Auth) — use a {wanted} certificate"
            )

    def pair(
        self, section: str, cert_path: str, key_path: str, usage: x509.ObjectIdentifier
    ) -> None:
        """A certificate and its private key, which must belong together."""
        certs = self.certificates(f"{section}.certificate", cert_path, usage)
        key = self._private_key(f"{section}.private_key", key_path)
        if certs and key is not None and _spki(certs[0].public_key()) != _spki(key.public_key()):
            self.problems.append(
                f"{section}.private_key: {key_path}: does not match {section}.certificate "
                f"{cert_path} — the certificate was issued for another key"
            )

    def _private_key(self, key: str, path: str) -> PrivateKeyTypes | None:
        data = self._read(key, path)
        if data is None:
            return None
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            self.warnings.append(
                f"{key}: {path}: readable by group or others (mode {mode:04o}) — chmod 600 it"
            )
        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            self.problems.append(
                f"{key}: {path}: is encrypted — give pcapd an unencrypted key "
                "protected by file permissions"
            )
        except (ValueError, UnsupportedAlgorithm):
            self.problems.append(
                f"{key}: {path}: not a PEM private key — expected -----BEGIN ... PRIVATE KEY-----"
            )
        return None

    def ca(self, key: str, path: str) -> None:
        certs = self.certificates(key, path)
        if certs and not any(_is_ca(c) for c in certs):
            self.warnings.append(
                f"{key}: {path}: holds no CA certificate (basicConstraints CA:TRUE) — "
                "name the CA that issued the peer's certificate"
            )

    def directory(self, key: str, path: str, *, created: bool = False) -> None:
        target = Path(path)
        if target.is_dir():
            if created and not os.access(target, os.W_OK | os.X_OK):
                self.problems.append(f"{key}: {path}: not writable — fix its owner or mode")
        elif target.exists():
            self.problems.append(f"{key}: {path}: is not a directory — name a directory")
        elif created:
            self.warnings.append(f"{key}: {path}: does not exist yet — pcapd will create it")
        else:
            self.warnings.append(
                f"{key}: {path}: does not exist yet — fine if the container runtime creates it"
            )

    def optional_file(self, key: str, path: str) -> None:
        target = Path(path)
        if target.is_dir():
            self.problems.append(f"{key}: {path}: is a directory — name a file")
        elif not target.exists():
            self.warnings.append(
                f"{key}: {path}: does not exist yet — fine if the container runtime creates it"
            )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _spki(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    der: bytes = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der
