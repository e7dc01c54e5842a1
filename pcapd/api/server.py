"""The api role's client endpoint: a WebSocket per user capture, resolved, run, ended.

Each client link is a handshake, then ``status`` requests or one ``start``. The start is
checked before any agent is contacted — the filter compiled with libpcap (a bad filter never
reaches an agent), the snaplen range, the api's limits — then resolved into agent jobs by the
configured :class:`Resolver` (local namespaces, or Cloud Foundry / BOSH once those exist), and
run as one :class:`~pcapd.api.capture.ApiCapture`. A client that goes away cancels its capture:
the agent links close and every agent stops its capture at once.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from functools import partial
from typing import Protocol

import trio
from trio_websocket import WebSocketConnection

from pcapd.agent.capture import InvalidFilter, compile_filter
from pcapd.api.agents import AgentJob
from pcapd.api.capture import ApiCapture, CaptureFailed
from pcapd.config import ApiConfig
from pcapd.proto import (
    AgentTarget,
    Data,
    Error,
    Hello,
    LocalTarget,
    Notice,
    ResponderSession,
    Start,
    Started,
    Statistics,
    Status,
    StatusReply,
    Stop,
)
from pcapd.transport.groups import open_nursery
from pcapd.transport.service import Refusal, status_reply
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import Link, LinkClosed, serve_websocket

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 10.0


class Resolver(Protocol):
    """Turns a client's target into agent jobs; raises :class:`Refusal` with the reason."""

    async def resolve(self, start: Start) -> list[AgentJob]: ...


class LocalResolver:
    """Local mode: named namespaces (or the host) on one agent, or the agents given with --agent.

    ``agents`` lists ``(host, port, netns or None)``; with ``from_request`` the namespaces come
    from the client's ``local`` target and run on the first agent (the embedded one).
    """

    def __init__(self, agents: list[tuple[str, int, str | None]], *,
                 from_request: bool) -> None:
        self.agents = agents
        self.from_request = from_request

    async def resolve(self, start: Start) -> list[AgentJob]:
        if not isinstance(start.target, LocalTarget):
            raise Refusal("INVALID_REQUEST", "this is a local pcapd api: it captures local "
                          "targets only (pcapd capture local)")
        if self.from_request:
            host, port, _ = self.agents[0]
            names: list[str | None] = list(start.target.netns) or [None]
            return [_local_job(host, port, name) for name in names]
        return [_local_job(host, port, name) for host, port, name in self.agents]


def _local_job(host: str, port: int, netns: str | None) -> AgentJob:
    label = netns or "host"
    return AgentJob(host, port, AgentTarget(namespace=label, source=label), origin=label)


class PlatformResolver:
    """The distributed api's resolver until Cloud Foundry and BOSH targets land (issue #4)."""

    async def resolve(self, start: Start) -> list[AgentJob]:
        kind = type(start.target).__name__.removesuffix("Target").lower()
        if isinstance(start.target, LocalTarget):
            raise Refusal("INVALID_REQUEST", "local targets are captured by `pcapd capture "
                          "local` on the machine itself, not through a shared api")
        raise Refusal("INVALID_REQUEST", f"{kind} targets are not implemented yet in this "
                      "pcapd api (issue #4)")


