"""The four streaming use cases of SPEC §1, end to end, and what must be refused.

Single and multiple Cloud Foundry app instances, single and multiple BOSH VMs: the user's
``pcapd capture cf|bosh`` talks to a real ``pcapd api`` process, which checks the token with
the (fake) UAA, asks the (fake) Cloud Controller or director with the user's token, and
reaches real ``pcapd agent`` processes in namespaces standing for cells and VMs over mutual
TLS; the agents capture inside app-container namespaces or on the VM's ``eth0``. tshark reads
the result. Then the refusals, and a search of every log line for tokens.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pcapd.pcapng import NRB, PcapngDecoder, parse
from pcapd.proto import (
    BoshTarget,
    CaptureOptions,
    CfTarget,
    End,
    Error,
    InitiatorSession,
    Notice,
    Start,
    Stop,
    Token,
    Welcome,
)
from pcapd.transport.link import Link
from pcapd.transport.ws import open_websocket
from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import streamed_capture
from tests.fakes import ALICE, BOB
from tests.netns import send_udp
from tests.readers import run_tool, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("landscape")) as built:
        built.deploy_app("my-app", instances=2)
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


def sequences(rows: list[list[str]], name: str, marker: bytes) -> list[int]:
    found = []
    for iface, data in rows:
        payload = bytes.fromhex(data) if data else b""
        if iface == name and payload.startswith(marker):
            found.append(int.from_bytes(payload[len(marker):len(marker) + 4], "big"))
    return sorted(found)


async def capture_and_check(landscape: Landscape, tmp_path: Path, args: list[str],
                            env: dict[str, str],
                            traffic: list[tuple[object, str, bytes, str]]) -> None:
    """Run ``pcapd capture ARGS``; send each (namespace, destination, marker, if_name) 20
    datagrams once it runs; check every one arrived under its interface name."""
    with trio.fail_after(90):
        async with streamed_capture(*args, "-f", "udp and not icmp", env=env) as capture:
            await capture.wait_started(interfaces=len(traffic))
            for ns, destination, marker, _ in traffic:
                await send_udp(ns, destination, 9999, 20, marker=marker)  # type: ignore[arg-type]
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "frame.interface_name", "data.data")
    for _, _, marker, name in traffic:
        assert sequences(rows, name, marker) == list(range(20)), (name, capture.stderr.text)
    assert {row[0] for row in rows} == {name for *_, name in traffic}
    assert "Number of stat entries = 1" in run_tool("capinfos", out)
    landscape.client_lines.extend(capture.stderr.lines)


async def test_single_cf_instance(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    cell = landscape.cells[0]
    container = next(iter(cell.containers.values()))
    await capture_and_check(landscape, tmp_path, ["cf", "my-app", "--instance", "0", "-i", "lo"],
                            landscape.cf_home(token, refresh),
                            [(container, "127.0.0.1", b"cf-one", "my-app/0:lo")])


async def test_multiple_cf_instances_on_two_cells(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    traffic = []
    for index, cell in enumerate(landscape.cells):
        container = next(iter(cell.containers.values()))
        traffic.append((container, "127.0.0.1", f"cf-{index}".encode(), f"my-app/{index}:lo"))
    await capture_and_check(landscape, tmp_path, ["cf", "my-app", "-i", "lo"],
                            landscape.cf_home(token, refresh), traffic)
    out = (tmp_path / "out.pcapng").read_bytes()
    decoder = PcapngDecoder()
    decoder.receive_data(out)
    decoder.receive_data(b"")
    names = []
    while (raw := decoder.next_raw()) is not None:
        if raw.block_type == NRB:
            names.extend(parse(raw).records)  # type: ignore[union-attr]
    assert sorted(name for _, (name,) in names) == ["my-app/0", "my-app/1"]


async def test_single_bosh_instance(landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    instance = landscape.director.deployments["cf"].instances[0]
    vm = landscape.vms[0]
    await capture_and_check(
        landscape, tmp_path, ["bosh", "-d", "cf", "-g", "router", instance.id, "-i", "eth0"],
        landscape.bosh_env(token, refresh),
        [(None, vm.ip, b"vm-one", f"router/{instance.id}:eth0")])


async def test_multiple_bosh_instances_by_team_scope(landscape: Landscape,
                                                      tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.teams.team-a.admin"])
    instances = landscape.director.deployments["cf"].instances
    traffic = [(None, vm.ip, f"vm-{i}".encode(), f"router/{instances[i].id}:eth0")
               for i, vm in enumerate(landscape.vms)]
    await capture_and_check(landscape, tmp_path,
                            ["bosh", "-d", "cf", "-g", "router", "-i", "eth0"],
                            landscape.bosh_env(token, refresh), traffic)
    rows = tshark_fields(tmp_path / "out.pcapng", "tcp.port", display_filter="tcp")
    assert rows == []  # the agents' own links to the api (on eth0) were left out


# --- refusals, spoken to the api directly so each answer is the api's own -----------------


async def ask(landscape: Landscape, token: str | None, start: Start) -> Error:
    headers = [(b"authorization", f"bearer {token}".encode())] if token else None
    async with open_websocket("127.0.0.1", landscape.api_port, ssl_context=None,
                              extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        assert isinstance(await link.receive(), Welcome)
        await link.send(start)
        answer = await link.receive()
        assert isinstance(answer, Error), answer
        return answer


def cf_start(landscape: Landscape, app: str = "my-app", space: str | None = None) -> Start:
    return Start(target=CfTarget(app=app, space=space or landscape.space.guid),
                 options=CaptureOptions(device="lo"))


def bosh_start(deployment: str = "cf", groups: tuple[str, ...] = ("router",),
               instances: tuple[str, ...] = ()) -> Start:
    return Start(target=BoshTarget(deployment=deployment, groups=list(groups),
                                   instances=list(instances)),
                 options=CaptureOptions(device="eth0"))


@pytest.mark.parametrize(("make_token", "words"), [
    (lambda uaa: uaa.expired(ALICE), "expired"),
    (lambda uaa: uaa.forge_unknown_key(ALICE), "signature"),
    (lambda uaa: uaa.forge_none(ALICE), "unsupported signing algorithm"),
    (lambda uaa: uaa.forge_hmac(ALICE), "unsupported signing algorithm"),
    (lambda uaa: uaa.issue(ALICE, issuer="https://uaa.evil.example/oauth/token"),
     "uaa.evil.example"),
    (lambda uaa: uaa.issue_refresh(ALICE), "refresh token"),
    (lambda uaa: None, "no token"),
])
async def test_bad_tokens_are_unauthenticated(landscape: Landscape, make_token: object,
                                              words: str) -> None:
    token = make_token(landscape.uaa)  # type: ignore[operator]
    with trio.fail_after(30):
        answer = await ask(landscape, token, cf_start(landscape))
    assert answer.code == "UNAUTHENTICATED" and words in answer.text, answer.text
    if token:
        signature = token.split(".")[-1]
        assert token not in answer.text and (not signature or signature not in answer.text)


async def test_space_auditor_may_not_capture(landscape: Landscape) -> None:
    auditor = landscape.uaa.issue(ALICE.__class__("auditor-1", "audrey", "a@example.com"))
    landscape.cc.grant("auditor-1", "auditor", landscape.space)
    with trio.fail_after(30):
        answer = await ask(landscape, auditor, cf_start(landscape))
    assert answer.code == "PERMISSION_DENIED" and "sensitive data" in answer.text


async def test_app_in_another_space_is_not_found(landscape: Landscape) -> None:
    token, _ = developer_tokens(landscape)
    with trio.fail_after(30):
        answer = await ask(landscape, token, cf_start(landscape, space=landscape.other_space.guid))
    assert answer.code == "INVALID_REQUEST" and "my-app not found" in answer.text


async def test_bosh_without_admin_scope_is_denied(landscape: Landscape) -> None:
    token = landscape.uaa.issue(BOB, client_id="bosh_cli",
                                scopes=["openid", "bosh.read", "bosh.teams.team-a.read"])
    with trio.fail_after(30):
        answer = await ask(landscape, token, bosh_start())
    assert answer.code == "PERMISSION_DENIED" and "bosh.admin" in answer.text


@pytest.mark.parametrize(("start", "words"), [
    (bosh_start(deployment="nope"), "deployment 'nope' doesn't exist"),
    (bosh_start(groups=("nope",)), "no instance group 'nope'"),
    (bosh_start(instances=("no-such-id",)), "no instance no-such-id"),
])
async def test_unknown_bosh_names_are_invalid(landscape: Landscape, start: Start,
                                              words: str) -> None:
    token = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    with trio.fail_after(30):
        answer = await ask(landscape, token, start)
    assert answer.code == "INVALID_REQUEST" and words in answer.text, answer.text


# --- a capture outlives its token only with a refreshed one --------------------------------


async def capture_messages(landscape: Landscape, token: str, renew_with: str | None,
                           renew_after: float, run_for: float) -> list[object]:
    """Start a one-instance cf capture; optionally send a refreshed token; collect messages
    (no packets are sent) until the api ends the capture or ``run_for`` seconds pass."""
    headers = [(b"authorization", f"bearer {token}".encode())]
    start = Start(target=CfTarget(app="my-app", space=landscape.space.guid, instances=[0]),
                  options=CaptureOptions(device="lo"))
    seen: list[object] = []
    async with open_websocket("127.0.0.1", landscape.api_port, ssl_context=None,
                              extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        await link.receive()
        await link.send(start)
        with trio.move_on_after(run_for):
            async with trio.open_nursery() as nursery:
                if renew_with is not None:
                    async def renew() -> None:
                        await trio.sleep(renew_after)
                        await link.send(Token(token=renew_with))
                    nursery.start_soon(renew)
                while True:
                    msg = await link.receive()
                    seen.append(msg)
                    if isinstance(msg, End | Error):
                        nursery.cancel_scope.cancel()
                        break
        if link.session.state.value not in ("done", "error"):
            await link.send(Stop())
            while not isinstance(msg := await link.receive(), End):
                seen.append(msg)
            seen.append(msg)
    return seen


async def test_capture_ends_when_its_token_expires(landscape: Landscape) -> None:
    landscape.cc.grant(ALICE, "developer", landscape.space)
    token = landscape.uaa.issue(ALICE, lifetime=3)
    with trio.fail_after(40):
        seen = await capture_messages(landscape, token, None, 0, run_for=25)
    limits = [m for m in seen if isinstance(m, Notice) and m.code == "LIMIT_REACHED"]
    assert limits and limits[0].limit == "token" and "token expired" in limits[0].text
    end = seen[-1]
    assert isinstance(end, End) and end.reason == "limit" and end.limit == "token"


async def test_a_refreshed_token_keeps_the_capture_going(landscape: Landscape) -> None:
    landscape.cc.grant(ALICE, "developer", landscape.space)
    token = landscape.uaa.issue(ALICE, lifetime=3)
    fresh = landscape.uaa.issue(ALICE, lifetime=600)
    with trio.fail_after(40):
        seen = await capture_messages(landscape, token, fresh, 1, run_for=6)
    assert not [m for m in seen if isinstance(m, Notice) and m.code == "LIMIT_REACHED"]
    end = seen[-1]
    assert isinstance(end, End) and end.reason == "stopped"  # our stop, past the old expiry


# --- last: these two end the module (the api is drained, then every log is searched) ---


async def test_api_drain_ends_every_capture_complete(landscape: Landscape,
                                                      tmp_path: Path) -> None:
    """SIGTERM to the api (as monit or systemd send it): the running capture is stopped
    gracefully — the user is told CAPTURE_STOPPED and gets a complete file — and the api exits.
    Runs late in this module: the api is gone afterwards."""
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    with trio.fail_after(60):
        async with streamed_capture("cf", "my-app", "--instance", "0", "-i", "lo", "-f",
                                    "udp and not icmp",
                                    env=landscape.cf_home(token, refresh)) as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(container, "127.0.0.1", 9999, 20, marker=b"drain")
            landscape.api.popen.send_signal(signal.SIGTERM)
            assert await capture.wait_exit() == 0, capture.stderr.text
        assert await trio.to_thread.run_sync(landscape.api.popen.wait, 30) == 0
    assert "CAPTURE_STOPPED" in capture.stderr.text and "shutting down" in capture.stderr.text
    assert "(drained" in capture.stderr.text
    out = tmp_path / "drained.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "data.data")
    assert sum(1 for (d,) in rows if bytes.fromhex(d).startswith(b"drain")) == 20
    assert "Number of stat entries = 1" in run_tool("capinfos", out)
    landscape.client_lines.extend(capture.stderr.lines)


def test_no_token_in_any_log_line(landscape: Landscape) -> None:
    """Runs last in this module: every line the api, the agents and the users' CLIs wrote."""
    lines = landscape.all_log_lines() + landscape.client_lines
    assert any("capture_ended" in line for line in lines)  # the audit lines are there
    text = "\n".join(lines)
    assert "eyJ" not in text  # every JWT (header, claims) starts with base64 of '{"'
