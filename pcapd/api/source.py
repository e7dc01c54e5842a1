"""One source of a capture on the api: connect to its agent, receive, resume after a loss.

Theory of operation. A source (agent × namespace × device) is one task in the capture's
nursery. It connects over mutual TLS, starts the agent's capture and hands everything that
arrives to its capture: payloads (held back while the output's interface ids are not fixed),
statistics and ``end`` into its :class:`~pcapd.api.ledger.Account`, notices to the user. When
a started source's agent goes away mid-capture, the source leaves the merge, the user is told,
and the agent's port is tried again every ``RECONNECT_INTERVAL`` until
``agents.reconnect_grace`` runs out or the capture stops; an agent that answers again gets a
new agent capture, whose first packet carries a comment marking the gap. However the task ends
(its agent's ``end``, a failure, cancellation), the capture's ``source_gone`` runs last.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pcapd.api.agents import AgentJob, AgentLink, AgentPayload, AgentRefused, open_agent_capture
from pcapd.api.ledger import Account
from pcapd.errors import PcapngFormatError
from pcapd.merge import Merge
from pcapd.proto import (
    CODES,
    CaptureLimits,
    CaptureOptions,
    Code,
    End,
    Notice,
    RecordSave,
    Statistics,
    Stop,
)
from pcapd.proto.messages import StopReason
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, LinkClosed

RECONNECT_INTERVAL = 1.0
"""Seconds between attempts to reach a lost agent again (within agents.reconnect_grace)."""


class SourceOwner(Protocol):
    """What a source needs of the capture that owns it, and that it feeds
    (:class:`~pcapd.api.capture.ApiCapture`)."""

    merge: Merge
    stop_requested: trio.Event

    def push(self, source: SourceRun, payload: AgentPayload) -> None:
        """A payload of a source that has its output interface id."""

    def check_settled(self) -> None:
        """A source started: the headers may be due."""

    async def notify(self, code: Code, text: str, source: SourceRun | None = None, *,
                     party: str | None = None, count: int | None = None) -> None:
        """Tell the user."""

    async def source_gone(self, source: SourceRun) -> None:
        """The source's task ends (shielded): what the capture does about it."""

    async def room(self, source: SourceRun) -> None:
        """A saved window's source waits here after each payload (backpressure)."""


@dataclass(frozen=True, slots=True)
class Dial:
    """How every source of one capture starts its agent's capture."""

    capture_id: str
    options: CaptureOptions
    limits: CaptureLimits
    ssl_context: ssl.SSLContext | None
    server_name: str
    connect_timeout: float
    reconnect_grace: float
    saves: Mapping[str, RecordSave] | None = None
    """A saved recording window instead of a live capture: each source's ``record_save``,
    by its origin. A save is not resumed after a loss (the window was a moment)."""


