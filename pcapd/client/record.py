"""``pcapd record start|list|save|stop``: the flight recorder, through a pcapd api.

The same logins and api address rules as ``capture cf|bosh`` (start) and ``captures
list|download`` (the others: the cf CLI's login, or the bosh CLI's with ``--bosh``). Everything
blocking — the CLI's config, a token refresh at UAA, opening ``-w`` — happens in
:func:`record_plan` before the event loop. ``start`` prints the recording's id on stdout (a
script keeps it: ``id=$(pcapd record start …)``) and returns at once; ``save`` streams one
merged pcapng exactly as a capture does (``-w FILE`` written as ``.FILE.partial`` and renamed
when complete, ``-F`` to overwrite, ``-w -`` for a pipe) or stores it (``--upload``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pcapd.client.boshcli import bosh_config_path, bosh_credentials
from pcapd.client.capture import (
    ApiAddress,
    Interrupts,
    _stream,
    interruptible,
    open_api_link,
)
from pcapd.client.captures import CapturesError, ask_api
from pcapd.client.cfcli import CfCredentials, cf_config_path, derive_api_url, load_cf_config
from pcapd.client.credentials import Credentials
from pcapd.client.output import PcapngOutput
from pcapd.client.plan import opened_output
from pcapd.client.progress import Header, Progress
from pcapd.client.recordings import (
    RecordingRow,
    json_text,
    script_lines,
    table_lines,
    unique_recording_id,
)
from pcapd.client.remote import (
    api_address,
    api_origin,
    choose_api_url,
    login_and_target,
    refresh_login,
)
from pcapd.errors import UsageError
from pcapd.proto import (
    CaptureOptions,
    End,
    ListRecordings,
    Message,
    Record,
    Recording,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    Trigger,
)
from pcapd.transport.link import LinkClosed
from pcapd.units import format_duration, format_size

_NS = 1_000_000_000


class RecordError(CapturesError):
    """The api refused, or the link failed: one line for the user."""


@dataclass(frozen=True)
class RecordPlan:
    args: argparse.Namespace
    api: ApiAddress
    credentials: Credentials
    request: Record | None = None
    """``record start``: what to arm."""
    output: PcapngOutput | None = None
    """``record save -w``: the file (or pipe) opened already."""


@contextmanager
def record_plan(args: argparse.Namespace) -> Iterator[RecordPlan]:
    """Read the CLI login, work out the api, open ``-w`` — before the event loop."""
    with ExitStack() as stack:
        request: Record | None = None
        if args.record_command == "start":
            credentials, target, url = login_and_target(args, stack)
            if not 1 <= args.snaplen <= 262144:
                raise UsageError(f"-s/--snaplen {args.snaplen}: must be between 1 and 262144")
            request = Record(
                target=target, options=CaptureOptions(device=args.interface,
                                                      filter=args.filter,
                                                      snaplen=args.snaplen),
                ring=RecordRing(keep=args.keep, max_bytes=args.max_bytes, until=args.until),
                trigger=None if args.trigger is None else Trigger(
                    filter=args.trigger, after=args.after, once=args.once))
        elif args.bosh:
            bosh = bosh_credentials(bosh_config_path(),
                                    args.environment or os.environ.get("BOSH_ENVIRONMENT"))
            stack.callback(bosh.close)
            credentials = bosh
            url = choose_api_url(args, None, "")
        else:
            config = load_cf_config(cf_config_path())
            credentials = CfCredentials(config)
            url = choose_api_url(args, derive_api_url(config.target), "")
        api = api_address(url, cacert=args.cacert, insecure=args.insecure,
                          origin=api_origin(args))
        output = None
        if args.record_command == "save":
            output = stack.enter_context(opened_output(args.write, args.upload, args.force))
        refresh_login(credentials, args)
        yield RecordPlan(args, api, credentials, request, output)


async def run_record_command(plan: RecordPlan) -> int:
    """The command as planned; its exit status. SIGINT or SIGTERM end it (130)."""
    command = plan.args.record_command
    async with interruptible() as interrupts:
        if command == "start":
            return await start_recording(plan)
        if command == "list":
            await list_recordings(plan)
            return 0
        recording_id = unique_recording_id(plan.args.recording_id,
                                           [r.recording_id for r in await _listed(plan)])
        if command == "stop":
            await stop_recording(plan, recording_id)
            return 0
        end = await save_recording(plan, recording_id, interrupts)
        return 3 if end.absent and any(a.partial for a in end.absent) else 0


async def _ask(plan: RecordPlan, request: Record | ListRecordings | RecordStop) -> Message:
    return await ask_api(plan.api, plan.credentials, request, RecordError)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def start_recording(plan: RecordPlan) -> int:
    """Arm it; its id on stdout, what runs where on stderr. 3: some instances keep no ring."""
    assert plan.request is not None
    answer = await _ask(plan, plan.request)
    if not isinstance(answer, RecordingStarted):
        raise RecordError(f"the api answered {type(answer).__name__} to record")
    print(answer.recording_id, flush=True)
    ring = answer.ring
    if not plan.args.quiet:
        ends = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(answer.ends_at))
        names = ", ".join(s.name for s in answer.sources[:10])
        more = ", …" if len(answer.sources) > 10 else ""
        size = f" (at most {format_size(ring.max_bytes)} each)" if ring.max_bytes else ""
        _say(f"recording {answer.recording_id}: {len(answer.sources)} instance"
             f"{'s' if len(answer.sources) != 1 else ''} ({names}{more}) keep their last "
             f"{format_duration(ring.keep)}{size} until {ends}")
    for absent in answer.absent:
        _say(f"pcapd: warning: {absent.name} keeps no ring: {absent.reason}")
    return 3 if any(a.partial for a in answer.absent) else 0


async def _listed(plan: RecordPlan) -> list[Recording]:
    answer = await _ask(plan, ListRecordings())
    if not isinstance(answer, RecordingList):
        raise RecordError(f"the api answered {type(answer).__name__} to list_recordings")
    return answer.recordings


def row_of(recording: Recording, now: float) -> RecordingRow:
    """What ``record list`` shows of the api's answer."""
    sources = recording.sources
    live = [s for s in sources if s.state != "lost"]
    helds = [min(recording.ring.keep, max(0.0, now - s.first / _NS)) if s.first else 0.0
             for s in live]
    if recording.state == "ended":
        state = "expired" if recording.end_reason == "expired" else "stopped"
    else:
        state = "armed"
    return RecordingRow(
        recording_id=recording.recording_id, target=recording.target, state=state,
        keep=recording.ring.keep, held=min(helds) if helds else 0.0,
        bytes_held=sum(s.bytes for s in live), max_bytes=recording.ring.max_bytes or 0,
        instances=len(sources), instances_lost=len(sources) - len(live),
        trigger=recording.trigger.filter if recording.trigger else None,
        triggers_fired=recording.triggers_saved,
        triggers_suppressed=recording.triggers_suppressed, ends_at=recording.ends_at,
        stopped_at=recording.ends_at if state == "stopped" else None)


