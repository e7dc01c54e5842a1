"""The cf CLI's login: ``$CF_HOME/.cf/config.json`` read, refreshed and written back as cf does.

The file is cf CLI v8's ``configv3`` JSON (reference external-apis §2.10): ``Target`` is the
Cloud Controller, ``AccessToken`` the header value ``"bearer eyJ…"``, ``AuthorizationEndpoint``
the login server whose ``/oauth/token`` refreshes it, ``SpaceFields`` the targeted space. The
refresh is the cf CLI's own (``api/uaa/refresh_token.go``)::

    POST <AuthorizationEndpoint>/oauth/token
    Authorization: Basic base64("<UAAOAuthClient>:<UAAOAuthClientSecret>")   (default "cf:")
    Accept: application/json
    Content-Type: application/x-www-form-urlencoded

    client_id=cf&client_secret=&grant_type=refresh_token&refresh_token=<RefreshToken>

and, after ``cf auth --client-credentials`` (``UAAGrantType: client_credentials``), a new
client-credentials grant with the client in the form and no Basic auth. The write-back keeps
every other field and their order, as the CLI would.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import InsecureRequestWarning

from pcapd.client.credentials import (
    REFRESH_MARGIN,
    Credentials,
    RefreshRequest,
    Tokens,
    read_cli_config,
    split_authorization,
    write_atomically,
)
from pcapd.errors import UsageError

DEFAULT_CLIENT = "cf"
DEFAULT_CLIENT_SECRET = ""
CLIENT_CREDENTIALS = "client_credentials"

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_guid(text: str) -> bool:
    return _GUID.fullmatch(text) is not None


def cf_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$CF_HOME/.cf/config.json``; ``CF_HOME`` defaults to the home directory, as in cf."""
    env = os.environ if environ is None else environ
    home = env.get("CF_HOME") or env.get("HOME") or str(Path.home())
    return Path(home) / ".cf" / "config.json"


@dataclass(frozen=True, repr=False)
class CfConfig:
    """What pcapd needs from the cf CLI's config. Tokens are in ``tokens``, never in a repr."""

    path: Path
    target: str
    authorization_endpoint: str
    tokens: Tokens
    client_id: str
    client_secret: str
    grant_type: str
    ssl_disabled: bool
    org_name: str
    space_guid: str
    space_name: str

    def __repr__(self) -> str:
        return (f"CfConfig(path={str(self.path)!r}, target={self.target!r}, "
                f"space={self.space_name!r})")


