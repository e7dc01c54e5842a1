"""The bosh CLI's config: environments found by alias or URL as bosh finds them, the refresh at
the UAA the director names in ``/info`` (checked with the environment's ``ca_cert``), and the new
tokens written back into that one environment."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from pcapd.client.boshcli import (
    BoshCredentials,
    bosh_config_path,
    director_url,
    load_bosh_environment,
)
from pcapd.client.credentials import RefreshFailed
from pcapd.errors import UsageError
from tests.client.cli_logins import RecordingUAA, write_bosh_config
from tests.fakes.director import FakeDirector
from tests.fakes.http import json_response
from tests.fakes.uaa import ALICE


@pytest.fixture
def tls_uaa(ca: trustme.CA) -> Iterator[RecordingUAA]:
    """Trusted by no default store: only through the environment's ca_cert."""
    with RecordingUAA(tls=ca) as fake:
        yield fake


@pytest.fixture
def director(tls_uaa: RecordingUAA, ca: trustme.CA) -> Iterator[FakeDirector]:
    with FakeDirector(tls_uaa, tls=ca) as fake:
        yield fake


def environment(url: str, alias: str, *, access: str = "eyJa", refresh: str = "eyJr",
                ca_cert: str | None = None, **more: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"url": url}
    if ca_cert is not None:
        entry["ca_cert"] = ca_cert
    entry.update({"alias": alias, "access_token": access, "access_token_type": "bearer",
                  "refresh_token": refresh})
    entry.update(more)
    return entry


def test_config_is_bosh_config_or_home() -> None:
    assert bosh_config_path({"BOSH_CONFIG": "/x/cfg", "HOME": "/h"}) == Path("/x/cfg")
    assert bosh_config_path({"HOME": "/h"}) == Path("/h/.bosh/config")


@pytest.mark.parametrize(("text", "parsed"), [
    ("10.0.0.6", ("https", "10.0.0.6", 25555)),
    ("https://10.0.0.6", ("https", "10.0.0.6", 25555)),
    ("https://10.0.0.6:25555/", ("https", "10.0.0.6", 25555)),
    ("10.0.0.6:443", ("https", "10.0.0.6", 443)),
    ("https://Director.Example.com:8443", ("https", "director.example.com", 8443)),
    ("", None), ("ftp://x", None), ("https://x:99999", None),
])
def test_director_urls_default_to_https_and_25555(
        text: str, parsed: tuple[str, str, int] | None) -> None:
    assert director_url(text) == parsed


@pytest.fixture
def two_environments(tmp_path: Path) -> Path:
    return write_bosh_config(tmp_path / "config", [
        environment("https://10.0.0.6:25555", "bosh", access="eyJ1"),
        environment("https://192.168.56.6", "lite", access="eyJ2"),
    ])


@pytest.mark.parametrize(("name", "token"), [
    ("bosh", "eyJ1"), ("lite", "eyJ2"),
    ("https://10.0.0.6:25555", "eyJ1"), ("10.0.0.6", "eyJ1"), ("10.0.0.6:25555", "eyJ1"),
    ("192.168.56.6:25555", "eyJ2"), ("https://192.168.56.6", "eyJ2"),
])
def test_environment_is_found_by_alias_or_url(two_environments: Path, name: str,
                                              token: str) -> None:
    env = load_bosh_environment(two_environments, name)
    assert env.tokens.access_token == token
    assert env.url in ("https://10.0.0.6:25555", "https://192.168.56.6:25555")
    assert "eyJ" not in repr(env)


def test_an_unknown_or_missing_environment_lists_the_aliases(two_environments: Path) -> None:
    with pytest.raises(UsageError, match=r"no environment 'prod' \(aliases: bosh, lite\)"):
        load_bosh_environment(two_environments, "prod")
    with pytest.raises(UsageError, match=r"-e ALIAS \(or BOSH_ENVIRONMENT\).*bosh, lite"):
        load_bosh_environment(two_environments, None)


def test_missing_file_and_missing_login_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no bosh CLI config here.*log-in"):
        load_bosh_environment(tmp_path / "nothing", "bosh")
    path = write_bosh_config(tmp_path / "config", [
        {"url": "https://10.0.0.6:25555", "alias": "bosh"},
        {"url": "https://10.0.0.7:25555", "alias": "basic", "username": "admin",
         "password": "x"}])
    with pytest.raises(UsageError, match="not logged in to bosh: run 'bosh -e bosh log-in'"):
        load_bosh_environment(path, "bosh")
    with pytest.raises(UsageError, match=r"user name and password.*needs a UAA login"):
        load_bosh_environment(path, "basic")


