"""What every resolver shares: local mode's resolver, the platform resolver's routing of a
target to Cloud Foundry or BOSH, and the HTTP glue's refusals (never the token).

The platforms themselves are tested against fakes in ``test_cf.py`` and ``test_bosh.py``; here
a platform is a small stand-in that answers ``identify`` as it is told, and the HTTP glue talks
to a real server on loopback that answers one fixed response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import httpx
import pytest
import trio

from pcapd.api.agents import AgentJob
from pcapd.api.resolve import LOCAL_USER, LocalResolver, PlatformResolver, get_json
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, BoshTarget, CaptureOptions, CfTarget, LocalTarget, Start
from pcapd.tokens import Identity
from tests.api.resolving import GUARD, closed_port_url

OPTIONS = CaptureOptions(device="eth0")
LOCAL = Start(target=LocalTarget(netns=["blue", "red"]), options=OPTIONS)
CF = Start(target=CfTarget(app="my-app"), options=OPTIONS)
BOSH = Start(target=BoshTarget(deployment="cf", groups=["router"]), options=OPTIONS)


def job(host: str, port: int, label: str) -> AgentJob:
    return AgentJob(host, port, AgentTarget(namespace=label, source=label), origin=label)


async def refusal(call: Awaitable[object]) -> tuple[str, str]:
    with trio.fail_after(GUARD), pytest.raises(Refusal) as info:
        await call
    return info.value.code, info.value.text


async def test_local_mode_captures_the_requests_namespaces_on_the_embedded_agent() -> None:
    resolver = LocalResolver([("127.0.0.1", 9494, None), ("10.0.0.2", 9494, None)],
                             from_request=True)
    resolution = await resolver.resolve(LOCAL, None)
    assert resolution.jobs == [job("127.0.0.1", 9494, "blue"), job("127.0.0.1", 9494, "red")]
    assert resolution.target == "local:blue,red"
    host = await resolver.resolve(Start(target=LocalTarget(), options=OPTIONS), None)
    assert (host.jobs, host.target) == ([job("127.0.0.1", 9494, "host")], "local:host")
    assert await resolver.identify(None) is LOCAL_USER


async def test_local_mode_with_agents_given_captures_each_as_given() -> None:
    resolver = LocalResolver([("10.0.0.1", 9494, None), ("fd00::2", 9595, "blue")],
                             from_request=False)
    resolution = await resolver.resolve(LOCAL, None)  # the request's namespaces do not count
    assert resolution.jobs == [job("10.0.0.1", 9494, "host"), job("fd00::2", 9595, "blue")]
    assert resolution.target == "local:host,blue"


async def test_local_mode_refuses_platform_targets_and_tokens() -> None:
    resolver = LocalResolver([("127.0.0.1", 9494, None)], from_request=True)
    assert await refusal(resolver.resolve(CF, None)) == (
        "INVALID_REQUEST",
        "this is a local pcapd api: it captures local targets only (pcapd capture local)")
    assert await refusal(resolver.verify(LOCAL, "a-token")) == (
        "INVALID_REQUEST", "a local capture takes no token")


class Platform:
    """A configured platform's resolver, as far as identifying a token goes."""

    def __init__(self, name: str, accepts: str | None) -> None:
        self.name = name
        self.accepts = accepts
        self.asked: list[str | None] = []

    async def identify(self, token: str | None) -> Identity:
        self.asked.append(token)
        if token != self.accepts:
            raise Refusal("UNAUTHENTICATED", f"{self.name}'s UAA did not issue this token")
        return Identity(user_id=self.name, user_name=self.name, client_id="cf",
                        scopes=frozenset(), expires_at=0.0, issuer=self.name)


def platforms(cf: Platform | None, bosh: Platform | None) -> PlatformResolver:
    return PlatformResolver(cf, bosh)  # type: ignore[arg-type]  # (identify is all it needs)


async def test_a_target_of_a_platform_the_api_does_not_serve_is_refused_by_name() -> None:
    only_cf = platforms(Platform("cf", None), None)
    assert await refusal(only_cf.resolve(BOSH, "t")) == (
        "INVALID_REQUEST", "this pcapd api serves no BOSH director (no bosh section in its "
        "config)")
    only_bosh = platforms(None, Platform("bosh", None))
    assert await refusal(only_bosh.verify(CF, "t")) == (
        "INVALID_REQUEST", "this pcapd api serves no Cloud Foundry (no cf section in its "
        "config)")
    assert await refusal(only_bosh.resolve(LOCAL, "t")) == (
        "INVALID_REQUEST", "local targets are captured by `pcapd capture local` on the "
        "machine itself, not through a shared api")


async def test_a_token_is_identified_by_whichever_platform_issued_it() -> None:
    cf, bosh = Platform("cf", "cf-token"), Platform("bosh", "bosh-token")
    resolver = platforms(cf, bosh)
    assert (await resolver.identify("bosh-token")).user_id == "bosh"
    assert (cf.asked, bosh.asked) == (["bosh-token"], ["bosh-token"])
    assert (await resolver.identify("cf-token")).user_id == "cf"
    assert bosh.asked == ["bosh-token"]  # Cloud Foundry answered first


async def test_an_unknown_token_gets_the_first_platforms_refusal_and_none_asks_nobody() -> None:
    cf, bosh = Platform("cf", "cf-token"), Platform("bosh", "bosh-token")
    assert await refusal(platforms(cf, bosh).identify("stranger")) == (
        "UNAUTHENTICATED", "cf's UAA did not issue this token")
    assert await refusal(platforms(cf, bosh).identify(None)) == (
        "UNAUTHENTICATED", "no token: log in first (cf login / bosh log-in)")
    assert await refusal(platforms(None, None).identify("t")) == (
        "UNAUTHENTICATED", "this api serves no platform")
    assert "stranger" in cf.asked and None not in cf.asked + bosh.asked


Answer = Callable[[bytes], bytes]


async def serve_once(nursery: trio.Nursery, answer: Answer) -> str:
    """An HTTP server on loopback that answers every request with ``answer(request)``."""

    async def handle(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        await stream.send_all(answer(request))
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def http_answer(body: bytes, content_type: str = "application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode()
            + b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


async def test_get_json_sends_the_bearer_token_and_parses_the_answer() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return http_answer(b'{"guid": "g1"}')

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            base = await serve_once(nursery, answer)
            assert await get_json(http, f"{base}/v3/apps", token="tok", what="x") == (
                200, {"guid": "g1"})
            nursery.cancel_scope.cancel()
    (request,) = seen
    assert request.startswith(b"GET /v3/apps HTTP/1.1\r\n")
    assert b"\r\nauthorization: bearer tok\r\n" in request.lower()
    assert b"\r\naccept: application/json\r\n" in request.lower()


async def test_an_answer_that_is_not_json_is_none() -> None:
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            base = await serve_once(nursery, lambda _: http_answer(b"<html>", "text/html"))
            assert await get_json(http, base, token=None, what="x") == (200, None)
            nursery.cancel_scope.cancel()


async def test_an_unreachable_platform_is_named_by_its_origin_never_the_token() -> None:
    base = closed_port_url()
    async with httpx.AsyncClient() as http:
        code, text = await refusal(get_json(http, f"{base}/v3/apps?names=secret-app",
                                            token="s3cr3t-token", what="Cloud Controller"))
    assert code == "START_CAPTURE_FAILED"
    assert text.startswith(f"cannot reach Cloud Controller at {base}: ConnectError")
    assert "s3cr3t-token" not in text and "secret-app" not in text
