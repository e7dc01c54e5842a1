"""Attacks on the api before (and just after) authentication, against real processes.

The landscape of :mod:`platform_landscape` (fake UAA and BOSH director, two BOSH VMs as network
namespaces each with a real ``pcapd agent``, a real ``pcapd api`` process) with small limits.
Each test is an attack of issue 12 that worked on the api as it was:

- hole 1: a costly or name-bearing filter sent without a token was compiled (GIL held, 39 s
  for 300 ``or`` terms) and resolved before the token was looked at; an authorized one froze
  the api, and the agents compiled in-process too;
- hole 4: links without a token had no deadline, no cap, and an 8 MiB message limit;
- hole 5: concurrent starts all passed ``limits.concurrent_captures``;
- hole 7: a refusal over 4,096 characters broke the link with a traceback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import trio

from pcapd.agent.bpf import CPU_SECONDS
from pcapd.agent.bpf_worker import WALL_SECONDS
from pcapd.config.model import DEFAULT_AGENT_SERVER_NAME
from pcapd.proto import (
    MAX_TEXT,
    AgentTarget,
    BoshTarget,
    CaptureOptions,
    CfTarget,
    End,
    Error,
    InitiatorSession,
    LocalTarget,
    Record,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordStop,
    Start,
    Started,
    Status,
    StatusReply,
    Stop,
)
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.tls import client_context
from pcapd.transport.ws import open_websocket
from tests.e2e.attackers import (
    COSTLY_FILTER,
    RawWebSocket,
    bosh_start,
    close_code,
    close_reason,
    hello_over,
    link_to_api,
    sampling_status,
    unfinished_message,
)
from tests.e2e.platform_landscape import Landscape, all_idle
from tests.e2e.procs import AGENT_PORT, Figures, wait_until
from tests.fakes import ALICE, BOB, CAROL
from tests.fakes.cloud_controller import Instance
from tests.fakes.dns import FakeDns
from tests.fakes.uaa import User

pytestmark = [pytest.mark.root]

AUTH_TIMEOUT = 3.0
PER_PEER = 16
TOTAL = 40
STATUS_WORST = 0.5
"""Seconds: the slowest ``/status`` answer allowed while attacked (a loaded 2-core machine)."""


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    """The api's DNS server: every name it looks up is seen here."""
    with FakeDns() as server:
        yield server


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory, dns: FakeDns) -> Iterator[Landscape]:
    tmp = tmp_path_factory.mktemp("intake")
    with Landscape(tmp, cells=0, api_resolv_conf=dns.resolv_conf(tmp), api_settings={"limits": {
            "concurrent_captures": 3, "concurrent_captures_per_user": 2,
            "requests_per_minute": 600, "authentication_timeout": AUTH_TIMEOUT,
            "unauthenticated_connections": TOTAL,
            "unauthenticated_connections_per_peer": PER_PEER},
            "recorder": {"per_user": 2, "total": 3}}) as built:
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


def admin(landscape: Landscape, user: User = BOB) -> str:
    return landscape.uaa.issue(user, client_id="bosh_cli", scopes=["openid", "bosh.admin"])


async def first_answer(landscape: Landscape, token: str | None, start: Start) -> object:
    async with link_to_api(landscape.api_port, token) as link:
        await link.send(start)
        return await link.receive()


def tracebacks(landscape: Landscape) -> list[str]:
    return [line for line in landscape.all_log_lines() if "Traceback" in line]


# --- hole 1: nothing compiled or resolved before the token; compiling never stalls -------


async def test_a_costly_filter_without_a_valid_token_is_refused_at_once(
        landscape: Landscape) -> None:
    async with sampling_status(landscape.api_url) as status:
        for token in (None, "not-a-jwt", landscape.uaa.expired(BOB)):
            with trio.fail_after(10):
                began = trio.current_time()
                answer = await first_answer(landscape, token, bosh_start(COSTLY_FILTER))
                took = trio.current_time() - began
            assert isinstance(answer, Error) and answer.code == "UNAUTHENTICATED", answer
            assert took < 1.0, took
    assert status.worst < STATUS_WORST, status.samples


