"""``pcapd captures list`` and ``pcapd captures download ID``: the caller's stored captures.

The same login as captures (the cf CLI's, or the bosh CLI's with ``--bosh``) and the same api
address rules. The api answers only for the caller's own captures; the download itself is a
plain HTTPS GET of the short-lived URL the api hands out (presigned S3, or the api's signed
``/downloads/…``), streamed to disk with a progress bar — never the whole file in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from pcapd.client.boshcli import bosh_config_path, bosh_credentials
from pcapd.client.capture import ApiAddress, interruptible, open_api_link, refusal_text
from pcapd.client.cfcli import CfCredentials, cf_config_path, derive_api_url, load_cf_config
from pcapd.client.credentials import Credentials
from pcapd.client.output import check_target, partial_path
from pcapd.client.output import put_in_place as partial_into_place
from pcapd.client.remote import api_address, api_origin, choose_api_url, refresh_login
from pcapd.errors import PcapdError, UsageError
from pcapd.proto import (
    CaptureList,
    Data,
    Download,
    Error,
    GetDownload,
    ListCaptures,
    Message,
    StoredCapture,
)
from pcapd.transport.link import LinkClosed

CHUNK = 256 * 1024


class CapturesError(PcapdError):
    """The api refused, or the download failed."""


@dataclass(frozen=True)
class CapturesPlan:
    args: argparse.Namespace
    api: ApiAddress
    credentials: Credentials


@contextmanager
def captures_plan(args: argparse.Namespace) -> Iterator[CapturesPlan]:
    """Read the CLI login and work out the api, before the event loop (blocking work)."""
    with ExitStack() as stack:
        if args.bosh:
            bosh = bosh_credentials(bosh_config_path(),
                                    args.environment or os.environ.get("BOSH_ENVIRONMENT"))
            stack.callback(bosh.close)
            credentials: Credentials = bosh
            url = choose_api_url(args, None, "")
        else:
            config = load_cf_config(cf_config_path())
            credentials = CfCredentials(config)
            url = choose_api_url(args, derive_api_url(config.target), "")
        refresh_login(credentials, args)
        yield CapturesPlan(args, api_address(url, cacert=args.cacert, insecure=args.insecure,
                                             origin=api_origin(args)), credentials)


async def ask_api(api: ApiAddress, credentials: Credentials, request: Message,
                  error: type[CapturesError] = CapturesError) -> Message:
    """One request on its own link to the api, its answer; a refusal, a lost link or data
    instead of an answer raise ``error`` (``pcapd captures`` and ``pcapd record`` alike)."""
    authorization = credentials.tokens.authorization.encode()
    try:
        async with open_api_link(api, [(b"authorization", authorization)]) as link:
            await link.send(request)
            answer = await link.receive()
    except LinkClosed as exc:
        raise error(f"lost the connection to the api: {exc}") from exc
    if isinstance(answer, Error):
        raise error(refusal_text(answer))
    if isinstance(answer, Data):
        raise error("the api answered with data instead of an answer")
    return answer


async def _ask(plan: CapturesPlan, request: ListCaptures | GetDownload) -> Message:
    return await ask_api(plan.api, plan.credentials, request)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


async def run_captures_command(plan: CapturesPlan) -> None:
    """``captures list`` or ``captures download``; SIGINT or SIGTERM end it at once (130)."""
    async with interruptible():
        if plan.args.captures_command == "list":
            await list_captures(plan)
        else:
            await download_capture(plan, plan.args.capture_id, plan.args.write)


async def _stored(plan: CapturesPlan) -> list[StoredCapture]:
    answer = await _ask(plan, ListCaptures())
    assert isinstance(answer, CaptureList)
    return answer.captures


def unique_id(prefix: str, captures: list[StoredCapture]) -> str:
    """The one capture id starting with ``prefix``, as git takes a commit's prefix; an exact
    id always wins. Unknown prefixes are left to the api to refuse (it names them)."""
    ids = [c.capture_id for c in captures]
    if prefix in ids:
        return prefix
    matches = [i for i in ids if i.startswith(prefix)]
    if len(matches) > 1:
        raise UsageError(f"capture id {prefix} is ambiguous; it starts {len(matches)} "
                         f"captures: {', '.join(sorted(matches))}")
    return matches[0] if matches else prefix


async def resolve_capture_id(plan: CapturesPlan, prefix: str) -> str:
    """``captures download 3f2a`` → the full id of the caller's one capture starting 3f2a."""
    return unique_id(prefix, await _stored(plan))


