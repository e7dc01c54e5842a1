"""The bosh CLI's login: ``$BOSH_CONFIG`` (default ``~/.bosh/config``) read, refreshed, written.

The file is YAML with one ``environments`` entry per director (reference external-apis §3.5):
``url``, ``alias``, ``ca_cert`` (PEM), ``access_token``, ``access_token_type``,
``refresh_token``. The environment is picked as the bosh CLI does: ``-e`` or
``$BOSH_ENVIRONMENT``, matched against ``alias`` or ``url`` (scheme https and port 25555 when
left out). The refresh is the bosh CLI's own (``uaa/uaa.go``, ``cmd/session.go``)::

    GET <director>/info                       → user_authentication.options.url = <uaa>
    POST <uaa>/oauth/token
    Authorization: Basic base64("bosh_cli:")
    Accept: application/json
    Content-Type: application/x-www-form-urlencoded

    grant_type=refresh_token&refresh_token=<refresh_token>

both checked against the environment's ``ca_cert`` (the director's and UAA's CA). The new tokens
go back into that environment's entry; every other entry and key is kept.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from pcapd.client.credentials import (
    HTTP_TIMEOUT,
    REFRESH_MARGIN,
    Credentials,
    RefreshFailed,
    RefreshRequest,
    Tokens,
    read_cli_config,
    write_atomically,
)
from pcapd.errors import UsageError
from pcapd.urls import origin, split_url

DEFAULT_PORT = 25555
CLIENT = "bosh_cli"
CLIENT_SECRET = ""


def bosh_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$BOSH_CONFIG``, or ``~/.bosh/config``."""
    env = os.environ if environ is None else environ
    if env.get("BOSH_CONFIG"):
        return Path(env["BOSH_CONFIG"]).expanduser()
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".bosh" / "config"


def director_url(url_or_host: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a director as the bosh CLI reads it: https and 25555 by default."""
    if not url_or_host.strip():
        return None
    try:
        parts = split_url(url_or_host)
    except ValueError:
        return None
    port = parts.port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), DEFAULT_PORT if port is None else port


def _matches(entry: Mapping[str, Any], name: str) -> bool:
    if entry.get("alias") == name:
        return True
    url = entry.get("url")
    return isinstance(url, str) and director_url(url) is not None \
        and director_url(url) == director_url(name)


@dataclass(frozen=True, repr=False)
class BoshEnvironment:
    """One environment of the bosh CLI's config, as pcapd needs it."""

    path: Path
    name: str
    """As the user named it (``-e``), for messages and ``bosh -e NAME log-in``."""
    url: str
    """The director, normalized: ``https://10.0.0.6:25555``."""
    alias: str | None
    ca_cert: str | None
    """PEM text of the director's (and its UAA's) CA, or None: the system's trust store."""
    tokens: Tokens

    def __repr__(self) -> str:
        return f"BoshEnvironment(name={self.name!r}, url={self.url!r})"


def read_bosh_document(path: Path) -> dict[str, Any]:
    data = read_cli_config(path, "bosh",
                           "log in with 'bosh -e ENV log-in' first (or set BOSH_CONFIG)")
    try:
        raw = data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the bosh CLI config is not UTF-8 text: log in again with "
                         "'bosh -e ENV log-in'") from None
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UsageError(f"{path}: not valid YAML") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise UsageError(f"{path}: not a bosh CLI config (no YAML mapping)")
    return document


def _entries(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("environments")
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict)]