async def test_host_names_in_filters_are_looked_up_only_after_authorization(
        landscape: Landscape, dns: FakeDns) -> None:
    """A caller without a token, or with a good token but no permission on the target,
    learns nothing about the api's names: the api's DNS server is never asked."""
    name = f"pcapd-{uuid.uuid4().hex[:12]}.example.internal"
    start = bosh_start(f"host {name}")
    # CLI tokens the acceptance rule takes, for users who may not capture deployment cf:
    # a reader, and an admin of another team
    reader = landscape.uaa.issue(CAROL, client_id="bosh_cli", scopes=["openid", "bosh.read"])
    outsider = landscape.uaa.issue(CAROL, client_id="bosh_cli",
                                   scopes=["openid", "bosh.teams.team-b.admin"])
    for token, code in ((None, "UNAUTHENTICATED"), ("not-a-jwt", "UNAUTHENTICATED"),
                        (reader, "PERMISSION_DENIED"), (outsider, "PERMISSION_DENIED")):
        with trio.fail_after(10):
            answer = await first_answer(landscape, token, start)
        assert isinstance(answer, Error) and answer.code == code, answer
        assert name not in answer.text, answer
    assert dns.asked(name) == [], "the api looked the name up before authorization"
    # authorized: now the name is looked up (the server answers "no such name")
    with trio.fail_after(WALL_SECONDS + 5):
        answer = await first_answer(landscape, admin(landscape), start)
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert name in answer.text, answer
    assert dns.asked(name), "the api's lookups do not reach the test's DNS server"


async def test_a_name_that_resolves_slowly_ends_at_the_deadline_and_stalls_nobody(
        landscape: Landscape, dns: FakeDns) -> None:
    """A resolver that never answers costs the authorized user the compile deadline, with a
    message that says why, and nobody else anything: /status answers throughout."""
    name = f"pcapd-{uuid.uuid4().hex[:12]}.slow.example.internal"
    dns.silent.add(name)
    async with sampling_status(landscape.api_url) as status:
        with trio.fail_after(WALL_SECONDS + 10):
            began = trio.current_time()
            answer = await first_answer(landscape, admin(landscape), bosh_start(f"host {name}"))
            took = trio.current_time() - began
    assert dns.asked(name), "the lookup did not reach the test's DNS server"
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert f"took too long to compile (over {WALL_SECONDS:g} s" in answer.text, answer.text
    assert "a host name that resolves slowly" in answer.text and name in answer.text
    assert WALL_SECONDS <= took < WALL_SECONDS + 5, took
    assert status.worst < STATUS_WORST, status.samples
    await wait_until(lambda: all_idle(landscape), 10, "no capture left")


async def test_a_costly_filter_of_an_authorized_user_is_refused_without_stalling_the_api(
        landscape: Landscape) -> None:
    async with sampling_status(landscape.api_url) as status:
        with trio.fail_after(WALL_SECONDS + 10):
            answer = await first_answer(landscape, admin(landscape), bosh_start(COSTLY_FILTER))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert "too costly" in answer.text or "too long" in answer.text, answer.text
    assert "portrange" in answer.text, answer.text
    assert status.worst < STATUS_WORST, status.samples
    assert len(status.samples) >= 10  # sampled throughout the compile
    await wait_until(lambda: all_idle(landscape), 10, "no capture left")


async def test_an_agent_compiling_a_costly_filter_keeps_serving(landscape: Landscape) -> None:
    """The api's own link to an agent (mutual TLS) carries the filter: the agent refuses it
    after its CPU limit and answers status requests meanwhile."""
    c = landscape.certs
    ctx = client_context(ca=c.ca_cert, certificate=c.api_client_cert,
                         private_key=c.api_client_key)
    ip = landscape.vms[0].ip
    start = Start(target=AgentTarget(namespace="host", source="router/0"),
                  capture_id=uuid.uuid4().hex,
                  options=CaptureOptions(device="lo", filter=COSTLY_FILTER))
    latencies: list[float] = []

    async def ask_status(done: trio.Event) -> None:
        async with open_websocket(ip, AGENT_PORT, ssl_context=ctx,
                                  server_hostname=DEFAULT_AGENT_SERVER_NAME) as ws:
            link = Link(ws, InitiatorSession("api"), "agent")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            await link.receive()
            while not done.is_set():
                began = trio.current_time()
                await link.send(Status())
                assert isinstance(await link.receive(), StatusReply)
                latencies.append(trio.current_time() - began)
                await trio.sleep(0.05)

    with trio.fail_after(WALL_SECONDS + 15):
        async with open_websocket(ip, AGENT_PORT, ssl_context=ctx,
                                  server_hostname=DEFAULT_AGENT_SERVER_NAME) as ws:
            link = Link(ws, InitiatorSession("api"), "agent")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            await link.receive()
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_status, done)
                await trio.sleep(0.2)
                began = trio.current_time()
                await link.send(start)
                answer = await link.receive()
                took = trio.current_time() - began
                done.set()
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert "too costly" in answer.text or "too long" in answer.text, answer.text
    assert took >= CPU_SECONDS * 0.5, took  # it did try, in its child, until the CPU limit
    assert len(latencies) >= 10 and max(latencies) < STATUS_WORST, latencies