async def list_captures(plan: CapturesPlan) -> None:
    """Print the caller's captures (stdout: this is the command's output) — a table on a
    terminal; for scripts tab-separated lines with raw numbers (bytes, seconds since the epoch)
    and no header, or ``--json``."""
    captures = await _stored(plan)
    if plan.args.json:
        sys.stdout.write(json.dumps([msgspec.to_builtins(c) for c in captures], indent=2) + "\n")
        return
    columns = ("id", "target", "started (UTC)", "size", "packets", "dropped", "ended",
               "expires (UTC)")
    console = Console()
    if not console.is_terminal:
        for c in captures:
            print("\t".join(str(v) for v in (
                c.capture_id, c.target, c.started_at, c.size, c.packets, c.dropped, c.reason,
                c.expires_at)))
        return
    rows = [(c.capture_id, c.target, _when(c.started_at), f"{c.size:,}", f"{c.packets:,}",
             f"{c.dropped:,}", c.reason, _when(c.expires_at)) for c in captures]
    if not rows:
        console.print("no stored captures (capture with --upload to keep one)")
        return
    table = Table(header_style="bold", box=None, pad_edge=False,
                  show_header=not plan.args.no_headers)
    for column in columns:
        table.add_column(column, no_wrap=column == "id",
                         justify="right" if column in ("size", "packets", "dropped") else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


async def download_capture(plan: CapturesPlan, prefix: str, write: str | None) -> None:
    """Fetch the one capture whose id starts with ``prefix`` into ``write`` (default
    ``<id>.pcapng``; ``-`` a pipe), streamed, with progress: into ``.NAME.partial``, renamed
    into place when complete; an existing file is refused unless ``--force``, and a named
    ``-w`` is checked before the api is asked anything."""
    force = bool(getattr(plan.args, "force", False))
    if write == "-" and sys.stdout.isatty():
        raise UsageError("-w -: stdout is a terminal; pipe it (| tshark -r -) or name a file")
    target = None if write in (None, "-") else _download_target(write, force)
    capture_id = await resolve_capture_id(plan, prefix)
    if write is None:
        target = _download_target(f"{capture_id}.pcapng", force)
    answer = await _ask(plan, GetDownload(capture_id=capture_id))
    assert isinstance(answer, Download)
    if target is None:
        await _download_to_stdout(plan, answer)
        return
    partial = partial_path(target)
    stderr = Console(stderr=True)
    try:
        async with _fetched(plan, answer) as response:
            total = int(response.headers.get("content-length", 0)) or answer.capture.size
            with Progress("[progress.description]{task.description}", BarColumn(),
                          DownloadColumn(), TransferSpeedColumn(), console=stderr,
                          disable=plan.args.quiet, transient=True) as bar:
                task = bar.add_task(capture_id[:12], total=total or None)
                try:
                    out = await trio.open_file(partial, "wb")
                except OSError as exc:
                    raise CapturesError(f"-w {write or target}: cannot write {partial}: "
                                        f"{exc.strerror or exc}") from None
                async with out:
                    async for chunk in response.aiter_bytes(CHUNK):
                        await out.write(chunk)
                        bar.advance(task, len(chunk))
        await trio.to_thread.run_sync(lambda: partial_into_place(partial, target, force=force))
    except BaseException:
        await trio.Path(partial).unlink(missing_ok=True)
        raise
    stderr.print(f"{target}: capture {capture_id} ({answer.capture.packets:,} packets, "
                 f"{answer.capture.reason})", highlight=False, markup=False)


@asynccontextmanager
async def _fetched(plan: CapturesPlan, answer: Download) -> AsyncIterator[httpx.Response]:
    """The download link's answer, streamed; a refusal or a failed transfer in one line."""
    capture_id = answer.capture.capture_id
    verify = plan.api.ssl_context if plan.api.ssl_context is not None else True
    try:
        async with httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(60.0)) as http, \
                http.stream("GET", answer.url) as response:
            if response.status_code != 200:
                raise CapturesError(f"download of {capture_id} refused: HTTP "
                                    f"{response.status_code} (the link may have expired: ask "
                                    "again with `pcapd captures download`)")
            yield response
    except httpx.HTTPError as exc:
        raise CapturesError(f"download of {capture_id} failed: {exc}") from None


def _download_target(name: str, force: bool) -> Path:
    target = check_target(name, force=force)
    if target is None:
        raise CapturesError(f"-w {name}: a download goes to a file (or -w - to a pipe)")
    return target


async def _download_to_stdout(plan: CapturesPlan, answer: Download) -> None:
    """``captures download ID -w -``: the pcapng to stdout (``| tshark -r -``), nothing else."""
    out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    try:
        async with _fetched(plan, answer) as response:
            async for chunk in response.aiter_bytes(CHUNK):
                await out.send_all(chunk)
    except (BrokenPipeError, trio.BrokenResourceError):
        return  # the reader had enough (| head): not an error
    finally:
        await out.aclose()