def load_bosh_environment(path: Path, name: str | None) -> BoshEnvironment:
    """The environment ``name`` (alias or URL) with its tokens; UsageError for what is missing."""
    document = read_bosh_document(path)
    entries = _entries(document)
    aliases = ", ".join(str(e["alias"]) for e in entries if e.get("alias")) or "none"
    if not name:
        raise UsageError(f"say which BOSH environment: -e ALIAS (or BOSH_ENVIRONMENT); "
                         f"aliases in {path}: {aliases}")
    entry = next((e for e in entries if e.get("alias") == name), None) \
        or next((e for e in entries if _matches(e, name)), None)
    if entry is None:
        raise UsageError(f"{path}: no environment {name!r} (aliases: {aliases}): run "
                         f"'bosh alias-env {name} -e DIRECTOR' and 'bosh -e {name} log-in'")
    parsed = director_url(str(entry.get("url") or ""))
    if parsed is None:
        raise UsageError(f"{path}: environment {name!r} has no valid url: run "
                         f"'bosh alias-env {name} -e DIRECTOR' again")
    access = entry.get("access_token")
    if not isinstance(access, str) or not access.strip():
        basic = " (it logs in with a user name and password; pcapd needs a UAA login)" \
            if entry.get("username") else ""
        raise UsageError(f"{path}: not logged in to {name}{basic}: run 'bosh -e {name} log-in'")
    token_type = entry.get("access_token_type")
    refresh = entry.get("refresh_token")
    ca = entry.get("ca_cert")
    return BoshEnvironment(
        path=path,
        name=name,
        url=origin(*parsed),
        alias=entry["alias"] if isinstance(entry.get("alias"), str) else None,
        ca_cert=ca if isinstance(ca, str) and ca.strip() else None,
        tokens=Tokens(access.strip(),
                      token_type.lower() if isinstance(token_type, str) and token_type
                      else "bearer",
                      refresh.strip() if isinstance(refresh, str) else ""),
    )


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (``ca_cert``) as ``|`` blocks, the way the bosh CLI writes them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