def logged_in(tmp_path: Path, uaa: RecordingUAA, director: FakeDirector, ca: trustme.CA,
              *, lifetime: int = 30) -> tuple[Path, str, str]:
    access = uaa.issue(ALICE, client_id="bosh_cli", lifetime=lifetime)
    refresh = uaa.issue_refresh(ALICE, client_id="bosh_cli")
    path = write_bosh_config(tmp_path / ".bosh" / "config", [
        environment("https://10.0.0.9:25555", "other", access="eyJother", refresh="eyJo",
                    ca_cert="-----BEGIN CERTIFICATE-----\nother\n-----END CERTIFICATE-----\n",
                    unknown_key="kept"),
        environment(director.url, "test", access=access, refresh=refresh,
                    ca_cert=ca.cert_pem.bytes().decode()),
    ], mode=0o600)
    return path, access, refresh


def test_refresh_asks_the_director_for_its_uaa_and_writes_back_one_environment(
        tmp_path: Path, tls_uaa: RecordingUAA, director: FakeDirector,
        ca: trustme.CA) -> None:
    path, access, refresh = logged_in(tmp_path, tls_uaa, director, ca)
    before = yaml.safe_load(path.read_text())
    credentials = BoshCredentials(load_bosh_environment(path, "test"))
    try:
        assert credentials.needs_refresh(time.time())
        credentials.ensure_fresh()
    finally:
        credentials.close()

    assert director.count("/info", "GET") == 1
    [request] = tls_uaa.token_requests
    assert (request.path, request.basic, request.accept) == ("/oauth/token", ("bosh_cli", ""),
                                                             "application/json")
    assert request.body == b"grant_type=refresh_token&refresh_token=" + refresh.encode()

    after = yaml.safe_load(path.read_text())
    assert after["environments"][0] == before["environments"][0]  # the other one untouched
    old, new = before["environments"][1], after["environments"][1]
    assert list(new) == list(old)
    assert {k for k in old if old[k] != new[k]} == {"access_token", "refresh_token"}
    assert new["access_token"] != access and tls_uaa.verify(new["access_token"]) is not None
    assert new["refresh_token"] == credentials.tokens.refresh_token != refresh
    assert new["ca_cert"] == old["ca_cert"]
    assert "ca_cert: |" in path.read_text()  # PEM as a block, as bosh writes it
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["config"]


def test_a_director_without_uaa_cannot_refresh(tmp_path: Path, tls_uaa: RecordingUAA,
                                               director: FakeDirector, ca: trustme.CA) -> None:
    path, _, _ = logged_in(tmp_path, tls_uaa, director, ca)
    director.inject("/info", json_response(200, {
        "name": "x", "user_authentication": {"type": "basic", "options": {}}}))
    credentials = BoshCredentials(load_bosh_environment(path, "test"))
    with pytest.raises(RefreshFailed, match="does not use UAA"):
        credentials.ensure_fresh()
    credentials.close()
    assert tls_uaa.token_requests == []


def test_revoked_refresh_token_says_log_in_to_that_environment(
        tmp_path: Path, tls_uaa: RecordingUAA, director: FakeDirector, ca: trustme.CA) -> None:
    path, _, refresh = logged_in(tmp_path, tls_uaa, director, ca)
    tls_uaa.revoke(refresh)
    credentials = BoshCredentials(load_bosh_environment(path, "test"))
    with pytest.raises(RefreshFailed,
                       match=r"^your session expired: run bosh -e test log-in again$"):
        credentials.ensure_fresh()
    credentials.close()


def test_the_director_is_checked_with_the_environments_ca(
        tmp_path: Path, tls_uaa: RecordingUAA, director: FakeDirector, ca: trustme.CA) -> None:
    path, _, _ = logged_in(tmp_path, tls_uaa, director, ca)
    document = yaml.safe_load(path.read_text())
    document["environments"][1]["ca_cert"] = trustme.CA().cert_pem.bytes().decode()
    path.write_text(yaml.safe_dump(document))
    credentials = BoshCredentials(load_bosh_environment(path, "test"))
    with pytest.raises(RefreshFailed, match="cannot verify the TLS certificate of the director"):
        credentials.ensure_fresh()
    credentials.close()
