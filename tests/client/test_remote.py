"""``pcapd capture cf|bosh`` toward an api: the address worked out from flags, environment or the
cf target; the token in the WebSocket handshake and the right ``start`` (checked on a small api
stand-in built from pcapd's own transport); a token kept fresh while a capture runs; and no
token ever in the output of a failing run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from rich.console import Console
from trio_websocket import WebSocketConnection

from pcapd.cli import main
from pcapd.client.capture import ApiAddress, run_capture
from pcapd.client.cfcli import CfCredentials, load_cf_config
from pcapd.client.output import PcapngOutput
from pcapd.client.progress import Progress
from pcapd.client.remote import api_address, websocket_url
from pcapd.errors import UsageError
from pcapd.proto import (
    BoshTarget,
    CaptureOptions,
    CfTarget,
    End,
    Error,
    Hello,
    ResponderSession,
    Start,
    Token,
)
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import Headers, serve_websocket
from tests.client.cli_logins import (
    SPACE_GUID,
    RecordingUAA,
    cf_document,
    write_bosh_config,
    write_cf_config,
)
from tests.fakes.uaa import ALICE

PCAPD = str(Path(sys.executable).with_name("pcapd"))


@pytest.mark.parametrize(("given", "url"), [
    ("https://pcap.sys.example.com", "wss://pcap.sys.example.com:443/"),
    ("https://pcap.sys.example.com/", "wss://pcap.sys.example.com:443/"),
    ("http://h:8080", "ws://h:8080/"),
    ("http://h", "ws://h:80/"),
    ("wss://pcap.example.com:4443/capture", "wss://pcap.example.com:4443/capture"),
    ("ws://127.0.0.1:9000/", "ws://127.0.0.1:9000/"),
    ("pcap.sys.example.com", "wss://pcap.sys.example.com:443/"),
    ("https://[::1]:8443", "wss://[::1]:8443/"),
])
def test_api_url_becomes_a_websocket_url(given: str, url: str) -> None:
    assert websocket_url(given) == url


@pytest.mark.parametrize("bad", ["ftp://pcap.example.com", "https://", "https://h:99999"])
def test_a_bad_api_url_names_the_flag(bad: str) -> None:
    with pytest.raises(UsageError, match=r"^--api "):
        websocket_url(bad)


def test_api_tls_follows_the_scheme_and_cacert(tmp_path: Path) -> None:
    assert api_address("http://h:8080").ssl_context is None
    secure = api_address("https://pcap.example.com")
    assert secure.ssl_context is not None and secure.server_hostname == "pcap.example.com"
    assert (secure.host, secure.port, secure.resource) == ("pcap.example.com", 443, "/")
    with pytest.raises(UsageError, match=r"^--cacert .*: no such file"):
        api_address("https://pcap.example.com", cacert=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(UsageError, match="not a CA certificate"):
        api_address("https://pcap.example.com", cacert=str(tmp_path / "junk.pem"))


# --- a stand-in api ------------------------------------------------------------------------------

@dataclass
class Seen:
    headers: list[dict[str, str]] = field(default_factory=list)
    starts: list[Start] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


Answer = Callable[[Link, Seen], Awaitable[None]]


async def refuse(link: Link, seen: Seen) -> None:
    await link.send(Error(code="PERMISSION_DENIED",
                          text="you may not see the app 'myapp' (space dev)"))


async def serve_fake_api(nursery: trio.Nursery, answer: Answer) -> tuple[int, Seen]:
    """An api that records the handshake headers and the start, then ``answer``s."""
    seen = Seen()

    async def handler(ws: WebSocketConnection, peer: str, headers: Headers) -> None:
        seen.headers.append({k.decode().lower(): v.decode() for k, v in headers})
        link = Link(ws, ResponderSession("api"), peer)
        try:
            hello = await link.receive()
            assert isinstance(hello, Hello)
            await link.send(link.session.make_welcome("fake-api"))  # type: ignore[union-attr]
            start = await link.receive()
            assert isinstance(start, Start)
            seen.starts.append(start)
            await answer(link, seen)
        except LinkClosed:
            pass

    listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return int(listeners[0].socket.getsockname()[1]), seen


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PCAPD_API", "BOSH_ENVIRONMENT")}
    env.update(extra)
    return env


async def run_pcapd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([PCAPD, *args], capture_stdout=True, capture_stderr=True,
                                      check=False, env=env)


async def test_capture_cf_sends_the_token_in_the_handshake_and_the_start(
        tmp_path: Path, uaa: RecordingUAA) -> None:
    access = uaa.issue(ALICE, lifetime=600)
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    write_cf_config(tmp_path, cf_document(uaa.url, access, refresh))
    out = tmp_path / "out.pcapng"
    async with trio.open_nursery() as nursery:
        port, seen = await serve_fake_api(nursery, refuse)
        result = await run_pcapd(
            "capture", "cf", "myapp", "--api", f"http://127.0.0.1:{port}", "--instance", "0",
            "--instance", "2", "-f", "tcp port 8080", "-c", "10", "-w", str(out), "-q",
            env=child_env(CF_HOME=str(tmp_path)))
        nursery.cancel_scope.cancel()
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    # the code first: what docs/troubleshooting.md is searched for
    assert stderr == ("pcapd: error: PERMISSION_DENIED: you may not see the app 'myapp' "
                      "(space dev)\n")
    assert result.stdout == b""
    [headers] = seen.headers
    assert headers["authorization"] == f"bearer {access}"
    [start] = seen.starts
    assert start.target == CfTarget(app="myapp", space=SPACE_GUID, instances=[0, 2],
                                    process_type="web")
    assert start.options == CaptureOptions(device="eth0", filter="tcp port 8080", snaplen=65535)
    assert start.limits.max_packets == 10
    assert not out.exists()  # nothing written, nothing left behind
    assert uaa.token_requests == []  # a valid token is used as it is


async def test_capture_bosh_sends_the_bosh_token_and_target(tmp_path: Path) -> None:
    config = write_bosh_config(tmp_path / "bosh-config", [
        {"url": "https://10.0.0.6:25555", "alias": "lab", "access_token": "opaque-token",
         "access_token_type": "bearer", "refresh_token": "opaque-refresh"}])
    async with trio.open_nursery() as nursery:
        port, seen = await serve_fake_api(nursery, refuse)
        result = await run_pcapd(
            "capture", "bosh", "-d", "cf", "-g", "router", "-g", "diego_cell", "d55b",
            "-w", str(tmp_path / "out.pcapng"), "-q",
            env=child_env(BOSH_CONFIG=str(config), BOSH_ENVIRONMENT="lab",
                          PCAPD_API=f"ws://127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert result.returncode == 1, result.stderr
    assert seen.headers[0]["authorization"] == "bearer opaque-token"
    assert seen.starts[0].target == BoshTarget(deployment="cf", groups=["router", "diego_cell"],
                                               instances=["d55b"])


async def test_bosh_needs_an_api_address(tmp_path: Path) -> None:
    config = write_bosh_config(tmp_path / "bosh-config", [
        {"url": "https://10.0.0.6:25555", "alias": "lab", "access_token": "opaque-token"}])
    result = await run_pcapd("capture", "bosh", "-e", "lab", "-d", "cf", "-g", "router",
                             "-w", str(tmp_path / "out"),
                             env=child_env(BOSH_CONFIG=str(config)))
    assert result.returncode == 2
    assert result.stderr.decode() == ("pcapd: error: which pcapd api? pass --api URL or set "
                                      "PCAPD_API (e.g. https://pcap.sys.example.com)\n")


async def test_cf_says_what_to_pass_when_the_api_cannot_be_derived(tmp_path: Path) -> None:
    write_cf_config(tmp_path, cf_document("https://login.example.com", "eyJa", "eyJr",
                                          Target="https://cc.example.com"))
    result = await run_pcapd("capture", "cf", "myapp", "-w", str(tmp_path / "out"),
                             env=child_env(CF_HOME=str(tmp_path)))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "pass --api URL or set PCAPD_API" in err and "https://cc.example.com" in err
    assert err.count("\n") == 1


def test_an_expired_session_is_one_line_and_never_shows_a_token(
        tmp_path: Path, uaa: RecordingUAA, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    access = uaa.issue(ALICE, lifetime=20)
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    uaa.revoke(refresh)
    write_cf_config(tmp_path, cf_document(uaa.url, access, refresh))
    monkeypatch.setenv("CF_HOME", str(tmp_path))
    status = main(["capture", "cf", "myapp", "--api", "http://127.0.0.1:9", "-v",
                   "-w", str(tmp_path / "out.pcapng")])
    captured = capsys.readouterr()
    assert status == 1
    said, error = captured.err.splitlines()  # what it tried, then the one error line
    assert said.startswith(f"refreshing your access token at {uaa.url} (it expires in ")
    assert error == "pcapd: error: your session expired: run cf login again"
    for secret in (access, refresh, *access.split("."), *refresh.split(".")):
        assert secret not in captured.out and secret not in captured.err
    assert not (tmp_path / "out.pcapng").exists()


# --- a token kept fresh during a capture ---------------------------------------------------------

def short_lived_login(tmp_path: Path, uaa: RecordingUAA) -> tuple[CfCredentials, str]:
    # lives 4 s, so it is due for a refresh halfway, after 2 s
    access = uaa.issue(ALICE, lifetime=4)
    refresh = uaa.issue_refresh(ALICE, client_id="cf")
    path = write_cf_config(tmp_path, cf_document(uaa.url, access, refresh))
    return CfCredentials(load_cf_config(path)), refresh


async def capture_with(tmp_path: Path, credentials: CfCredentials, answer: Answer,
                       ) -> tuple[End, Seen, str]:
    output = PcapngOutput(str(tmp_path / "out.pcapng"))
    output.open()
    console = io.StringIO()
    progress = Progress(quiet=True, console=Console(file=console, width=300))
    start = Start(target=CfTarget(app="myapp", space=SPACE_GUID),
                  options=CaptureOptions(device="eth0"))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port, seen = await serve_fake_api(nursery, answer)
            end = await run_capture(
                ApiAddress("127.0.0.1", port), start, output, progress,
                extra_headers=[(b"authorization", credentials.tokens.authorization.encode())],
                token_source=credentials)
            nursery.cancel_scope.cancel()
    output.close()
    return end, seen, console.getvalue()


async def test_a_long_capture_refreshes_the_token_and_hands_it_to_the_api(
        tmp_path: Path, uaa: RecordingUAA) -> None:
    credentials, _ = short_lived_login(tmp_path, uaa)
    first = credentials.tokens.access_token

    async def answer(link: Link, seen: Seen) -> None:
        msg = await link.receive()
        assert isinstance(msg, Token)
        seen.tokens.append(msg.token)
        await link.send(End(reason="completed"))

    end, seen, printed = await capture_with(tmp_path, credentials, answer)
    assert end.reason == "completed"
    assert seen.headers[0]["authorization"] == f"bearer {first}"
    [token] = seen.tokens
    assert token != first and uaa.verify(token) is not None
    stored = json.loads((tmp_path / ".cf" / "config.json").read_text())
    assert stored["AccessToken"] == f"bearer {token}"
    assert printed == ""


async def test_a_refresh_that_cannot_work_is_said_once_and_the_capture_goes_on(
        tmp_path: Path, uaa: RecordingUAA) -> None:
    credentials, refresh = short_lived_login(tmp_path, uaa)
    uaa.revoke(refresh)

    async def answer(link: Link, seen: Seen) -> None:
        while uaa.refresh_attempts == 0:  # noqa: ASYNC110 (counted in the fake's thread)
            await trio.sleep(0.05)
        await trio.sleep(0.5)  # time to try again, if it (wrongly) would
        try:
            await link.send(End(reason="limit", text="token expired", limit="token"))
        except LinkClosed:
            pass

    end, seen, printed = await capture_with(tmp_path, credentials, answer)
    assert end.reason == "limit"
    assert seen.tokens == [] and uaa.refresh_attempts == 1
    assert "could not refresh your access token: your session expired: run cf login again" \
        in printed
    assert printed.count("\n") == 1
    assert credentials.tokens.access_token not in printed and refresh not in printed
