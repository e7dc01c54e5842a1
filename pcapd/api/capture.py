"""One capture on the api: fan out to the agents, merge their streams, feed one output.

Theory of operation. Every source (agent × namespace × device) gets a task
(:mod:`pcapd.api.source`) that connects over mutual TLS, starts the agent's capture and pushes
what arrives into the live merge; what is counted and decided (limits, the cut, partial or
complete, the statistics) is the :class:`~pcapd.api.ledger.Ledger`'s, this module wires it. The api
waits until each source has either sent its Interface Description Block or failed (bounded by
``START_TIMEOUT``), then fixes the output's interface ids in request order, writes the Section
Header and every IDB, and tells the user which sources run and which are unavailable — so the
ids the user sees are the pcapng interface ids. From then on a *writer* task pops the merge
whenever data arrives or the merge asks for a wake-up, and offers the packets to a bounded queue
(drop-and-count when the user reads too slowly); a *sender* task drains the queue to the output.
Stopping (user, limit, drain, every source gone) sends ``stop`` to each agent, waits for each
one's tail and ``end``, flushes the merge, writes one Interface Statistics Block per source with
the counts of every party, and ends. A source that fails mid-way is reported and the rest go on.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Mapping
from typing import Protocol

import trio

from pcapd import __version__
from pcapd.api.agents import AgentPayload
from pcapd.api.ledger import Ledger, Limit, effective_limits
from pcapd.api.resolve import Resolution
from pcapd.api.source import Dial, SourceRun
from pcapd.config import ApiConfig
from pcapd.errors import CodedError
from pcapd.flow import DropGate
from pcapd.merge import Merge
from pcapd.pcapng import encode_name_resolution, encode_section_header, split_packets
from pcapd.pcapng.packets import check_epbs
from pcapd.pcapng.rewrite import commented_packet
from pcapd.proto import (
    Code,
    Counters,
    End,
    Notice,
    RecordSave,
    Source,
    Start,
    Started,
    Statistics,
)
from pcapd.proto.messages import EndReason
from pcapd.tokens import Identity
from pcapd.transport.groups import open_nursery
from pcapd.transport.queue import PacketQueue

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0
"""Seconds for every agent to connect and start before the capture goes on without it."""
STOP_TIMEOUT = 15.0
"""Seconds each agent gets to send its tail and ``end`` after ``stop``."""
STATS_PERIOD = 1.0
MAX_PAYLOAD = 256 * 1024
"""Largest ``data`` message to the user. A user's WebSocket takes in a whole message before
reading on, so a slow reader empties its socket one message at a time: at 256 KiB one taking
100 kB/s frees room every ~2.6 s (with 1 MiB it was ~10 s). Its kernel shows the api that
progress in larger steps still (:data:`pcapd.transport.link.KEEPALIVE_STALL`)."""
SEND_LINGER = 0.01
"""Seconds the sender may wait to fill a whole ``MAX_PAYLOAD`` message under load, rather than
send many small ones (each costs framing, and a write on the user's side, whatever its size)."""
SAVE_BURST = MAX_PAYLOAD * 4 // 32
"""Packets one agent payload of a saved window may add to the merge at once (1 MiB of 32-byte
blocks, the smallest EPB): the merge's cap for a save allows one such payload per source above
``buffer.size``, so a save is never force-released out of order."""
NEVER_FULL = 1 << 62
"""A save's queue never drops: its sources wait instead (:meth:`ApiCapture.room`)."""
AGENT_DURATION_MARGIN = 30.0
"""Agents stop by themselves this long after the api's duration: a safety net, never the rule."""


class Output(Protocol):
    """Where a capture goes: the user's link (streaming) or a store (upload)."""

    async def send_data(self, payload: bytes) -> None: ...
    async def send_message(self, msg: Started | Notice | Statistics) -> None: ...


class NoSourceStarted(CodedError):
    """No source could be started; ``code`` and ``text`` are for the user."""


class ApiCapture:
    """Runs one capture to its end; :meth:`request_stop` ends it gracefully."""

    def __init__(self, config: ApiConfig, capture_id: str, start: Start,
                 resolution: Resolution, output: Output,
                 agent_tls: ssl.SSLContext | None,
                 saves: Mapping[str, RecordSave] | None = None) -> None:
        """``saves``: merge windows of a recording's rings (each source's ``record_save``,
        by origin) instead of starting live captures."""
        self.config = config
        self.capture_id = capture_id
        self.start = start
        self.resolution = resolution
        self.identity = resolution.identity
        self.output = output
        self.ledger = Ledger(effective_limits(start.limits, config.limits),
                             [job.origin for job in resolution.jobs],
                             [(u.origin, u.text) for u in resolution.unavailable])
        dial = Dial(capture_id, start.options, self.ledger.for_agents(AGENT_DURATION_MARGIN),
                    agent_tls, config.agents.server_name, connect_timeout=START_TIMEOUT,
                    reconnect_grace=config.agents.reconnect_grace, saves=saves)
        self.sources = [SourceRun(job, account, self, dial)
                        for job, account in zip(resolution.jobs, self.ledger.accounts,
                                                strict=True)]
        self._token_renewed = trio.Event()
        self._drain_notice: str | None = None
        buf = config.buffer
        self.saving = saves is not None
        if self.saving:  # see :meth:`room`
            self.merge = Merge(lateness=math.inf,
                               max_buffered=buf.size + len(self.sources) * SAVE_BURST)
            self.queue = PacketQueue(DropGate(NEVER_FULL, NEVER_FULL, NEVER_FULL - 1))
        else:
            self.merge = Merge(lateness=config.merge.lateness, max_buffered=buf.size)
            self.queue = PacketQueue(DropGate(buf.size, buf.upper_limit, buf.lower_limit))
        self._begun = trio.Event()
        self._popped = trio.Event()
        self.started_ns = time.time_ns()
        self.stop_requested = trio.Event()
        self._settled = trio.Event()
        self._data = trio.Event()
        self._closing = False
        self._congestion_episodes = 0

    # --- control ---------------------------------------------------------------------------

    def request_stop(self, reason: EndReason, text: str = "", limit: str | None = None) -> None:
        """Stop gracefully; the first reason given is the one the user sees."""
        self.ledger.stop(reason, text, limit)
        self.stop_requested.set()

    def drain(self, text: str) -> None:
        """The api shuts down: tell the user, then stop gracefully (reason ``drained``)."""
        if not self.stop_requested.is_set():
            self._drain_notice = text
        self.request_stop("drained", text)

    def renew(self, identity: Identity) -> None:
        """A refreshed token of the same user: the capture may run until it expires."""
        self.identity = identity
        self._token_renewed.set()
        self._token_renewed = trio.Event()

    async def _token_timer(self) -> None:
        """End the capture when the user's token expires without a refreshed one."""
        while self.identity is not None:
            left = self.identity.expires_at - time.time()
            renewed = self._token_renewed
            with trio.move_on_after(max(left, 0)):
                await renewed.wait()
                continue
            await self.notify("LIMIT_REACHED", "token expired: the capture ends here (log in "
                              "again to capture longer)", limit="token")
            self.request_stop("limit", "token expired", "token")
            return

    # --- the whole capture -----------------------------------------------------------------

    async def run(self) -> End:
        """Start every source, stream until stopped, end. Raises :class:`NoSourceStarted`."""
        async with open_nursery() as agents:
            for source in self.sources:
                agents.start_soon(source.run)
            with trio.move_on_after(START_TIMEOUT):
                await self._settled.wait()
            for source in self.sources:
                account = source.account
                if account.idb is None and account.failure is None:
                    account.failure = ("INSTANCE_UNAVAILABLE",
                                       f"{source.job.origin}: did not start within "
                                       f"{START_TIMEOUT:g}s")
                    account.why = f"its agent did not start within {START_TIMEOUT:g}s"
                    source.scope.cancel()
            ready = [s for s in self.sources if s.account.captured]
            if not ready:
                agents.cancel_scope.cancel()
                raise NoSourceStarted(*self.ledger.failed_start())
            await self._begin(ready)
            async with open_nursery() as io:
                io.start_soon(self._writer)
                sender_done = trio.Event()
                io.start_soon(self._sender, sender_done)
                io.start_soon(self._reporter)
                if "max_duration" in self.ledger.limits:
                    io.start_soon(self._duration_timer, self.ledger.limits["max_duration"])
                io.start_soon(self._token_timer)
                await self.stop_requested.wait()
                if self._drain_notice is not None:
                    await self.notify("CAPTURE_STOPPED", self._drain_notice)
                await self._stop_sources()
                self._closing = True
                self._wake()
                await sender_done.wait()
                io.cancel_scope.cancel()
            agents.cancel_scope.cancel()
        return await self._finish()

    async def _begin(self, ready: list[SourceRun]) -> None:
        await self.output.send_message(Started(capture_id=self.capture_id, sources=[
            Source(id=new_id, name=s.account.name, description=s.account.description)
            for new_id, s in enumerate(ready)], limits=self.ledger.in_force()))
        # ids only now, with the header queued before any packet: a source's payloads stay
        # pending while its id is unset, and the await above lets them arrive
        self.ledger.number([s.account for s in ready])
        for source in ready:
            source.merge_id = self.merge.add_source(trio.current_time())
        header = [encode_section_header(user_application=f"pcapd {__version__}",
                                        comment=self.ledger.header_comment()),
                  *(s.account.idb or b"" for s in ready),
                  *self.ledger.placeholder_idbs(ready[0].account.idb or b"",
                                                self.start.options.device,
                                                self.start.options.snaplen)]
        if self.resolution.names:
            header.append(encode_name_resolution(
                [(address, [name]) for address, name in self.resolution.names]))
        self.queue.put_unbounded(b"".join(header))
        for unavailable in self.resolution.unavailable:
            await self.output.send_message(Notice(code=unavailable.code, text=unavailable.text,
                                                  origin=unavailable.origin))
        for source in self.sources:
            if source.account.failure is not None:
                await self.notify(*source.account.failure, source)
        for source in ready:
            for payload in source.pending:
                self.push(source, payload)
            source.pending.clear()
        self._begun.set()
        self._wake()

    async def room(self, source: SourceRun) -> None:
        """A saved window's source waits here after each payload, so that nothing of a window
        is dropped and the api holds a bounded part of it: the agents' rings are read at the
        output's pace. It waits until the headers are out, the queue to the output is below
        ``buffer.size``, and its own packets waiting in the merge are below its share of
        ``buffer.size``. The merge of a save waits for every source (``lateness`` infinite:
        each stream is finite and ends with ``end``), so the file is ordered; a source that
        is behind never waits on the merge, so the one ahead is always released."""
        await self._begun.wait()
        await self.queue.wait_depth_below(self.config.buffer.size)
        share = max(1, self.config.buffer.size // len(self.sources))
        while (source.merge_id is not None
               and self.merge.statistics().per_source_buffered.get(source.merge_id, 0) >= share):
            await self._popped.wait()

    async def _duration_timer(self, limit: Limit) -> None:
        await trio.sleep(limit.value)
        verdict = self.ledger.duration_reached()
        if verdict.notice is not None:
            await self.notify("LIMIT_REACHED", verdict.notice, limit=verdict.limit)
        self.request_stop(verdict.reason, verdict.text, verdict.limit)

    # --- sources ---------------------------------------------------------------------------

    async def source_gone(self, source: SourceRun) -> None:
        """Bookkeeping for a source that ended, failed or was cancelled."""
        account = source.account
        with trio.CancelScope(shield=True):
            source.leave_merge()
            account.gone()
            if account.end is not None:
                # a saved window's source ends by itself once it has sent the window: that is
                # the save completing, not news (its figures are in the summary)
                finished_save = source.dial.saves is not None and account.end.reason == "completed"
                if not self.stop_requested.is_set() and not finished_save:
                    await self.notify("CAPTURE_STOPPED", f"{account.name}: the agent stopped "
                                      f"the capture ({account.end.reason}"
                                      f"{': ' + account.end.text if account.end.text else ''})",
                                      source)
            elif account.failure is not None and account.id >= 0:
                await self.notify(*account.failure, source)
            account.over()
            source.done.set()
            self.check_settled()
            self._wake()
            if (verdict := self.ledger.all_gone()) is not None:
                self.request_stop(*verdict)

    def check_settled(self) -> None:
        if self.ledger.settled:
            self._settled.set()

    def push(self, source: SourceRun, payload: AgentPayload) -> None:
        if source.merge_id is None:
            return
        now = trio.current_time()
        if payload.count and source.gap_note is None and self.merge.alone(source.merge_id):
            # One live source and an empty merge: merging is the identity, so the batch goes
            # out as the agent sent it (one run, no block list, no push and pop).
            self.merge.push(source.merge_id, [], [], now)  # heard
            self._emit_run(source, payload)
        elif payload.count:
            batch = split_packets(_with_source_id(source.account.id, payload), payload.offset)
            blocks = batch.blocks
            if source.gap_note is not None:
                blocks = [commented_packet(blocks[0], [source.gap_note]), *blocks[1:]]
                source.gap_note = None
            self.merge.push(source.merge_id, batch.timestamps, blocks, now)
        if payload.watermark:
            self.merge.advance(source.merge_id, payload.watermark, now)
        self._wake()

    async def _stop_sources(self) -> None:
        """Ask every running agent to stop; wait (bounded) for their tails and ``end``."""
        for source in self.sources:
            await source.stop(self.ledger.agent_stop_reason())
        with trio.move_on_after(STOP_TIMEOUT):
            for source in self.sources:
                await source.done.wait()
        for source in self.sources:
            if not source.done.is_set():
                account = source.account
                account.failure = ("INSTANCE_UNAVAILABLE", f"{account.name or source.job.origin}"
                                   f": no end within {STOP_TIMEOUT:g}s of stop")
                account.why = f"no end from its agent within {STOP_TIMEOUT:g}s of stop"
                source.scope.cancel()
                await source.done.wait()

    # --- output ----------------------------------------------------------------------------

    def _wake(self) -> None:
        self._data.set()
        self._data = trio.Event()

    async def _writer(self) -> None:
        """Pop the merge into the queue whenever data arrives or the merge asks to be woken."""
        while True:
            data = self._data
            release = self.merge.pop(trio.current_time())
            self._popped.set()
            self._popped = trio.Event()
            if release.blocks:
                self._emit(release.blocks)
            if self._closing:
                self._emit(self.merge.flush())
                for block in self.ledger.statistics_blocks(time.time_ns(), self.started_ns):
                    self.queue.put_unbounded(block)
                self.queue.close()
                return
            deadline = release.wakeup if release.wakeup is not None else math.inf
            with trio.move_on_at(deadline):
                await data.wait()

    def _emit(self, blocks: list[bytes]) -> None:
        blocks = self.ledger.admit(blocks)  # (a limit reached: the ledger stops the capture)
        if self.ledger.stopping:
            self.stop_requested.set()
        if blocks:
            self.ledger.offered(blocks, self.queue.offer(blocks))

    def _emit_run(self, source: SourceRun, payload: AgentPayload) -> None:
        """:meth:`_emit` for one source's whole batch, passed by the merge: counted per batch.

        Only a batch that reaches a count or size limit is cut into blocks (the limit may fall
        inside it); the queue cuts one only when its gate keeps part of it.
        """
        count, run = payload.count, _with_source_id(source.account.id, payload)
        whole = self.ledger.whole(source.account, count, len(run))
        if whole:
            kept, kept_bytes = self.queue.offer_joined(run, count)
            self.ledger.offered_whole(source.account, count, kept, kept_bytes)
        elif whole is not None:
            self._emit(split_packets(run, payload.offset).blocks)

    async def _sender(self, done: trio.Event) -> None:
        while (chunk := await self.queue.take(MAX_PAYLOAD, min_bytes=MAX_PAYLOAD,
                                              linger=SEND_LINGER)) is not None:
            await self.output.send_data(chunk.payload)
        done.set()

    async def _reporter(self) -> None:
        while True:
            await trio.sleep(STATS_PERIOD)
            gate = self.queue.gate.statistics()
            if gate.episodes > self._congestion_episodes:
                self._congestion_episodes = gate.episodes
                await self.notify("CONGESTED", "the connection to you is too slow: the api "
                                  f"dropped {gate.dropped} packets so far", party="api",
                                  count=gate.dropped)
            await self.output.send_message(self.ledger.statistics())

    async def notify(self, code: Code, text: str, source: SourceRun | None = None, *,
                     party: str | None = None, count: int | None = None,
                     limit: str | None = None) -> None:
        """Tell the user; a source's notices wait until the headers named the sources."""
        account = source.account if source is not None else None
        origin = (account.name or account.origin) if account is not None else None
        msg = Notice(code=code, text=text, origin=origin,
                     source=account.id if account is not None and account.id >= 0 else None,
                     party=party, count=count, limit=limit)  # type: ignore[arg-type]
        if self._settled.is_set() or source is None:
            await self.output.send_message(msg)

    def totals(self) -> Counters:
        """Every party's counts over all sources: final once the capture ended, the counts
        known so far when it ends by error or cancellation (for the audit line and metrics)."""
        return self.ledger.totals(late=self.merge.statistics().reordered)

    async def _finish(self) -> End:
        await self.output.send_message(self.ledger.statistics(final=True))
        return self.ledger.end(late=self.merge.statistics().reordered)


def _with_source_id(source_id: int, payload: AgentPayload) -> bytes:
    """The batch's EPBs with the source's interface id: as they came for source 0, else
    rewritten in one pass over the batch (~0.2 µs a packet less than block by block)."""
    if source_id == 0:
        return payload.packets
    rewritten = bytearray(payload.packets)
    check_epbs(rewritten, new_id=source_id, offset=payload.offset)
    return bytes(rewritten)