async def test_with_a_token_a_local_target_is_refused_with_what_to_use(
        landscape: Landscape) -> None:
    start = Start(target=LocalTarget(), options=CaptureOptions(device="eth0"))
    with trio.fail_after(10):
        answer = await first_answer(landscape, admin(landscape), start)
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert "pcapd capture local" in answer.text


# --- hole 4: links without a token: deadline, size, caps, memory -------------------------


async def test_a_link_without_a_request_is_closed_at_the_authentication_deadline(
        landscape: Landscape) -> None:
    """Silent after the handshake, after ``hello``, or asking only for status: closed (1008)
    once ``limits.authentication_timeout`` has passed since it connected."""
    silent = await RawWebSocket.connect(landscape.api_port)
    greeted = await RawWebSocket.connect(landscape.api_port, "127.0.0.2")
    await hello_over(greeted)
    opened = trio.current_time()
    closed: dict[str, float] = {}

    async def asks_status() -> None:
        async with link_to_api(landscape.api_port, None) as link:
            with pytest.raises(LinkClosed, match=r"limits\.authentication_timeout"):
                while True:
                    await link.send(Status())
                    await link.receive()
                    await trio.sleep(0.3)
            closed["status"] = trio.current_time() - opened

    async def watch(name: str, raw: RawWebSocket) -> None:
        event = await raw.wait_closed()
        closed[name] = trio.current_time() - opened
        assert close_code(event) == 1008, event
        assert "limits.authentication_timeout" in close_reason(event), event
        await raw.aclose()

    with trio.fail_after(AUTH_TIMEOUT + 8):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, "silent", silent)
            nursery.start_soon(watch, "greeted", greeted)
            nursery.start_soon(asks_status)
    assert set(closed) == {"silent", "greeted", "status"}
    assert all(AUTH_TIMEOUT - 0.5 <= t <= AUTH_TIMEOUT + 3 for t in closed.values()), closed


async def test_an_oversized_message_without_a_token_is_refused_and_memory_stays_flat(
        landscape: Landscape) -> None:
    """20 links from 20 addresses, each sending 7 MiB of an 8 MiB message it never finishes
    (on the api as it was: 60 → 212 MB). Each is closed as too big (1009) early on."""
    pid = landscape.api.popen.pid
    before = Figures.of(pid).rss_mb
    seen = len(landscape.api.lines)
    with trio.fail_after(60):
        links: list[RawWebSocket] = []
        async with trio.open_nursery() as nursery:
            for i in range(20):
                async def one(i: int = i) -> None:
                    links.append(await unfinished_message(
                        landscape.api_port, f"127.0.3.{i + 1}", 7 << 20))
                nursery.start_soon(one)
        during = Figures.of(pid).rss_mb
        events = [await raw.wait_closed() for raw in links]
        for raw in links:
            await raw.aclose()
    print(f"\napi RSS {before:.0f} MB before, {during:.0f} MB with 20 links sending 7 MiB each")
    assert during - before < 20, (before, during)
    # closed by the api (its close frame is often lost in the reset of what we still send)
    assert all(e is not None or raw.gone for e, raw in zip(events, links, strict=True))

    def too_big() -> list[str]:
        return [line for line in landscape.api.lines[seen:] if "MESSAGE_TOO_BIG" in line]

    async def all_logged() -> bool:  # the api's log is read by a thread: it may lag a little
        await trio.lowlevel.checkpoint()
        return len(too_big()) >= 20

    await wait_until(all_logged, 10, "a MESSAGE_TOO_BIG line for each of the 20 links")
    assert len(too_big()) == 20, too_big()


