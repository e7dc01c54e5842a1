"""The one acceptance rule for every request (issue 12, hole 3): audience, scopes, client,
access tokens only. Pure: tokens signed here, verified with :func:`pcapd.tokens.verify`."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pcapd.api.bosh import BoshResolver
from pcapd.api.cf import CfResolver
from pcapd.config.model import BoshConfig, BoshTokensConfig, CfConfig, CfTokensConfig
from pcapd.tokens import Acceptance, Unauthenticated, verify

ISSUER = "https://uaa.sys.example.com/oauth/token"
NOW = 1_700_000_000
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rule(kind: str, **config: Any) -> Acceptance:
    """The rule the resolvers build from their config section."""
    if kind == "cf":
        return CfResolver(CfConfig(api="https://api.example.com", **config), None, 0).accept  # type: ignore[arg-type]
    return BoshResolver(BoshConfig(director="https://10.0.0.6:25555", **config), None, 0).accept  # type: ignore[arg-type]


def token(client: str = "cf", scopes: tuple[str, ...] = ("openid", "cloud_controller.read"),
          typ: str = "JWT", **extra: Any) -> str:
    claims = {"jti": "j1", "sub": "u1", "user_id": "u1", "user_name": "alice",
              "client_id": client, "cid": client, "azp": client, "scope": list(scopes),
              "aud": [*{s.split(".")[0] for s in scopes}, client], "iss": ISSUER,
              "iat": NOW, "exp": NOW + 600} | extra
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k", "typ": typ})


def check(raw: str, accept: Acceptance) -> None:
    verify(raw, {"k": KEY.public_key()}, issuer=ISSUER, now=NOW, accept=accept)


def test_the_cli_tokens_pass_their_platform_and_only_theirs() -> None:
    cf, bosh = rule("cf"), rule("bosh")
    check(token(), cf)
    check(token("bosh_cli", ("openid", "bosh.teams.team-a.admin")), bosh)
    with pytest.raises(Unauthenticated, match="not for BOSH"):
        check(token(), bosh)
    with pytest.raises(Unauthenticated, match="not for Cloud Foundry"):
        check(token("bosh_cli", ("openid", "bosh.admin")), cf)


@pytest.mark.parametrize(("raw", "words"), [
    (token("some-dashboard", ("openid",)), "issued for openid, some-dashboard"),
    (token(scopes=("openid", "cloud_controller.write")), "none of the scopes"),
    (token(aud="cf", scope=["openid"]), "issued for cf"),
    (token(nonce="n-0S6"), "an id token is not an access token"),
    (token(at_hash="77Qm"), "an id token is not an access token"),
    (token(typ="id_token+jwt"), "an id token is not an access token"),
])
def test_tokens_for_something_else_are_refused(raw: str, words: str) -> None:
    with pytest.raises(Unauthenticated, match=words) as info:
        check(raw, rule("cf"))
    assert raw.split(".")[1] not in str(info.value) and "`cf login`" in str(info.value)


@pytest.mark.parametrize(("kind", "raw", "accepted"), [
    ("cf", token("some-dashboard"), "cf"),  # the audience and a scope cf's tokens carry
    ("cf", token("stratos", ("openid", "cloud_controller.admin")), "cf"),
    ("bosh", token("ci", ("bosh.admin",)), "bosh_cli"),  # a client-credentials login
    ("bosh", token("ci", ("bosh.admin",), client_id=None, cid=None, azp=None), "bosh_cli"),
])
def test_by_default_only_the_cli_clients_tokens_pass(kind: str, raw: str,
                                                     accepted: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        check(raw, rule(kind))
    text = str(info.value)
    assert "which this api does not accept" in text and f"(it accepts {accepted})" in text
    assert f"add the client to {kind}.tokens.clients" in text
    assert raw.split(".")[1] not in text


def test_the_client_is_read_from_client_id_cid_or_azp() -> None:
    for claim in ("client_id", "cid", "azp"):
        only = {name: ("cf" if name == claim else None) for name in ("client_id", "cid", "azp")}
        check(token("x", **only), rule("cf"))


def test_operators_can_name_their_clients_audiences_and_scopes() -> None:
    check(token("ci", ("bosh.admin",)), rule("bosh", tokens=BoshTokensConfig(
        clients=("bosh_cli", "ci"))))
    narrow = rule("cf", tokens=CfTokensConfig(clients=("cf",)))
    check(token(), narrow)
    with pytest.raises(Unauthenticated, match="OAuth client 'stratos'"):
        check(token("stratos"), narrow)
    anyone = rule("cf", tokens=CfTokensConfig(clients=("*",)))
    check(token("stratos"), anyone)
    with pytest.raises(Unauthenticated, match="issued for openid, stratos"):  # aud still holds
        check(token("stratos", ("openid",)), anyone)
    other = rule("cf", tokens=CfTokensConfig(audiences=("cc",), scopes=("cc.*",)))
    check(token(scopes=("cc.read",)), other)
    with pytest.raises(Unauthenticated):
        check(token(), other)
