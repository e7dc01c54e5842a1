"""The cf CLI's config.json: what is read, what a missing login says, and the refresh written
back the way cf writes it (every other field and their order kept, the file's mode kept)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from pcapd.client.cfcli import (
    CfCredentials,
    cf_config_path,
    derive_api_url,
    load_cf_config,
    space_for,
)
from pcapd.client.credentials import RefreshFailed
from pcapd.errors import UsageError
from tests.client.cli_logins import SPACE_GUID, RecordingUAA, cf_document, write_cf_config
from tests.fakes.uaa import ALICE

APP_GUID = "2b4c6d8e-0a1b-4c3d-9e5f-6a7b8c9d0e1f"


def test_config_lives_in_cf_home_or_home() -> None:
    assert cf_config_path({"CF_HOME": "/x", "HOME": "/h"}) == Path("/x/.cf/config.json")
    assert cf_config_path({"HOME": "/h"}) == Path("/h/.cf/config.json")


def test_reads_target_tokens_client_and_space(tmp_path: Path) -> None:
    path = write_cf_config(tmp_path, cf_document("https://login.sys.example.com/", "eyJa",
                                                 "eyJr", UAAOAuthClient="", SSLDisabled=True))
    config = load_cf_config(path)
    assert config.target == "https://api.sys.example.com"
    assert config.authorization_endpoint == "https://login.sys.example.com"
    assert (config.tokens.access_token, config.tokens.token_type,
            config.tokens.refresh_token) == ("eyJa", "bearer", "eyJr")
    assert (config.client_id, config.client_secret) == ("cf", "")  # cf's defaults
    assert config.ssl_disabled
    assert (config.space_guid, config.space_name, config.org_name) == (SPACE_GUID, "dev",
                                                                       "my-org")
    assert space_for(config, "my-app") == SPACE_GUID
    assert "eyJ" not in repr(config)


def test_a_missing_file_says_to_log_in(tmp_path: Path) -> None:
    path = tmp_path / ".cf" / "config.json"
    with pytest.raises(UsageError) as failed:
        load_cf_config(path)
    assert str(path) in str(failed.value) and "cf login" in str(failed.value)


@pytest.mark.parametrize(("changes", "says"), [
    ({"AccessToken": ""}, "not logged in to https://api.sys.example.com: run 'cf login'"),
    ({"Target": ""}, "no API endpoint targeted: run 'cf api URL' and 'cf login'"),
])
def test_not_logged_in_says_what_to_run(tmp_path: Path, changes: dict[str, str],
                                        says: str) -> None:
    path = write_cf_config(tmp_path, cf_document("https://login", "eyJa", "eyJr", **changes))
    with pytest.raises(UsageError) as failed:
        load_cf_config(path)
    assert str(failed.value) == f"{path}: {says}"


def test_no_space_targeted_says_cf_target(tmp_path: Path) -> None:
    document = cf_document("https://login", "eyJa", "eyJr",
                           SpaceFields={"GUID": "", "Name": "", "AllowSSH": False})
    config = load_cf_config(write_cf_config(tmp_path, document))
    with pytest.raises(UsageError, match=r"no space targeted.*run 'cf target -s SPACE'"):
        space_for(config, "my-app")
    # an app guid needs no space
    assert space_for(config, APP_GUID) is None


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".cf" / "config.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(UsageError, match=f"^{path}: not valid JSON"):
        load_cf_config(path)


@pytest.mark.parametrize(("target", "api"), [
    ("https://api.sys.example.com", "https://pcap.sys.example.com"),
    ("https://api.sys.example.com/", "https://pcap.sys.example.com"),
    ("https://api.sys.example.com:8443", "https://pcap.sys.example.com:8443"),
    ("http://api.bosh-lite.com", "http://pcap.bosh-lite.com"),
    ("https://cc.sys.example.com", None),
    ("https://10.0.0.5", None),
    ("https://api.", None),
])
def test_api_is_derived_from_the_cf_target(target: str, api: str | None) -> None:
    assert derive_api_url(target) == api


def logged_in(tmp_path: Path, uaa: RecordingUAA, *, lifetime: int = 30,
              mode: int = 0o600, **changes: object) -> tuple[Path, str, str]:
    access = uaa.issue(ALICE, lifetime=lifetime)
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    path = write_cf_config(tmp_path, cf_document(uaa.url, access, refresh, **changes), mode)
    return path, access, refresh


def test_an_expiring_token_is_refreshed_and_written_back_in_place(
        tmp_path: Path, uaa: RecordingUAA) -> None:
    path, access, refresh = logged_in(tmp_path, uaa, mode=0o640)
    before = json.loads(path.read_text())
    credentials = CfCredentials(load_cf_config(path))
    assert credentials.needs_refresh(time.time())
    credentials.ensure_fresh()

    [request] = uaa.token_requests
    assert request.basic == ("cf", "")
    assert request.form == {"client_id": "cf", "client_secret": "",
                            "grant_type": "refresh_token", "refresh_token": refresh}
    after = json.loads(path.read_text())
    assert list(after) == list(before)  # same keys, same order
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"AccessToken", "RefreshToken"}
    new_access = after["AccessToken"].removeprefix("bearer ")
    assert after["AccessToken"].startswith("bearer ") and new_access != access
    assert uaa.verify(new_access) is not None
    assert after["RefreshToken"] == credentials.tokens.refresh_token != refresh
    assert credentials.tokens.access_token == new_access
    assert not credentials.needs_refresh(time.time())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(path.parent) == ["config.json"]
    assert path.read_text().startswith('{\n  "ConfigVersion": 3,')  # cf's own 2-space indent


def test_a_valid_token_is_not_refreshed(tmp_path: Path, uaa: RecordingUAA) -> None:
    path, _, _ = logged_in(tmp_path, uaa, lifetime=600)
    text = path.read_text()
    CfCredentials(load_cf_config(path)).ensure_fresh()
    assert uaa.token_requests == [] and path.read_text() == text


def test_a_newer_login_in_the_file_is_not_overwritten(tmp_path: Path,
                                                      uaa: RecordingUAA) -> None:
    path, _, _ = logged_in(tmp_path, uaa)
    credentials = CfCredentials(load_cf_config(path))
    # meanwhile the user ran `cf login` again
    other = cf_document(uaa.url, uaa.issue(ALICE), uaa.issue_refresh(ALICE, client_id="cf"))
    write_cf_config(tmp_path, other)
    credentials.ensure_fresh()
    assert json.loads(path.read_text()) == other
    assert uaa.verify(credentials.tokens.access_token) is not None  # ours is fresh anyway


def test_revoked_refresh_token_is_the_one_line_error(tmp_path: Path,
                                                     uaa: RecordingUAA) -> None:
    path, _, refresh = logged_in(tmp_path, uaa)
    uaa.revoke(refresh)
    text = path.read_text()
    with pytest.raises(RefreshFailed, match=r"^your session expired: run cf login again$"):
        CfCredentials(load_cf_config(path)).ensure_fresh()
    assert path.read_text() == text


def test_an_expired_token_without_refresh_token_says_log_in(tmp_path: Path,
                                                            uaa: RecordingUAA) -> None:
    path = write_cf_config(tmp_path, cf_document(uaa.url, uaa.expired(ALICE), ""))
    with pytest.raises(RefreshFailed, match=r"^your session expired: run cf login again$"):
        CfCredentials(load_cf_config(path)).ensure_fresh()
    assert uaa.token_requests == []


def test_ssl_disabled_skips_verification_of_uaa_with_a_warning(
        tmp_path: Path, uaa: RecordingUAA, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the fake's CA is trusted by nobody now
    path, _, _ = logged_in(tmp_path, uaa, SSLDisabled=True)
    CfCredentials(load_cf_config(path)).ensure_fresh()
    assert len(uaa.token_requests) == 1
    err = capsys.readouterr().err
    assert f"not verifying the TLS certificate of {uaa.url}" in err and "SSLDisabled" in err


def test_client_credentials_login_refreshes_with_a_new_grant(tmp_path: Path,
                                                             uaa: RecordingUAA) -> None:
    path = write_cf_config(tmp_path, cf_document(
        uaa.url, uaa.issue(None, client_id="pcap-ops", lifetime=30), "",
        UAAOAuthClient="pcap-ops", UAAOAuthClientSecret="s3cret",
        UAAGrantType="client_credentials"))
    uaa.clients["pcap-ops"] = "s3cret"
    credentials = CfCredentials(load_cf_config(path))
    credentials.ensure_fresh()
    claims = uaa.verify(credentials.tokens.access_token)
    assert claims is not None and claims["client_id"] == "pcap-ops"
    [request] = uaa.token_requests
    assert request.basic is None
    assert request.body == b"client_id=pcap-ops&client_secret=s3cret&grant_type=client_credentials"