@dataclass(eq=False)
class SourceRun:
    """One source of the capture: its agent link and task; ``account`` holds its books."""

    job: AgentJob
    account: Account
    capture: SourceOwner
    dial: Dial
    agent: AgentLink | None = None
    merge_id: int | None = None
    pending: list[AgentPayload] = field(default_factory=list)
    """Payloads that arrived before the output's interface ids were fixed."""
    gap_note: str | None = None
    """The comment for the first packet after a gap."""
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        """Capture this source until its agent ends, it fails or it is cancelled; the account
        says why it is no longer captured."""
        job, account = self.job, self.account
        try:
            with self.scope:
                attempt = 0
                while True:
                    try:
                        await self._from_agent(attempt)
                        return
                    except (LinkClosed, PcapngFormatError) as exc:
                        if (account.idb is None or account.id < 0 or self.dial.saves is not None
                                or self.capture.stop_requested.is_set()):
                            raise
                        attempt += 1
                        if not await self._resume(exc, attempt):
                            raise
        except AgentRefused as exc:
            account.failure = (exc.code if exc.code in CODES else "START_CAPTURE_FAILED",
                               exc.text)
            account.why = account.why or f"start failed: {exc.text}"
        except (LinkClosed, PcapngFormatError) as exc:
            what = "lost" if account.idb is not None else "unavailable"
            account.failure = account.failure or (  # (set when the reconnect grace ran out)
                "INSTANCE_UNAVAILABLE", f"{job.origin} ({job.address}) {what}: {exc}")
            detail = str(exc).removeprefix(f"{job.address}: ").removeprefix("cannot connect: ")
            account.why = account.why or (f"lost: {exc}" if account.idb is not None else
                                          f"cannot connect to its agent at {job.address}: "
                                          f"{detail}")
        finally:
            await self.capture.source_gone(self)

    async def stop(self, reason: StopReason) -> None:
        """Ask a running agent to stop (it sends its tail and ``end``)."""
        if self.agent is not None and not self.done.is_set():
            try:
                await self.agent.link.send(Stop(reason=reason))
            except LinkClosed:
                pass

    def leave_merge(self) -> None:
        if self.merge_id is not None:
            self.capture.merge.remove_source(self.merge_id, trio.current_time())
            self.merge_id = None

    async def _from_agent(self, attempt: int) -> None:
        """One agent capture, until its ``end`` (the first, or a resumption)."""
        account, dial = self.account, self.dial
        suffix = f"-r{attempt}" if attempt else ""
        save = None if dial.saves is None else dial.saves.get(self.job.origin)
        if dial.saves is not None and save is None:
            raise AgentRefused("INSTANCE_UNAVAILABLE", f"{self.job.origin}: not recorded")
        async with open_agent_capture(
                self.job, capture_id=f"{dial.capture_id}-{account.index}{suffix}",
                options=dial.options, limits=dial.limits, ssl_context=dial.ssl_context,
                server_name=dial.server_name, connect_timeout=dial.connect_timeout,
                save=save) as agent:
            self.agent = agent
            announced = agent.started.sources[0]
            account.name, account.description = announced.name, announced.description
            if attempt:
                self.merge_id = self.capture.merge.add_source(trio.current_time())
                account.resumed()
                await self.capture.notify("CAPTURE_RESUMED", f"{account.name}: capturing again "
                                          f"after a gap (attempt {attempt}); the first packet "
                                          "after it carries a comment", self)
            async with open_nursery() as nursery:
                nursery.start_soon(agent.link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                await self._receive(agent)
                nursery.cancel_scope.cancel()

    async def _resume(self, lost: Exception, attempt: int) -> bool:
        """A started source's agent went away: tell the user, and wait (bounded) until its
        agent answers again. False when the grace period passed or the capture stops."""
        account, stop = self.account, self.capture.stop_requested
        account.lost()
        self.agent = None
        self.leave_merge()
        grace = self.dial.reconnect_grace
        gap_start = time.time()
        if attempt == 1 or self.gap_note is None:
            await self.capture.notify("INSTANCE_UNAVAILABLE", f"{account.name} lost ({lost}): "
                                      f"reconnecting for up to {grace:g}s", self)
        deadline = trio.current_time() + grace
        while trio.current_time() < deadline and not stop.is_set():
            with trio.move_on_at(min(deadline, trio.current_time() + RECONNECT_INTERVAL)):
                await stop.wait()
            if stop.is_set():
                return False
            if await _answers(self.job):
                self.gap_note = (f"pcapd: {account.name} resumed after a gap that began at "
                                 f"{time.strftime('%H:%M:%S', time.gmtime(gap_start))} UTC "
                                 "(its agent was unreachable): packets in between were not "
                                 "captured")
                return True
        if not stop.is_set():
            account.failure = ("INSTANCE_UNAVAILABLE",
                               f"{self.job.origin} ({self.job.address}) not back within "
                               f"{grace:g}s (agents.reconnect_grace): given up (lost: {lost})")
            account.why = (f"lost at {time.strftime('%H:%M:%S', time.gmtime(gap_start))} UTC "
                           f"and not back within {grace:g}s: {lost}")
        return False

    async def _receive(self, agent: AgentLink) -> None:
        account = self.account
        while True:
            msg = await agent.receive()
            if isinstance(msg, AgentPayload):
                if msg.interfaces and account.started(msg.interfaces[0]):
                    self.capture.check_settled()
                if msg.statistics:
                    account.noted(msg.statistics)
                if account.id < 0:
                    self.pending.append(msg)
                else:
                    self.capture.push(self, msg)
                if self.dial.saves is not None:
                    await self.capture.room(self)
            elif isinstance(msg, Statistics):
                if msg.sources:
                    account.reported(msg.sources[0])
            elif isinstance(msg, Notice):
                await self.capture.notify(msg.code, msg.text, self, party=msg.party,
                                          count=msg.count)
            elif isinstance(msg, End):
                account.ended(msg)
                return


async def _answers(job: AgentJob) -> bool:
    """Whether the agent's port accepts a TCP connection again (cheap, before a full start)."""
    try:
        with trio.move_on_after(RECONNECT_INTERVAL):
            stream = await trio.open_tcp_stream(job.host, job.port)
            await stream.aclose()
            return True
    except OSError:
        return False
    return False