class ClientOutput:
    """A capture's output that streams to the client's link."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def send_data(self, payload: bytes) -> None:
        await self.link.send(Data(watermark=0, payload=payload))

    async def send_message(self, msg: Started | Notice | Statistics) -> None:
        await self.link.send(msg)


class Api:
    """The captures of one api process, and the checks before starting one."""

    def __init__(self, config: ApiConfig, resolver: Resolver,
                 agent_tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.resolver = resolver
        tls = config.agents.tls
        self.agent_tls = agent_tls or client_context(
            ca=tls.ca, certificate=tls.certificate, private_key=tls.private_key,
            what="agents.tls")
        self.captures: dict[str, ApiCapture] = {}
        self.draining = False
        self._captures_changed = trio.Event()

    async def wait_idle(self) -> None:
        """Until no capture runs (drain)."""
        while self.captures:
            await self._captures_changed.wait()

    @property
    def running(self) -> list[str]:
        """Ids of the captures running now."""
        return list(self.captures)

    def status(self) -> StatusReply:
        return status_reply(self.config.id, self)

    def stop_all(self) -> None:
        """Drain: stop every capture gracefully; refuse new ones."""
        self.draining = True
        for capture in self.captures.values():
            capture.request_stop("drained", f"the api {self.config.id} is shutting down")

    async def handle(self, ws: WebSocketConnection, peer: str) -> None:
        """One client link, from ``hello`` to close."""
        link = Link(ws, ResponderSession("api"), f"client {peer}")
        try:
            hello = await link.receive()
            assert isinstance(hello, Hello)
            await link.send(link.session.make_welcome(self.config.id))  # type: ignore[union-attr]
            while True:
                msg = await link.receive()
                if isinstance(msg, Status):
                    await link.send(self.status())
                elif isinstance(msg, Start):
                    await self._capture(link, msg)
                    return
                elif isinstance(msg, Error):
                    return
        except LinkClosed as exc:
            log.info("%s: %s", link.peer, exc)

    async def _capture(self, link: Link, start: Start) -> None:
        try:
            jobs = await self._admit(start)
        except Refusal as refusal:
            log.info("%s: refused: %s", link.peer, refusal.text)
            await link.send(Error(code=refusal.code, text=refusal.text, origin=self.config.id))
            return
        capture_id = uuid.uuid4().hex
        capture = ApiCapture(self.config, capture_id, start, jobs, ClientOutput(link),
                             self.agent_tls)
        self.captures[capture_id] = capture
        log.info("capture %s: %s for %s, filter %r", capture_id,
                 ", ".join(j.origin for j in jobs), link.peer, start.options.filter)
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(self._listen, link, capture, nursery.cancel_scope)
                nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                try:
                    end = await capture.run()
                except CaptureFailed as exc:
                    await link.send(Error(code=exc.code, text=exc.text, origin=self.config.id))
                    nursery.cancel_scope.cancel()
                    return
                await link.send(end)
                log.info("capture %s ended (%s): %d written, %d dropped", capture_id,
                         end.reason, end.totals.written,
                         end.totals.agent_dropped + end.totals.api_dropped)
                nursery.cancel_scope.cancel()
        finally:
            del self.captures[capture_id]
            self._captures_changed.set()
            self._captures_changed = trio.Event()

    async def _listen(self, link: Link, capture: ApiCapture, scope: trio.CancelScope) -> None:
        """The client's side: ``stop``, or going away (which cancels the capture at once)."""
        try:
            while True:
                msg = await link.receive()
                if isinstance(msg, Stop):
                    capture.request_stop("stopped", "stopped by the user")
        except LinkClosed as exc:
            log.info("capture %s: client gone (%s): stopping its agents", capture.capture_id,
                     exc)
            scope.cancel()

    async def _admit(self, start: Start) -> list[AgentJob]:
        if self.draining:
            raise Refusal("START_CAPTURE_FAILED", f"the api {self.config.id} is shutting down: "
                          "try again in a moment")
        if len(self.captures) >= self.config.limits.concurrent_captures:
            raise Refusal("LIMIT_REACHED", f"the api runs {len(self.captures)} captures "
                          "already (limits.concurrent_captures): try again later")
        try:  # in a thread: libpcap resolves host names in filters, which may block on DNS
            await trio.to_thread.run_sync(partial(compile_filter, start.options.filter,
                                                  snaplen=start.options.snaplen))
        except InvalidFilter as exc:
            raise Refusal("INVALID_REQUEST", str(exc)) from None
        jobs = await self.resolver.resolve(start)
        if not jobs:
            raise Refusal("INVALID_REQUEST", "the target names no instance to capture")
        return jobs


async def serve_api(api: Api, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the api's client endpoint until cancelled."""
    listen = api.config.listen
    ctx = (server_context(listen.tls.certificate, listen.tls.private_key, what="listen.tls")
           if listen.tls is not None else None)
    await serve_websocket(api.handle, listen.address, listen.port, ctx,
                          task_status=task_status)