async def test_unauthenticated_links_are_capped_per_peer_and_in_total(
        landscape: Landscape) -> None:
    """Over the cap a link is closed at once (1013) naming the limit; an authenticated user
    is served meanwhile; once the links go, new ones are admitted again."""
    held: list[RawWebSocket] = []
    try:
        with trio.fail_after(AUTH_TIMEOUT - 0.5):  # all within one authentication deadline
            for _ in range(PER_PEER):
                held.append(await RawWebSocket.connect(landscape.api_port, "127.0.4.1"))
            extra = await RawWebSocket.connect(landscape.api_port, "127.0.4.1")
            event = await extra.wait_closed()
            assert close_code(event) == 1013, event
            assert "limits.unauthenticated_connections_per_peer" in close_reason(event)
            await extra.aclose()
            for n in range(TOTAL - PER_PEER):
                held.append(await RawWebSocket.connect(
                    landscape.api_port, f"127.0.5.{n // PER_PEER + 1}"))
            extra = await RawWebSocket.connect(landscape.api_port, "127.0.6.1")
            event = await extra.wait_closed()
            assert close_code(event) == 1013, event
            assert "limits.unauthenticated_connections)" in close_reason(event)
            await extra.aclose()
    finally:
        for raw in held:
            await raw.aclose()

    async def admitted() -> bool:
        raw = await RawWebSocket.connect(landscape.api_port, "127.0.6.1")
        with trio.move_on_after(0.3):
            await raw.wait_closed()
        ok = raw.closed is None and not raw.gone
        await raw.aclose()
        return ok

    await wait_until(admitted, 5, "a new link admitted once the others went")


# --- hole 5: concurrent starts and the limits ------------------------------------------------


async def start_many(landscape: Landscape, token: str, n: int,
                     filter: str = "udp port 9999") -> list[object]:
    """``n`` starts at once, each on its own link; their first answers. The started ones are
    stopped (to their end) before this returns."""
    answers: list[object] = []
    all_answered = trio.Event()

    async def one() -> None:
        async with link_to_api(landscape.api_port, token) as link:
            await link.send(bosh_start(filter))
            answer = await link.receive()
            answers.append(answer)
            if len(answers) == n:
                all_answered.set()
            await all_answered.wait()
            if isinstance(answer, Started):
                await link.send(Stop())
                while not isinstance(await link.receive(), End):
                    pass

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
    return answers


def refused(answers: list[object], code: str) -> list[Error]:
    return [a for a in answers if isinstance(a, Error) and a.code == code]


async def test_concurrent_starts_never_pass_the_limits(landscape: Landscape) -> None:
    """Per user (2) and for the whole api (3), whatever the resolver's awaits in between."""
    await wait_until(lambda: all_idle(landscape), 10, "idle before")
    async with trio.open_nursery() as nursery:
        results: dict[str, list[object]] = {}

        async def user(name: str, who: User) -> None:
            results[name] = await start_many(landscape, admin(landscape, who), 6)

        nursery.start_soon(user, "bob", BOB)
        nursery.start_soon(user, "alice", ALICE)
    started = {name: sum(isinstance(a, Started) for a in answers)
               for name, answers in results.items()}
    assert all(n <= 2 for n in started.values()), results
    assert sum(started.values()) == 3, results
    every = results["bob"] + results["alice"]
    assert len(refused(every, "LIMIT_REACHED")) == 12 - 3, every
    texts = " ".join(e.text for e in refused(every, "LIMIT_REACHED"))
    assert "limits.concurrent_captures" in texts
    await wait_until(lambda: all_idle(landscape), 10, "idle after")


