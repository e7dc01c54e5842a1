"""Borrowed logins: token expiry read without verification, the refresh request exactly as the
CLIs send it (against the fake UAA over real HTTPS), UAA's refusals as one line, atomic writes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from pcapd.client.credentials import (
    RefreshFailed,
    RefreshRequest,
    Tokens,
    needs_refresh,
    post_refresh,
    refresh_time,
    split_authorization,
    token_expiry,
    write_atomically,
)
from tests.client.cli_logins import RecordingUAA
from tests.fakes.uaa import ALICE


def unsigned(claims: dict[str, object]) -> str:
    return jwt.encode(claims, "not-a-uaa-key-but-long-enough-for-hs256", algorithm="HS256")


def test_expiry_is_read_from_any_jwt_without_verifying_it() -> None:
    # signed with a key the client cannot know: the client reads exp anyway
    assert token_expiry(unsigned({"exp": 1_700_000_000})) == 1_700_000_000
    assert token_expiry(unsigned({"exp": 1_700_000_000.5})) == 1_700_000_000.5
    # an expired token is still readable: that is the point
    assert token_expiry(unsigned({"exp": 1})) == 1
    for opaque in ("", "not-a-jwt", "a.b.c", unsigned({"sub": "x"}), unsigned({"exp": "soon"}),
                   unsigned({"exp": True})):
        assert token_expiry(opaque) is None


@pytest.mark.parametrize(("expires_in", "due"), [
    (3600, False), (61, False), (60, True), (30, True), (0, True), (-600, True)])
def test_a_token_expiring_within_the_margin_needs_a_refresh(expires_in: int, due: bool) -> None:
    now = 1_700_000_000.0
    token = unsigned({"iat": int(now) - 600, "exp": int(now) + expires_in})
    assert needs_refresh(token, now, margin=60) is due


def test_a_token_of_unknown_expiry_is_used_as_it_is() -> None:
    assert not needs_refresh("opaque-token", time.time())
    assert refresh_time("opaque-token") is None


def test_refresh_is_scheduled_before_expiry_but_not_in_the_first_half_of_a_short_life() -> None:
    assert refresh_time(unsigned({"iat": 1000, "exp": 1600}), margin=60) == 1540
    # bosh_cli tokens live 120 s: refreshed at 60 s; a 30 s token at 15 s, not continuously
    assert refresh_time(unsigned({"iat": 1000, "exp": 1120}), margin=60) == 1060
    assert refresh_time(unsigned({"iat": 1000, "exp": 1030}), margin=60) == 1015
    assert refresh_time(unsigned({"exp": 1030}), margin=60) == 970


def test_tokens_never_show_in_a_repr() -> None:
    tokens = Tokens("eyJsecretaccess", "bearer", "eyJsecretrefresh")
    assert "secret" not in repr(tokens) and "secret" not in str(tokens)
    assert tokens.authorization == "bearer eyJsecretaccess"


def test_the_cf_access_token_field_splits_into_type_and_token() -> None:
    assert split_authorization("bearer eyJabc") == Tokens("eyJabc", "bearer")
    assert split_authorization("Bearer eyJabc ") == Tokens("eyJabc", "bearer")
    assert split_authorization("eyJabc") == Tokens("eyJabc", "bearer")


def cf_request(uaa: RecordingUAA, **kw: object) -> RefreshRequest:
    fields: dict[str, object] = {
        "form": (("client_id", "cf"), ("client_secret", "")), "basic": ("cf", ""),
        "login_command": "cf login"}
    fields.update(kw)
    return RefreshRequest(f"{uaa.url}/oauth/token", "refresh_token", **fields)  # type: ignore[arg-type]


def test_cf_refresh_sends_exactly_what_the_cf_cli_sends(uaa: RecordingUAA) -> None:
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    tokens = post_refresh(cf_request(uaa), refresh)
    [request] = uaa.token_requests
    assert request.path == "/oauth/token"
    assert request.basic == ("cf", "")
    assert request.accept == "application/json"
    assert request.content_type == "application/x-www-form-urlencoded"
    # url.Values.Encode() sorts by key: the cf CLI's body, byte for byte
    assert request.body == (b"client_id=cf&client_secret=&grant_type=refresh_token"
                            b"&refresh_token=" + refresh.encode())
    claims = uaa.verify(tokens.access_token)
    assert claims is not None and claims["user_name"] == "alice" and claims["cid"] == "cf"
    assert tokens.token_type == "bearer"
    assert tokens.refresh_token and tokens.refresh_token != refresh


def test_bosh_refresh_sends_exactly_what_the_bosh_cli_sends(uaa: RecordingUAA) -> None:
    refresh = uaa.issue_refresh(ALICE, client_id="bosh_cli")
    request = RefreshRequest(f"{uaa.url}/oauth/token", "refresh_token", basic=("bosh_cli", ""),
                             login_command="bosh -e bosh log-in")
    tokens = post_refresh(request, refresh)
    [sent] = uaa.token_requests
    assert (sent.path, sent.basic, sent.accept) == ("/oauth/token", ("bosh_cli", ""),
                                                    "application/json")
    assert sent.body == b"grant_type=refresh_token&refresh_token=" + refresh.encode()
    claims = uaa.verify(tokens.access_token)
    assert claims is not None and claims["cid"] == "bosh_cli"


def test_client_credentials_grant_carries_the_client_in_the_form_only(
        uaa: RecordingUAA) -> None:
    uaa.clients["pcap-ops"] = "s3cr&t"
    request = RefreshRequest(f"{uaa.url}/oauth/token", "client_credentials",
                             form=(("client_id", "pcap-ops"), ("client_secret", "s3cr&t")))
    tokens = post_refresh(request, "")
    claims = uaa.verify(tokens.access_token)
    assert claims is not None and claims["client_id"] == "pcap-ops"
    assert tokens.refresh_token == ""  # the grant gives none: the next one is a new grant
    [sent] = uaa.token_requests
    assert sent.basic is None
    assert sent.body == b"client_id=pcap-ops&client_secret=s3cr%26t&grant_type=client_credentials"


def test_an_expired_or_revoked_refresh_token_is_one_clear_line(uaa: RecordingUAA) -> None:
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    uaa.revoke(refresh)
    with pytest.raises(RefreshFailed) as failed:
        post_refresh(cf_request(uaa), refresh)
    assert str(failed.value) == "your session expired: run cf login again"
    assert failed.value.permanent
    expired = uaa.issue_refresh(ALICE, client_id="cf", lifetime=-10)
    with pytest.raises(RefreshFailed, match=r"^your session expired: run cf login again$"):
        post_refresh(cf_request(uaa), expired)


def test_other_refusals_name_the_status_but_never_echo_uaa(uaa: RecordingUAA) -> None:
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    with pytest.raises(RefreshFailed) as failed:
        post_refresh(cf_request(uaa, basic=("cf", "wrong")), refresh)
    text = str(failed.value)
    assert "HTTP 401 unauthorized" in text and "run cf login again" in text
    assert "Bad credentials" not in text and refresh not in text
    assert "\n" not in text


def test_a_uaa_outage_is_transient_and_a_bad_certificate_is_not(uaa: RecordingUAA) -> None:
    from tests.fakes.http import json_response

    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    uaa.inject("/oauth/token", json_response(503, {"error": "unavailable"}))
    with pytest.raises(RefreshFailed, match=r"\(HTTP 503 unavailable\)") as failed:
        post_refresh(cf_request(uaa), refresh)
    assert not failed.value.permanent
    with pytest.raises(RefreshFailed, match="cannot reach UAA") as failed:
        post_refresh(RefreshRequest("https://127.0.0.1:1/oauth/token", "refresh_token"),
                     refresh)
    assert not failed.value.permanent
    with pytest.raises(RefreshFailed, match="cannot verify the TLS certificate") as failed:
        post_refresh(cf_request(uaa, verify=os.devnull), refresh)
    assert failed.value.permanent


def test_no_refresh_token_goes_over_plain_http(uaa: RecordingUAA) -> None:
    request = RefreshRequest(f"http://127.0.0.1:{uaa.port}/oauth/token", "refresh_token")
    with pytest.raises(RefreshFailed, match="without TLS") as failed:
        post_refresh(request, "eyJrefresh")
    assert failed.value.permanent
    assert uaa.token_requests == []


def test_atomic_write_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("old")
    path.chmod(0o640)
    write_atomically(path, b"new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_write_follows_a_symlinked_config(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "config"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "config"
    link.symlink_to(real)
    write_atomically(link, b"new")
    assert link.is_symlink() and real.read_text() == "new"
