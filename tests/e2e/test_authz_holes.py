"""Issue 12's authorization holes, each attack replayed against a real ``pcapd api`` process,
the fake UAA / Cloud Controller / director on loopback and real agents in network namespaces.

The cells' agents run *without* ``containers.metadata_store`` here: the attack of hole 2 was
seen through exactly such an agent, so the api's own checks must stop it alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import trio
import trio_websocket

from pcapd.proto import (
    BoshTarget,
    CaptureList,
    CaptureOptions,
    CfTarget,
    Download,
    End,
    Error,
    GetDownload,
    InitiatorSession,
    ListCaptures,
    Message,
    Notice,
    Start,
    Started,
    Stop,
    Token,
    Welcome,
)
from pcapd.transport.link import Link
from tests.e2e.platform_landscape import Landscape
from tests.fakes import ALICE, BOB, FakeUAA
from tests.fakes.cloud_controller import App
from tests.fakes.uaa import make_user
from tests.links import api_link

pytestmark = [pytest.mark.root]

EXTERNAL_URL = "https://pcap.sys.example.com"


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    # the operator also takes a client-credentials login whose client id is alice's user id
    # (hole 8): a client must be listed to be accepted at all (cf.tokens.clients)
    with Landscape(tmp_path_factory.mktemp("authz"), cells=1, vms=1, metadata_store=False,
                   api_settings={"external_url": EXTERNAL_URL,
                                 "cf": {"tokens": {"clients": ["cf", ALICE.user_id]}}}
                   ) as built:
        built.app_a = built.deploy_app("app-a", instances=1)  # type: ignore[attr-defined]
        built.app_b = built.deploy_app(  # type: ignore[attr-defined]
            "app-b", instances=1, space=built.other_space)
        # alice develops app-a; in app-b's space she is only an auditor: she may see app-b
        # exists, never its traffic
        built.cc.grant(ALICE, "developer", built.space)
        built.cc.grant(ALICE, "auditor", built.other_space)
        built.deploy_vms("dep", "router", teams=["team-a"])
        yield built


def apps(landscape: Landscape) -> tuple[App, App]:
    return landscape.app_a, landscape.app_b  # type: ignore[attr-defined]


async def first_answer(landscape: Landscape, token: str, start: Start) -> Message:
    """The api's first answer to ``start``; a capture that started is stopped again."""
    with trio.fail_after(40):
        async with api_link(landscape.api_port, token) as link:
            await link.send(start)
            answer = await link.receive()
            if isinstance(answer, Started):
                await link.send(Stop())
                while not isinstance(await link.receive(), End | Error):
                    pass
            return answer


def cf_start(app: str, process_type: str = "web") -> Start:
    return Start(target=CfTarget(app=app, process_type=process_type),
                 options=CaptureOptions(device="lo"))



# --- hole 2: another app's instances through process_type --------------------------------


@pytest.mark.parametrize("shape", ["../../{b}/processes/web", "..%2F..%2F{b}%2Fprocesses%2Fweb",
                                   "./../../{b}/processes/web"])
async def test_process_type_cannot_reach_another_app(landscape: Landscape, shape: str) -> None:
    app_a, app_b = apps(landscape)
    token = landscape.uaa.issue(ALICE)
    answer = await first_answer(landscape, token, cf_start(app_a.guid, shape.format(b=app_b.guid)))
    assert isinstance(answer, Error), f"the api started a capture: {answer}"
    assert answer.code == "INVALID_REQUEST" and "app-a has no process of type" in answer.text
    assert app_b.guid not in json.dumps([e for e in landscape.api_events("capture_started")])


async def test_the_audit_line_names_org_space_app_guid_and_process_type(
        landscape: Landscape) -> None:
    app_a, _ = apps(landscape)
    answer = await first_answer(landscape, landscape.uaa.issue(ALICE), cf_start(app_a.guid))
    assert isinstance(answer, Started)
    with trio.fail_after(10):
        while not [e for e in landscape.api_events("capture_ended")  # noqa: ASYNC110
                   if e["capture_id"] == answer.capture_id]:
            # the api writes its line after the link closed, to a pipe a thread reads: no
            # event to wait for across the process boundary
            await trio.sleep(0.05)
    for event in ("capture_started", "capture_ended"):
        entry, = [e for e in landscape.api_events(event) if e["capture_id"] == answer.capture_id]
        assert entry["org"] == f"org ({landscape.org.guid})"
        assert entry["space"] == f"dev ({landscape.space.guid})"
        assert entry["app_guid"] == app_a.guid and entry["process_type"] == "web"
        assert f"app guid {app_a.guid}" in str(entry["message"]) or event == "capture_ended"


# --- hole 3: stored captures with a token UAA signed for something else ------------------