def _text(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def _fields(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def read_cf_document(path: Path) -> dict[str, Any]:
    """The config file as a JSON object (its key order kept); UsageError naming the file."""
    raw = read_cli_config(path, "cf", "log in with 'cf login' first (or set CF_HOME to the "
                                      "directory holding .cf/config.json)")
    try:
        document = json.loads(raw)
    except ValueError:
        raise UsageError(f"{path}: not valid JSON: log in again with 'cf login' to "
                         "rewrite it") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: not a cf CLI config (no JSON object): log in again with "
                         "'cf login'")
    return document


def load_cf_config(path: Path) -> CfConfig:
    """Read the cf CLI's login and target; a clear UsageError for what is missing."""
    document = read_cf_document(path)
    target = _text(document, "Target").rstrip("/")
    if not target:
        raise UsageError(f"{path}: no API endpoint targeted: run 'cf api URL' and 'cf login'")
    access = _text(document, "AccessToken").strip()
    grant_type = _text(document, "UAAGrantType")
    if not access:
        raise UsageError(f"{path}: not logged in to {target}: run 'cf login'")
    tokens = split_authorization(access)
    tokens = Tokens(tokens.access_token, tokens.token_type,
                    _text(document, "RefreshToken").strip())
    org = _fields(document, "OrganizationFields")
    space = _fields(document, "SpaceFields")
    return CfConfig(
        path=path,
        target=target,
        authorization_endpoint=_text(document, "AuthorizationEndpoint").rstrip("/"),
        tokens=tokens,
        client_id=_text(document, "UAAOAuthClient") or DEFAULT_CLIENT,
        client_secret=_text(document, "UAAOAuthClientSecret") or DEFAULT_CLIENT_SECRET,
        grant_type=grant_type,
        ssl_disabled=document.get("SSLDisabled") is True,
        org_name=_text(org, "Name"),
        space_guid=_text(space, "GUID"),
        space_name=_text(space, "Name"),
    )


def space_for(config: CfConfig, app: str) -> str | None:
    """The space GUID an app name is resolved in; an app guid needs none (but gets it)."""
    if config.space_guid:
        return config.space_guid
    if is_guid(app):
        return None
    what = "cf target -s SPACE" if config.org_name else "cf target -o ORG -s SPACE"
    raise UsageError(f"{config.path}: no space targeted, so app {app!r} cannot be found: run "
                     f"'{what}' (or name the app by its guid)")


def derive_api_url(cf_target: str) -> str | None:
    """``https://api.<system domain>`` → ``https://pcap.<system domain>``; None otherwise."""
    parts = urlsplit(cf_target)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host.startswith("api.") or len(host) < 5:
        return None
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://pcap.{host[4:]}{port}"


class CfCredentials(Credentials):
    """The cf CLI's login, refreshed at its login server and written back to config.json."""

    def __init__(self, config: CfConfig, *, margin: float = REFRESH_MARGIN) -> None:
        super().__init__(config.tokens, margin=margin)
        self.config = config
        self.login_command = "cf login"
        self._warned = False

    @property
    def config_path(self) -> Path:
        return self.config.path

    @property
    def client_credentials(self) -> bool:
        return self.config.grant_type == CLIENT_CREDENTIALS

    def refresh_where(self) -> str:
        return self.config.authorization_endpoint

    def can_refresh(self) -> bool:
        if not self.config.authorization_endpoint:
            return False
        return self.client_credentials or bool(self.tokens.refresh_token)

    def refresh_request(self) -> RefreshRequest:
        c = self.config
        if not c.authorization_endpoint:
            raise UsageError(f"{c.path}: no AuthorizationEndpoint to refresh the token at: "
                             "run 'cf login' again")
        if c.ssl_disabled and not self._warned:
            self._warned = True
            print(f"pcapd: warning: not verifying the TLS certificate of {c.authorization_endpoint}"
                  f" (SSLDisabled in {c.path}, from 'cf api --skip-ssl-validation')",
                  file=sys.stderr)
            # one warning here instead of urllib3's on every request
            warnings.simplefilter("ignore", InsecureRequestWarning)
        client = (("client_id", c.client_id), ("client_secret", c.client_secret))
        url = f"{c.authorization_endpoint}/oauth/token"
        verify = not c.ssl_disabled
        if self.client_credentials:
            return RefreshRequest(url, "client_credentials", form=client, basic=None,
                                  verify=verify, login_command="cf auth")
        return RefreshRequest(url, "refresh_token", form=client,
                              basic=(c.client_id, c.client_secret), verify=verify,
                              login_command=self.login_command)

    def write_back(self, old: Tokens, new: Tokens) -> bool:
        path = self.config.path
        raw = path.read_bytes()
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError(f"{path}: no JSON object")
        if _text(document, "RefreshToken").strip() != old.refresh_token:
            return False
        stored = split_authorization(_text(document, "AccessToken"))
        if stored.access_token != old.access_token and old.refresh_token == "":
            return False  # client credentials: someone else logged in meanwhile
        document["AccessToken"] = new.authorization
        if new.refresh_token or "RefreshToken" in document:
            document["RefreshToken"] = new.refresh_token
        text = json.dumps(document, indent=2, ensure_ascii=False)
        if raw.endswith(b"\n"):
            text += "\n"
        write_atomically(path, text.encode())
        return True