async def list_recordings(plan: RecordPlan) -> None:
    """The caller's recordings: a table on a terminal, tab-separated lines in a pipe, or
    ``--json``."""
    now = time.time()
    rows = [row_of(r, now) for r in await _listed(plan)]
    if plan.args.json:
        sys.stdout.write(json_text(rows))
        return
    lines = table_lines(rows, now, headers=not plan.args.no_headers) if sys.stdout.isatty() \
        else script_lines(rows)
    for line in lines:
        print(line)


async def stop_recording(plan: RecordPlan, recording_id: str) -> None:
    answer = await _ask(plan, RecordStop(recording_id=recording_id))
    if not isinstance(answer, RecordingList) or not answer.recordings:
        raise RecordError(f"no recording {recording_id} of yours (`pcapd record list` shows "
                          "yours)")
    if not plan.args.quiet:
        _say(f"recording {recording_id} stopped: its rings are freed")


async def save_recording(plan: RecordPlan, recording_id: str, interrupts: Interrupts) -> End:
    """Stream the merged pcapng of what the recording holds (the last ``--last``)."""
    assert plan.output is not None
    args = plan.args
    output = plan.output
    request = RecordSave(recording_id=recording_id, last=args.last, upload=args.upload)
    authorization = plan.credentials.tokens.authorization.encode()
    header = Header(f"recording {recording_id[:12]}", f"{plan.api.host}:{plan.api.port}",
                    output="upload" if args.upload else
                    ("stdout" if output.target == "-" else output.target))
    with Progress(quiet=args.quiet, header=header,
                  notes=getattr(output, "notes", None)) as progress:
        try:
            async with open_api_link(plan.api, [(b"authorization", authorization)]) as link:
                await link.send(request)
                end = await _stream(link, output, progress, interrupts,
                                    storing=bool(args.upload))
        except LinkClosed as exc:
            raise RecordError(f"lost the connection to the api: {exc}") from exc
    progress.end(end, output.target)
    return end


__all__ = ["RecordPlan", "record_plan", "row_of", "run_record_command"]