async def store_a_capture(landscape: Landscape, token: str) -> str:
    """A capture of app-a uploaded to the store (stopped at once); its stored id."""
    app_a, _ = apps(landscape)
    start = Start(target=CfTarget(app=app_a.guid), options=CaptureOptions(device="lo"),
                  upload=True)
    with trio.fail_after(40):
        async with api_link(landscape.api_port, token) as link:
            await link.send(start)
            assert isinstance(await link.receive(), Started)
            await link.send(Stop())
            while not isinstance(end := await link.receive(), End):
                pass
    assert end.stored is not None
    return end.stored.capture.capture_id


async def ask_store(landscape: Landscape, token: str, question: ListCaptures | GetDownload
                    ) -> Message:
    with trio.fail_after(30):
        async with api_link(landscape.api_port, token) as link:
            await link.send(question)
            return await link.receive()


def foreign_tokens(uaa: FakeUAA) -> dict[str, str]:
    """Tokens UAA really signs for alice that are not a cf/bosh CLI access token."""
    return {
        "another client": uaa.issue(ALICE, client_id="some-dashboard", scopes=["openid"]),
        # a dashboard granted cf's read scope: the audience and scope of a cf CLI token
        "another client with cf's scope": uaa.issue(
            ALICE, client_id="some-dashboard", scopes=["openid", "cloud_controller.read"]),
        "an id token": uaa.issue(ALICE, scopes=["openid"], extra={
            "aud": ["cf"], "nonce": "n-0S6_WzA2Mj", "amr": ["pwd"]}),
        "id-token claims on an access token": uaa.issue(ALICE, extra={
            "at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}),
    }


DASHBOARD_REFUSED = ("the token belongs to the OAuth client 'some-dashboard', which this api "
                     "does not accept for Cloud Foundry (it accepts ")


@pytest.mark.parametrize("kind", ["another client", "another client with cf's scope",
                                  "an id token", "id-token claims on an access token"])
async def test_stored_captures_want_a_cli_access_token(landscape: Landscape, kind: str) -> None:
    capture_id = await store_a_capture(landscape, landscape.uaa.issue(ALICE))
    token = foreign_tokens(landscape.uaa)[kind]
    for question in (ListCaptures(), GetDownload(capture_id=capture_id)):
        answer = await ask_store(landscape, token, question)
        assert isinstance(answer, Error), f"{kind}: {type(question).__name__} got {answer}"
        assert answer.code == "UNAUTHENTICATED" and "cf login" in answer.text, answer.text
        if kind == "another client with cf's scope":
            assert answer.text.startswith(DASHBOARD_REFUSED), answer.text
    # the CLI's own token still works
    listed = await ask_store(landscape, landscape.uaa.issue(ALICE), ListCaptures())
    assert isinstance(listed, CaptureList)
    assert capture_id in [c.capture_id for c in listed.captures]


async def test_a_capture_wants_a_cli_access_token(landscape: Landscape) -> None:
    app_a, _ = apps(landscape)
    for kind, token in foreign_tokens(landscape.uaa).items():
        answer = await first_answer(landscape, token, cf_start(app_a.guid))
        assert isinstance(answer, Error) and answer.code == "UNAUTHENTICATED", (kind, answer)
        if kind == "another client with cf's scope":
            assert answer.text.startswith(DASHBOARD_REFUSED), answer.text


# --- hole 8: a client whose id is a user's id ----------------------------------------------


async def test_a_client_named_like_a_user_sees_none_of_their_captures(
        landscape: Landscape) -> None:
    capture_id = await store_a_capture(landscape, landscape.uaa.issue(ALICE))
    # client credentials of a client registered with alice's user id as its client id, with
    # the authorities a capture client has: a token the acceptance rule lets through
    impostor = landscape.uaa.issue(None, client_id=ALICE.user_id,
                                   scopes=["cloud_controller.read"])
    listed = await ask_store(landscape, impostor, ListCaptures())
    assert isinstance(listed, CaptureList) and listed.captures == []
    answer = await ask_store(landscape, impostor, GetDownload(capture_id=capture_id))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST"
    assert f"no capture {capture_id} of yours" in answer.text


# --- hole 6: a renewed token is authorized again ---------------------------------------------


async def renew_during_capture(landscape: Landscape, start: Start, token: str,
                               renewal: Callable[[], str]) -> list[Message]:
    """Start a capture, send ``renewal()`` once it runs; every message until the end (or a
    stop of ours after 15 s: the renewal was accepted and the capture went on)."""
    seen: list[Message] = []
    with trio.fail_after(60):
        async with api_link(landscape.api_port, token) as link:
            await link.send(start)
            seen.append(await link.receive())
            assert isinstance(seen[0], Started), seen[0]
            await link.send(Token(token=renewal()))
            with trio.move_on_after(15):
                while not isinstance(seen[-1], End | Error):
                    seen.append(await link.receive())
            if not isinstance(seen[-1], End | Error):
                await link.send(Stop())
                while not isinstance(seen[-1], End | Error):
                    seen.append(await link.receive())
    return seen


def ended_by_refusal(seen: list[Message], code: str, words: str) -> None:
    notices = [m for m in seen if isinstance(m, Notice) and m.code == code]
    assert notices and words in notices[0].text and "the capture ends here" in notices[0].text, \
        seen
    end = seen[-1]
    assert isinstance(end, End) and end.reason == "limit" and end.limit == "token", end
    assert "refreshed token was refused" in end.text


async def test_a_bosh_renewal_without_the_team_scope_ends_the_capture(
        landscape: Landscape) -> None:
    start = Start(target=BoshTarget(deployment="dep", groups=["router"]),
                  options=CaptureOptions(device="eth0"))
    scopes = ["openid", "bosh.teams.team-a.admin"]
    token = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=scopes)
    seen = await renew_during_capture(landscape, start, token, lambda: landscape.uaa.issue(
        BOB, client_id="bosh_cli", scopes=["openid", "bosh.teams.team-a.read"]))
    ended_by_refusal(seen, "PERMISSION_DENIED", "you may not capture deployment dep")


async def test_a_cf_renewal_after_the_role_was_revoked_ends_the_capture(
        landscape: Landscape) -> None:
    app_a, _ = apps(landscape)
    carol = make_user("carol-dev")
    landscape.cc.grant(carol, "developer", landscape.space)

    def revoke_then_renew() -> str:
        landscape.cc.revoke(carol, "developer", landscape.space)
        landscape.cc.grant(carol, "auditor", landscape.space)
        return landscape.uaa.issue(carol)

    seen = await renew_during_capture(landscape, cf_start(app_a.guid),
                                      landscape.uaa.issue(carol), revoke_then_renew)
    ended_by_refusal(seen, "PERMISSION_DENIED", "sensitive data")


async def test_an_acceptable_renewal_keeps_the_capture_going(landscape: Landscape) -> None:
    app_a, _ = apps(landscape)
    seen = await renew_during_capture(landscape, cf_start(app_a.guid),
                                      landscape.uaa.issue(ALICE),
                                      lambda: landscape.uaa.issue(ALICE))
    assert not [m for m in seen if isinstance(m, Notice)], seen
    end = seen[-1]
    assert isinstance(end, End) and end.reason == "stopped"  # our stop after 15 s


# --- hardening: download links from the configured URL; unknown and foreign ids alike -------


async def download_link_via(landscape: Landscape, token: str, capture_id: str,
                            host: str) -> Message:
    """Ask for a download link over a WebSocket whose Host header is ``host`` (forged) and
    which claims ``X-Forwarded-Proto: http``, as anyone can send them."""
    with trio.fail_after(30):
        tcp = await trio.open_tcp_stream("127.0.0.1", landscape.api_port)
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, tcp, host, "/", extra_headers=[
                    (b"authorization", f"bearer {token}".encode()),
                    (b"x-forwarded-proto", b"http")])
            link = Link(ws, InitiatorSession("client"), "api")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            assert isinstance(await link.receive(), Welcome)
            await link.send(GetDownload(capture_id=capture_id))
            answer = await link.receive()
            await ws.aclose()
            nursery.cancel_scope.cancel()
    return answer