async def test_concurrent_recordings_never_pass_the_limits(landscape: Landscape) -> None:
    """``record start`` checks ``recorder.per_user`` (2) and ``total`` (3) against the
    recordings armed, then asks the agents: eight starts at once must not all pass the check
    before any of them is kept."""
    answers: dict[str, list[object]] = {"bob": [], "alice": []}
    record = Record(target=BoshTarget(deployment="cf", groups=["router"]),
                    options=CaptureOptions(device="lo", filter="udp port 9999"),
                    ring=RecordRing(keep=60))

    async def arm(name: str, token: str) -> None:
        answers[name].append(await first_answer(landscape, token, record))

    tokens = {"bob": admin(landscape), "alice": admin(landscape, ALICE)}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name, token in tokens.items():
                for _ in range(4):
                    nursery.start_soon(arm, name, token)
        armed = {name: [a for a in got if isinstance(a, RecordingStarted)]
                 for name, got in answers.items()}
        for name, started in armed.items():  # leave nothing armed for the next tests
            for one in started:
                stopped = await first_answer(landscape, tokens[name],
                                             RecordStop(recording_id=one.recording_id))
                assert isinstance(stopped, RecordingList), stopped
    assert all(len(started) <= 2 for started in armed.values()), answers
    assert sum(len(started) for started in armed.values()) == 3, answers
    every = answers["bob"] + answers["alice"]
    texts = " ".join(e.text for e in refused(every, "LIMIT_REACHED"))
    assert len(refused(every, "LIMIT_REACHED")) == 8 - 3, every
    assert "recorder.total" in texts, texts


async def test_a_failed_start_gives_its_slot_back(landscape: Landscape) -> None:
    """Refused after its slot was taken (a bad filter, an unknown group), or its client gone
    while the filter was being checked: each slot is free again for the next user."""
    await wait_until(lambda: all_idle(landscape), 10, "idle before")
    token = admin(landscape)
    for start in (bosh_start("port 1 or"), bosh_start(group="no-such-group")):
        for _ in range(3):
            with trio.fail_after(WALL_SECONDS + 5):
                answer = await first_answer(landscape, token, start)
            assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    seen = len(landscape.api.lines)
    for _ in range(2):  # (their slots are held until the api has given up on them)
        with trio.move_on_after(0.5):  # gone while its costly filter compiles
            await first_answer(landscape, token, bosh_start(COSTLY_FILTER))

    async def all_given_up() -> bool:
        await trio.lowlevel.checkpoint()
        return sum("too costly" in line or "too long" in line
                   for line in landscape.api.lines[seen:]) >= 2

    await wait_until(all_given_up, WALL_SECONDS * 2 + 5, "the api gave up both")
    await wait_until(lambda: all_idle(landscape), 10, "idle")
    answers = (await start_many(landscape, admin(landscape), 2)
               + await start_many(landscape, admin(landscape, ALICE), 1))
    assert sum(isinstance(a, Started) for a in answers) == 3, answers


# --- hole 7: a long refusal reaches the user, cut to fit -------------------------------------


async def test_long_refusals_reach_the_user_cut_to_fit(landscape: Landscape) -> None:
    seen = len(tracebacks(landscape))
    bad_filter = "udp and (" + "port 1 or " * 500 + "port)"  # ~5 KiB, a syntax error at the end
    with trio.fail_after(WALL_SECONDS + 10):
        answer = await first_answer(landscape, admin(landscape), bosh_start(bad_filter))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert len(answer.text) <= MAX_TEXT and "…" in answer.text, answer.text
    assert answer.text.startswith('invalid BPF filter "udp and (port 1 or'), answer.text
    assert answer.text.endswith("syntax error"), answer.text  # libpcap's reason, whole

    landscape.cc.grant(ALICE, "developer", landscape.space)
    app = landscape.cc.add_app(landscape.space, "two", instances=[Instance(index=0),
                                                                   Instance(index=1)])
    start = Start(target=CfTarget(app=app.guid, instances=list(range(2, 1026))),
                  options=CaptureOptions(device="lo"))
    with trio.fail_after(20):
        answer = await first_answer(landscape, landscape.uaa.issue(ALICE), start)
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert len(answer.text) <= MAX_TEXT, len(answer.text)
    # the user sees what exists, however much was asked
    assert answer.text.startswith("two has no instance 2, 3, 4"), answer.text
    assert "and 1014 more (--instance); it has 0, 1" in answer.text, answer.text
    assert len(tracebacks(landscape)) == seen, tracebacks(landscape)[seen:]


def test_no_secret_or_traceback_in_the_logs(landscape: Landscape) -> None:
    lines = landscape.all_log_lines()
    assert not [line for line in lines if "Traceback" in line]
    refusals = [json.loads(line) for line in lines if line.startswith("{")
                and json.loads(line).get("event") == "refused"]
    assert refusals  # the attacks above were logged as refusals
    assert not [line for line in lines if "eyJ" in line]  # no JWT in any line
