"""``pcapd captures``: a capture id by its unique prefix (as git takes a commit's), each request
on its own link to the api with its refusals in one line, the list as lines for scripts or
JSON, and a download streamed into ``.NAME.partial`` and renamed into place — never over an
existing file without ``--force``, checked before the api is asked, and nothing left when the
link has expired.

The api is a stand-in speaking pcapd's protocol (:mod:`pcapd.proto` over
:mod:`pcapd.transport`) on loopback; the download is a plain HTTP server, as the api's signed
``/downloads/…`` URL or a presigned S3 one is."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from pcapd.client.capture import ApiAddress
from pcapd.client.captures import (
    CapturesError,
    CapturesPlan,
    ask_api,
    download_capture,
    list_captures,
    unique_id,
)
from pcapd.client.cfcli import CfCredentials, load_cf_config
from pcapd.errors import UsageError
from pcapd.proto import (
    CaptureList,
    Data,
    Download,
    Error,
    GetDownload,
    Hello,
    ListCaptures,
    Message,
    StoredCapture,
)
from pcapd.proto.session import ResponderSession
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import Headers, serve_websocket
from tests.client.cli_logins import cf_document, write_cf_config
from tests.fakes.http import FakeServer, Request, Response, text_response

GUARD = 30
FILE = bytes(range(256)) * 1000  # 256 kB: more than one chunk
FULL_ID = "3f2a" + "0" * 28


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def stored(capture_id: str, **fields: Any) -> StoredCapture:
    return StoredCapture(capture_id=capture_id, started_at=1.0, expires_at=2.0, **fields)


def test_capture_ids_by_unique_prefix_as_git_takes_them() -> None:
    captures = [stored("3f2a0001"), stored("3f2b0002"), stored("9c")]
    assert unique_id("3f2a", captures) == "3f2a0001"
    assert unique_id("9c", captures) == "9c"  # exact wins
    assert unique_id("77", captures) == "77"  # the api says it does not exist
    with pytest.raises(UsageError, match="3f2 is ambiguous; it starts 2 captures: "
                                         "3f2a0001, 3f2b0002"):
        unique_id("3f2", captures)


class Downloads(FakeServer):
    """The download URL's server: the capture at ``/downloads/good``, 403 elsewhere (an
    expired link)."""

    name = "downloads"

    def handle(self, request: Request) -> Response:
        if request.path == "/downloads/good":
            return Response(200, FILE, "application/octet-stream")
        return text_response(403, "expired")


Answer = Callable[[Link, Message], Awaitable[None]]


@asynccontextmanager
async def api(answer: Answer) -> AsyncIterator[tuple[ApiAddress, list[Message]]]:
    """A stand-in api on loopback: the handshake, then ``answer`` to each link's request."""
    asked: list[Message] = []

    async def handler(ws: WebSocketConnection, peer: str, headers: Headers) -> None:
        link = Link(ws, ResponderSession("api"), peer)
        try:
            assert isinstance(await link.receive(), Hello)
            await link.send(link.session.make_welcome("fake-api"))  # type: ignore[union-attr]
            request = await link.receive()
            assert not isinstance(request, Data)
            asked.append(request)
            await answer(link, request)
        except LinkClosed:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = int(listeners[0].socket.getsockname()[1])
        yield ApiAddress("127.0.0.1", port), asked
        nursery.cancel_scope.cancel()


def plan(tmp_path: Path, address: ApiAddress, **flags: Any) -> CapturesPlan:
    config = write_cf_config(tmp_path / "cf", cf_document("https://login.example.com",
                                                          "eyJa", "eyJr"))
    args = argparse.Namespace(**{"quiet": True, "json": False, "no_headers": False,
                                 "force": False, **flags})
    return CapturesPlan(args, address, CfCredentials(load_cf_config(config)))


def storing(url: str) -> Answer:
    """An api holding one capture, whose download is at ``url``."""
    capture = stored(FULL_ID, target="cf:my-org/dev/my-app", size=len(FILE), packets=1000,
                     reason="count")

    async def answer(link: Link, request: Message) -> None:
        if isinstance(request, ListCaptures):
            await link.send(CaptureList(captures=[capture, stored("9c" + "0" * 30)]))
        elif isinstance(request, GetDownload) and request.capture_id == FULL_ID:
            await link.send(Download(capture=capture, url=url, url_expires_at=3.0))
        else:
            await link.send(Error(code="NOT_FOUND", text="no such capture"))

    return answer


async def test_a_download_by_prefix_lands_whole_under_its_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Downloads() as files, trio.fail_after(GUARD):
        async with api(storing(f"{files.url}/downloads/good")) as (address, asked):
            await download_capture(plan(tmp_path, address), "3f2", None)
    assert (tmp_path / f"{FULL_ID}.pcapng").read_bytes() == FILE
    assert names(tmp_path) == [f"{FULL_ID}.pcapng", "cf"]  # no partial file left
    assert asked == [ListCaptures(), GetDownload(capture_id=FULL_ID)]


async def test_an_existing_file_is_refused_before_the_api_is_asked(tmp_path: Path) -> None:
    target = tmp_path / "mine.pcapng"
    target.write_bytes(b"precious")
    with trio.fail_after(GUARD):
        async with api(storing("http://127.0.0.1:9/never")) as (address, asked):
            with pytest.raises(UsageError, match="the file exists: pass --force"):
                await download_capture(plan(tmp_path, address), "3f2", str(target))
    assert asked == [] and target.read_bytes() == b"precious"


async def test_an_expired_link_is_refused_with_what_to_do_and_leaves_nothing(
        tmp_path: Path) -> None:
    target = tmp_path / "out.pcapng"
    with Downloads() as files, trio.fail_after(GUARD):
        async with api(storing(f"{files.url}/downloads/old")) as (address, _):
            with pytest.raises(CapturesError) as refused:
                await download_capture(plan(tmp_path, address), FULL_ID, str(target))
    assert str(refused.value) == (f"download of {FULL_ID} refused: HTTP 403 (the link may "
                                  "have expired: ask again with `pcapd captures download`)")
    assert names(tmp_path) == ["cf"]  # neither the file nor its partial


async def test_the_list_is_lines_for_scripts_or_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(GUARD):
        async with api(storing("http://127.0.0.1:9/x")) as (address, _):
            await list_captures(plan(tmp_path, address))
            lines = capsys.readouterr().out.splitlines()
            await list_captures(plan(tmp_path, address, json=True))
            document = json.loads(capsys.readouterr().out)
    assert lines[0].split("\t") == [FULL_ID, "cf:my-org/dev/my-app", "1.0", str(len(FILE)),
                                    "1000", "0", "count", "2.0"]
    assert len(lines) == 2  # no header: raw values for scripts
    assert [c["capture_id"] for c in document] == [FULL_ID, "9c" + "0" * 30]


async def test_a_refusal_or_a_lost_link_is_one_line(tmp_path: Path) -> None:
    async def refuse(link: Link, request: Message) -> None:
        await link.send(Error(code="PERMISSION_DENIED", text="not yours"))

    async def hang_up(link: Link, request: Message) -> None:
        await link.ws.aclose(code=1011, reason="the api is going away")

    expected = {refuse: "PERMISSION_DENIED: not yours",
                hang_up: "lost the connection to the api: api 127.0.0.1:"}
    for answer, text in expected.items():
        with trio.fail_after(GUARD):
            async with api(answer) as (address, _):
                credentials = plan(tmp_path, address).credentials
                with pytest.raises(CapturesError) as failed:
                    await ask_api(address, credentials, ListCaptures())
        assert str(failed.value).startswith(text), failed.value