async def test_download_links_ignore_a_forged_host(landscape: Landscape) -> None:
    token = landscape.uaa.issue(ALICE)
    capture_id = await store_a_capture(landscape, token)
    answer = await download_link_via(landscape, token, capture_id, "evil.example.com")
    assert isinstance(answer, Download), answer
    assert answer.url.startswith(f"{EXTERNAL_URL}/downloads/{capture_id}?"), answer.url
    async with httpx.AsyncClient(timeout=10) as http:  # the link works where the api is
        local = answer.url.replace(EXTERNAL_URL, landscape.api_url)
        assert (await http.get(local)).status_code == 200


async def test_an_unknown_capture_and_another_users_answer_alike(
        landscape: Landscape) -> None:
    alices = await store_a_capture(landscape, landscape.uaa.issue(ALICE))
    unknown = uuid.uuid4().hex
    bob = landscape.uaa.issue(BOB)
    answers = [await ask_store(landscape, bob, GetDownload(capture_id=capture_id))
               for capture_id in (alices, unknown)]
    assert all(isinstance(a, Error) for a in answers), answers
    foreign, missing = answers
    assert (foreign.code, foreign.text.replace(alices, "ID")) == \
        (missing.code, missing.text.replace(unknown, "ID"))  # type: ignore[union-attr]
    # the download endpoint too: a link for a capture that is not there, and a forged one for
    # alice's, get the same status and words
    async with httpx.AsyncClient(timeout=10) as http:
        replies = [await http.get(f"{landscape.api_url}/downloads/{capture_id}",
                                  params={"expires": "9999999999", "token": "A" * 43})
                   for capture_id in (alices, unknown)]
    assert replies[0].status_code == replies[1].status_code == 403
    assert replies[0].text == replies[1].text