class BoshCredentials(Credentials):
    """The bosh CLI's login, refreshed at the director's UAA and written back to its config."""

    def __init__(self, environment: BoshEnvironment, *, margin: float = REFRESH_MARGIN) -> None:
        super().__init__(environment.tokens, margin=margin)
        self.environment = environment
        self.login_command = f"bosh -e {environment.name} log-in"
        self._uaa_url: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._verify: bool | str | None = None

    @property
    def config_path(self) -> Path:
        return self.environment.path

    def verify(self) -> bool | str:
        """``verify=`` for requests: a CA file holding ``ca_cert``, or the default trust."""
        if self._verify is None:
            if self.environment.ca_cert is None:
                self._verify = True
            elif "-----BEGIN" not in self.environment.ca_cert:
                self._verify = self.environment.ca_cert.strip()  # a path, as --ca-cert takes
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="pcapd-bosh-")
                ca = Path(self._tmp.name) / "ca.pem"
                ca.write_text(self.environment.ca_cert)
                self._verify = str(ca)
        return self._verify

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._verify = None

    def refresh_where(self) -> str:
        env = self.environment
        return self._uaa_url or f"the UAA of bosh environment {env.name} ({env.url})"

    def uaa_url(self) -> str:
        """The director's UAA, from its ``/info`` (asked once)."""
        if self._uaa_url is None:
            self._uaa_url = self._ask_director()
        return self._uaa_url

    def _ask_director(self) -> str:
        env = self.environment
        url = f"{env.url}/info"
        try:
            response = requests.get(url, timeout=HTTP_TIMEOUT, verify=self.verify(),
                                    headers={"Accept": "application/json"})
        except requests.exceptions.SSLError:
            raise RefreshFailed(f"cannot verify the TLS certificate of the director {env.url} "
                                f"(ca_cert of {env.name} in {env.path})", permanent=True) from None
        except requests.RequestException:
            raise RefreshFailed(f"cannot reach the director {env.url} to find its UAA",
                                permanent=False) from None
        if response.status_code != 200:
            raise RefreshFailed(f"the director {env.url} answered /info with HTTP "
                                f"{response.status_code}", permanent=response.status_code < 500)
        try:
            info = response.json()
            auth = info["user_authentication"]
            kind, uaa = auth.get("type"), auth.get("options", {}).get("url")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RefreshFailed(f"the director {env.url} answered /info with no "
                                "user_authentication", permanent=True) from None
        if kind != "uaa" or not isinstance(uaa, str) or not uaa:
            raise RefreshFailed(f"the director {env.url} does not use UAA (user_authentication "
                                f"{kind!s}); pcapd needs a UAA login", permanent=True)
        return uaa.rstrip("/")

    def refresh_request(self) -> RefreshRequest:
        return RefreshRequest(f"{self.uaa_url()}/oauth/token", "refresh_token", form=(),
                              basic=(CLIENT, CLIENT_SECRET), verify=self.verify(),
                              login_command=self.login_command)

    def write_back(self, old: Tokens, new: Tokens) -> bool:
        env = self.environment
        try:
            document = yaml.safe_load(env.path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{env.path}: not valid YAML") from exc
        if not isinstance(document, dict):
            raise ValueError(f"{env.path}: no YAML mapping")
        entry = next((e for e in _entries(document)
                      if (e.get("alias") == env.alias if env.alias is not None
                          else _matches(e, env.url))), None)
        if entry is None or str(entry.get("refresh_token") or "").strip() != old.refresh_token:
            return False
        entry["access_token"] = new.access_token
        entry["access_token_type"] = new.token_type
        entry["refresh_token"] = new.refresh_token
        text = yaml.dump(document, Dumper=_LiteralDumper, default_flow_style=False,
                         sort_keys=False, allow_unicode=True)
        write_atomically(env.path, text.encode())
        return True


class BoshClientCredentials(BoshCredentials):
    """A bbl-style login: ``BOSH_CLIENT`` and ``BOSH_CLIENT_SECRET`` (``eval "$(bbl
    print-env)"``), exchanged at the director's UAA with the client_credentials grant, as the
    bosh CLI does when they are set. A new token is asked for before each expiry; nothing is
    written anywhere (the secret stays in the environment it came from)."""

    def __init__(self, environment: BoshEnvironment, client: str, secret: str, *,
                 margin: float = REFRESH_MARGIN) -> None:
        super().__init__(environment, margin=margin)
        self.login_command = "eval \"$(bbl print-env)\" (check BOSH_CLIENT and BOSH_CLIENT_SECRET)"
        self._client = (client, secret)

    def __repr__(self) -> str:
        return f"BoshClientCredentials(client={self._client[0]!r}, {self.environment!r})"

    def needs_refresh(self, now: float) -> bool:
        return not self.tokens.access_token or super().needs_refresh(now)

    def refresh_line(self, now: float) -> str:
        return f"logging in as client {self._client[0]} at {self.refresh_where()}"

    def can_refresh(self) -> bool:
        return True

    def refresh_request(self) -> RefreshRequest:
        return RefreshRequest(f"{self.uaa_url()}/oauth/token", "client_credentials", form=(),
                              basic=self._client, verify=self.verify(),
                              login_command=self.login_command)

    def write_back(self, old: Tokens, new: Tokens) -> bool:
        return True  # the bosh CLI keeps no token of a client login either


def bosh_credentials(path: Path, name: str | None,
                     environ: Mapping[str, str] | None = None) -> BoshCredentials:
    """The login the bosh CLI would use for environment ``name`` (``-e`` or BOSH_ENVIRONMENT):
    ``BOSH_CLIENT``/``BOSH_CLIENT_SECRET`` when set, else the config file's; ``BOSH_CA_CERT``
    (PEM text or a file) overrides the environment's ``ca_cert`` as it does for the bosh CLI."""
    env = os.environ if environ is None else environ
    ca_cert = (env.get("BOSH_CA_CERT") or "").strip() or None
    client = env.get("BOSH_CLIENT", "").strip()
    if not client:
        environment = load_bosh_environment(path, name)
        if ca_cert is not None:
            environment = dataclasses.replace(environment, ca_cert=ca_cert)
        return BoshCredentials(environment)
    secret = env.get("BOSH_CLIENT_SECRET", "")
    if not secret:
        raise UsageError("BOSH_CLIENT is set but BOSH_CLIENT_SECRET is not: set both (as "
                         "'bbl print-env' does), or unset BOSH_CLIENT to use the bosh CLI login")
    if not name:
        raise UsageError("say which director: -e URL (or BOSH_ENVIRONMENT, as 'bbl print-env' "
                         "sets it)")
    entry: dict[str, Any] | None = None
    if path.is_file():  # an alias of the bosh CLI's config names the director too
        entries = _entries(read_bosh_document(path))
        entry = next((e for e in entries if e.get("alias") == name), None) \
            or next((e for e in entries if _matches(e, name)), None)
    parsed = director_url(str(entry.get("url") or "") if entry else name)
    if parsed is None:
        raise UsageError(f"BOSH_ENVIRONMENT {name!r}: not a director URL or address "
                         "(e.g. https://10.0.0.6:25555)")
    if ca_cert is None and entry is not None and isinstance(entry.get("ca_cert"), str):
        ca_cert = entry["ca_cert"].strip() or None
    environment = BoshEnvironment(path=path, name=name, url=origin(*parsed), alias=None,
                                  ca_cert=ca_cert, tokens=Tokens(""))
    return BoshClientCredentials(environment, client, secret)
