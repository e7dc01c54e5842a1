"""Logins for the client tests: a UAA that shows what its token endpoint received, and cf /
bosh CLI config files as the CLIs write them."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import yaml

from tests.fakes.http import Request, Response
from tests.fakes.uaa import FakeUAA

SPACE_GUID = "5a3c8ad0-8d5e-4a3a-9a55-0d7a6f0e8c11"
ORG_GUID = "1f0e1c2d-3b4a-4c5d-8e9f-a0b1c2d3e4f5"


@dataclass(frozen=True)
class TokenRequest:
    """One ``POST /oauth/token`` as the fake UAA received it."""

    path: str
    basic: tuple[str, str] | None
    accept: str | None
    content_type: str | None
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode(), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}


class RecordingUAA(FakeUAA):
    """FakeUAA that also keeps each token request's Basic user, headers and exact body."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.token_requests: list[TokenRequest] = []
        self._recording = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path.rstrip("/") == "/oauth/token":
            basic = None
            value = request.header("Authorization") or ""
            scheme, _, encoded = value.partition(" ")
            if scheme.lower() == "basic":
                user, _, secret = base64.b64decode(encoded).decode().partition(":")
                basic = (user, secret)
            with self._recording:
                self.token_requests.append(TokenRequest(
                    request.path, basic, request.header("Accept"),
                    request.header("Content-Type"), request.body))
        return super().handle(request)


def cf_document(uaa_url: str, access: str, refresh: str, **changes: Any) -> dict[str, Any]:
    """config.json as cf CLI v8 writes it (reference external-apis §2.10)."""
    document: dict[str, Any] = {
        "ConfigVersion": 3, "Target": "https://api.sys.example.com", "APIVersion": "3.90.0",
        "AuthorizationEndpoint": uaa_url, "UaaEndpoint": uaa_url,
        "DopplerEndPoint": "wss://doppler.sys.example.com:443",
        "LogCacheEndPoint": "https://log-cache.sys.example.com",
        "RoutingAPIEndpoint": "https://api.sys.example.com/routing",
        "AccessToken": f"bearer {access}" if access else "", "RefreshToken": refresh,
        "UAAOAuthClient": "cf", "UAAOAuthClientSecret": "", "UAAGrantType": "",
        "SSHOAuthClient": "ssh-proxy", "SSLDisabled": False, "AsyncTimeout": 0, "Trace": "",
        "ColorEnabled": "", "Locale": "", "MinCLIVersion": "", "MinRecommendedCLIVersion": "",
        "OrganizationFields": {"GUID": ORG_GUID, "Name": "my-org"},
        "SpaceFields": {"GUID": SPACE_GUID, "Name": "dev", "AllowSSH": True},
        "PluginRepos": [],
    }
    document.update(changes)
    return document


def write_cf_config(cf_home: Path, document: dict[str, Any], mode: int = 0o600) -> Path:
    path = cf_home / ".cf" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    path.chmod(mode)
    return path


def write_bosh_config(path: Path, environments: list[dict[str, Any]], mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"environments": environments}, sort_keys=False))
    path.chmod(mode)
    return path
