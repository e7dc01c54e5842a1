"""The api's token verifier against the fake UAA: real HTTP on loopback, real keys, rotation.

The fake serves in a thread, so these tests run on Trio's real clock (the autojump clock and
real sockets do not mix); the token's notion of "now" is moved with ``clock=`` instead, and
rate limits are shown with short intervals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pcapd.api.auth import IdentityProviderUnavailable, TokenVerifier, authorization_from_headers
from pcapd.tokens import Unauthenticated, UnknownSigningKey
from tests.fakes.http import Response
from tests.fakes.uaa import ALICE, BOB, FakeUAA

STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def uaa() -> Iterator[FakeUAA]:
    with FakeUAA() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def fetches(uaa: FakeUAA) -> int:
    return uaa.count("/token_keys", "GET")


def unknown_kid_token(uaa: FakeUAA, kid: str = "k9") -> str:
    return jwt.encode(uaa.claims(ALICE), STRANGER, algorithm="RS256", headers=uaa.header(kid))


async def test_verifies_tokens_the_uaa_issued(uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url + "/", http=http)
    assert verifier.issuer == uaa.issuer
    with trio.fail_after(10):
        alice = await verifier.verify(uaa.issue(ALICE))
        bosh = await verifier.verify(uaa.issue(BOB, client_id="bosh_cli"))
        client = await verifier.verify(uaa.issue(None, client_id="pcap-ops",
                                                 scopes=["bosh.admin"]))
    assert (alice.user_name, alice.user_id, alice.client_id) == ("alice", ALICE.user_id, "cf")
    assert "cloud_controller.read" in alice.scopes and alice.origin == "uaa"
    assert bosh.scopes == {"openid", "bosh.admin"} and bosh.client_id == "bosh_cli"
    assert client.is_client and client.user_name == "pcap-ops"
    assert fetches(uaa) == 1  # cached after the first
    assert verifier.statistics().verified == 3


async def test_a_rotated_key_costs_one_refetch(uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http)
    with trio.fail_after(10):
        old = uaa.issue(ALICE)
        await verifier.verify(old)
        assert fetches(uaa) == 1
        uaa.rotate()
        new = uaa.issue(ALICE)
        assert (await verifier.verify(new)).user_name == "alice"
        assert fetches(uaa) == 2
        await verifier.verify(old)  # both keys listed during the rotation
        await verifier.verify(new)
    assert fetches(uaa) == 2
    assert verifier.statistics().key_ids == ("key-1", "key-2")


async def test_concurrent_tokens_of_a_new_key_share_one_fetch(
        uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http)
    names: list[str] = []

    async def one(token: str) -> None:
        names.append((await verifier.verify(token)).user_name)

    with trio.fail_after(10):
        await verifier.load_keys()
        uaa.rotate()
        token = uaa.issue(ALICE)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one, token)
    assert names == ["alice"] * 10
    assert fetches(uaa) == 2


async def test_an_unknown_key_is_fetched_for_at_most_once_per_interval(
        uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http, refetch_interval=0.5)
    token = unknown_kid_token(uaa)
    with trio.fail_after(10):
        await verifier.verify(uaa.issue(ALICE))
        for _ in range(10):
            with pytest.raises(UnknownSigningKey, match="unknown signing key 'k9'"):
                await verifier.verify(token)
        assert fetches(uaa) == 2  # the first, and one for k9

        async def one() -> None:
            with pytest.raises(UnknownSigningKey):
                await verifier.verify(unknown_kid_token(uaa, "k10"))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        assert fetches(uaa) == 2  # still within the interval
        await trio.sleep(0.6)
        with pytest.raises(UnknownSigningKey):
            await verifier.verify(token)
        assert fetches(uaa) == 3  # the interval passed: one more
        await verifier.verify(uaa.issue(ALICE))  # known keys never wait for the limit
    assert fetches(uaa) == 3


async def test_forgeries_are_refused_without_asking_the_uaa(
        uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http)
    with trio.fail_after(10):
        for token in (uaa.forge_none(ALICE), uaa.forge_hmac(ALICE)):
            with pytest.raises(Unauthenticated, match="unsupported signing algorithm"):
                await verifier.verify(token)
        with pytest.raises(Unauthenticated, match="malformed token"):
            await verifier.verify("not-a-token")
        assert fetches(uaa) == 0
        with pytest.raises(Unauthenticated, match="signature does not match"):
            await verifier.verify(uaa.forge_unknown_key(ALICE))
    assert fetches(uaa) == 1


async def test_refresh_expired_and_foreign_tokens_are_refused(
        uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http)
    with trio.fail_after(10):
        with pytest.raises(Unauthenticated, match="a refresh token is not an access token"):
            await verifier.verify(uaa.issue_refresh(ALICE))
        with pytest.raises(Unauthenticated, match=r"the token expired at .* UTC: log in again"):
            await verifier.verify(uaa.expired(ALICE))
        evil = uaa.url.replace("127.0.0.1", "127.0.0.1.evil.net") + "/oauth/token"
        with pytest.raises(Unauthenticated, match="the token was issued by https?://127.0.0.1"
                                                  r"\.evil\.net"):
            await verifier.verify(uaa.issue(ALICE, issuer=evil))
        other_port = TokenVerifier(uaa_url=uaa.url.rsplit(":", 1)[0] + ":1", http=http)
        other_port._keys = verifier._keys  # same keys, another UAA: the issuer still differs
        other_port._loaded_at = trio.current_time()
        with pytest.raises(Unauthenticated, match="not by this platform's UAA"):
            await other_port.verify(uaa.issue(ALICE))


async def test_now_comes_from_the_injected_clock(uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    later = TokenVerifier(uaa_url=uaa.url, http=http, clock=lambda: time.time() + 3600)
    with trio.fail_after(10):
        token = uaa.issue(ALICE, lifetime=600)
        with pytest.raises(Unauthenticated, match="expired"):
            await later.verify(token)
        skewed = TokenVerifier(uaa_url=uaa.url, http=http, clock=lambda: time.time() + 620,
                               leeway=30)
        assert (await skewed.verify(token)).user_name == "alice"


async def test_an_unreachable_uaa_is_not_the_users_fault(http: httpx.AsyncClient) -> None:
    with FakeUAA() as uaa:
        token = uaa.issue(ALICE)
        url = uaa.url
    verifier = TokenVerifier(uaa_url=url, http=http, refetch_interval=60)
    with trio.fail_after(10):
        for _ in range(3):
            with pytest.raises(IdentityProviderUnavailable) as info:
                await verifier.verify(token)
            assert info.value.code == "START_CAPTURE_FAILED"
            assert str(info.value).startswith(f"cannot reach the UAA at {url}/token_keys")
            assert token not in str(info.value)
    stats = verifier.statistics()
    assert (stats.fetches, stats.failures) == (1, 1)  # the failure is remembered too


@pytest.mark.parametrize(("response", "message"), [
    (Response(503, b"down", "text/plain"), "answered HTTP 503"),
    (Response(200, b"<html>", "text/html"), "sent an unusable key set: the key set is not JSON"),
    (Response(200, b'{"keys": [{"kty": "MAC", "kid": "legacy", "value": "x"}]}'),
     "lists no RS256 signing key"),
])
async def test_a_uaa_with_a_bad_answer_is_unavailable(
        uaa: FakeUAA, http: httpx.AsyncClient, response: Response, message: str) -> None:
    uaa.inject("/token_keys", response)
    verifier = TokenVerifier(uaa_url=uaa.url, http=http, refetch_interval=0.2)
    token = uaa.issue(ALICE)
    with trio.fail_after(10):
        with pytest.raises(IdentityProviderUnavailable, match=message):
            await verifier.verify(token)
        await trio.sleep(0.3)
        assert (await verifier.verify(token)).user_name == "alice"  # answered well again


async def test_old_keys_are_dropped_once_the_uaa_retires_them(
        uaa: FakeUAA, http: httpx.AsyncClient) -> None:
    verifier = TokenVerifier(uaa_url=uaa.url, http=http, max_key_age=0.3, refetch_interval=0.1)
    old = uaa.issue(ALICE)
    with trio.fail_after(10):
        await verifier.verify(old)
        uaa.rotate()
        uaa.retire("key-1")
        await verifier.verify(old)  # cached key, not yet stale
        await trio.sleep(0.4)
        with pytest.raises(UnknownSigningKey, match="'key-1'"):
            await verifier.verify(old)
        assert (await verifier.verify(uaa.issue(ALICE))).user_name == "alice"
    assert fetches(uaa) == 2


async def test_stale_keys_are_kept_while_the_uaa_is_down(http: httpx.AsyncClient) -> None:
    with FakeUAA() as uaa:
        token = uaa.issue(ALICE)
        verifier = TokenVerifier(uaa_url=uaa.url, http=http, max_key_age=0.1)
        with trio.fail_after(10):
            await verifier.verify(token)
    with trio.fail_after(10):
        await trio.sleep(0.2)
        assert (await verifier.verify(token)).user_name == "alice"
        assert (await verifier.verify(token)).user_name == "alice"
    stats = verifier.statistics()
    assert (stats.fetches, stats.failures) == (2, 1)  # no retry within refetch_interval


async def test_tokens_never_reach_the_log(uaa: FakeUAA, http: httpx.AsyncClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = TokenVerifier(uaa_url=uaa.url, http=http)
    tokens = [uaa.issue(ALICE), uaa.forge_hmac(ALICE), uaa.expired(BOB), unknown_kid_token(uaa)]
    with trio.fail_after(10):
        for token in tokens:
            try:
                await verifier.verify(token)
            except Unauthenticated:
                pass
    assert "alice" in caplog.text and ALICE.user_id in caplog.text
    for token in tokens:
        for part in token.split("."):
            assert part not in caplog.text


def test_authorization_from_handshake_headers() -> None:
    headers = [(b"host", b"api"), (b"AUTHORIZATION", b"bearer eyJ.a.b"), (b"x", b"y")]
    assert authorization_from_headers(headers) == "bearer eyJ.a.b"
    assert authorization_from_headers(((b"host", b"api"),)) is None
    assert authorization_from_headers([(b"Authorization", b"Bearer a"),
                                       (b"authorization", b"Bearer b")]) == "Bearer a, Bearer b"


async def test_a_token_never_chooses_where_its_key_comes_from(uaa: FakeUAA,
                                                              http: httpx.AsyncClient) -> None:
    """A forged token signed with the attacker's key, naming the attacker's key server in
    ``jku``: the api must not fetch it (and must refuse the token)."""
    with FakeUAA(fresh_keys=True) as attacker:
        header = {**attacker.header(), "jku": f"{attacker.url}/token_keys"}
        forged = jwt.encode(uaa.claims(ALICE), attacker.key().private, algorithm="RS256",
                            headers=header)
        verifier = TokenVerifier(uaa_url=uaa.url, http=http)
        with trio.fail_after(10), pytest.raises(Unauthenticated):
            await verifier.verify(forged)
        assert attacker.count("/token_keys", "GET") == 0
        assert fetches(uaa) >= 1  # only the configured UAA was asked
