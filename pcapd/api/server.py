"""The api role's client endpoint: a WebSocket per user capture, resolved, run, ended.

Each client link is a handshake, then ``status`` requests or one ``start``. Nothing the user
sends is looked at before the token is verified: until then a link counts as unauthenticated
(capped per peer and in total, :mod:`pcapd.api.intake`), its messages are small and it has
``limits.authentication_timeout`` to make its request. A start then takes a capture slot
(global and per user, in one step), is resolved into agent jobs by the configured
:class:`Resolver` (which asks the platform whether the user may capture the target), and only
then is the filter compiled — in a child process under limits (:mod:`pcapd.agent.bpf_worker`),
so a bad filter never reaches an agent and a costly one never stalls the api — and the capture
run as one :class:`~pcapd.api.capture.ApiCapture`. A client that goes away cancels its capture:
the agent links close and every agent stops its capture at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Final

import msgspec
import trio
from trio_websocket import WebSocketConnection

from pcapd.agent.bpf import InvalidFilter
from pcapd.agent.bpf_worker import check_filter
from pcapd.api.agents import AgentJob, ask_agent_devices
from pcapd.api.auth import authorization_from_headers
from pcapd.api.capture import START_TIMEOUT, ApiCapture, NoSourceStarted
from pcapd.api.intake import CaptureSlots, PendingConnections
from pcapd.api.recordings import ApiRecorder
from pcapd.api.resolve import LOCAL_USER, Resolution, Resolver
from pcapd.api.upload import (
    UploadOutput,
    finish_upload,
    owned_capture,
    owned_captures,
    owner_key,
    stored_capture,
)
from pcapd.config import ApiConfig
from pcapd.errors import PcapdError, Refusal
from pcapd.flow import RateLimiter
from pcapd.metrics import Metrics
from pcapd.proto import (
    MAX_LIST,
    CaptureList,
    CaptureOptions,
    Code,
    Data,
    DeviceList,
    Download,
    End,
    Error,
    GetDownload,
    Hello,
    ListCaptures,
    ListDevices,
    ListRecordings,
    Message,
    Notice,
    Record,
    RecordSave,
    RecordStop,
    ResponderSession,
    SourceDevices,
    Start,
    Started,
    Statistics,
    Status,
    Stop,
    Token,
)
from pcapd.proto.messages import MAX_NAME, fit_text, source_problem
from pcapd.store import CaptureInfo, DownloadRefused, InvalidId, Store, Upload
from pcapd.tokens import Identity, Unauthenticated, bearer_token
from pcapd.transport.groups import open_nursery
from pcapd.transport.http import (
    HttpRequest,
    HttpResponse,
    HttpRouter,
    error_response,
    metrics_route,
    status_route,
)
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Link, LinkClosed
from pcapd.transport.service import RoleService
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import Headers, serve_websocket

log = logging.getLogger(__name__)

CLIENT_MAX_MESSAGE: Final = 64 * 1024
"""Bytes in one message from a client. The largest a client sends is a ``start`` (an 8 KiB
filter and up to 1,024 instances, ~50 KB); the protocol's own limit (8 MiB, for agents' data)
let 20 connections without a token hold 7 MiB each."""


class ClientOutput:
    """A capture's output that streams to the client's link."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def send_data(self, payload: bytes) -> None:
        await self.link.send(Data(watermark=0, payload=payload))

    async def send_message(self, msg: Started | Notice | Statistics) -> None:
        await self.link.send(msg)


class Api(RoleService[ApiCapture]):
    """The captures of one api process, and the checks before starting one."""

    def __init__(self, config: ApiConfig, resolver: Resolver,
                 agent_tls: ssl.SSLContext | None = None, store: Store | None = None) -> None:
        self.config = config
        self.resolver = resolver
        self.store = store
        tls = config.agents.tls
        self.agent_tls = agent_tls or client_context(
            ca=tls.ca, certificate=tls.certificate, private_key=tls.private_key,
            what="agents.tls")
        self.captures: dict[str, ApiCapture] = {}
        super().__init__(config.id, self.captures)
        self.metrics = Metrics("api", lambda: len(self.captures))
        self.requests = RateLimiter(config.limits.requests_per_minute)
        limits = config.limits
        self.slots = CaptureSlots(limits.concurrent_captures, limits.concurrent_captures_per_user)
        self.pending = PendingConnections(limits.unauthenticated_connections,
                                          limits.unauthenticated_connections_per_peer)
        self.recorder = ApiRecorder(self)
        """``pcapd record`` (:mod:`pcapd.api.recordings`); its trigger watch runs in
        :meth:`ApiRecorder.run`, started beside the server."""

    @cached_property
    def http(self) -> HttpRouter:
        """Plain HTTP on the client port, next to the WebSocket endpoint: ``GET /status``.
        More routes: ``self.http.add("/downloads/", handler)`` (see pcapd.transport.http)."""
        router = HttpRouter({"/status": status_route(self.status),
                             "/metrics": metrics_route(self.metrics)})
        if self.store is not None:
            router.add("/downloads/", self._download)
        return router

    async def _download(self, request: HttpRequest) -> HttpResponse:
        """``GET /downloads/<id>?expires=…&token=…``: a local-store capture, streamed, for
        whoever holds the signed link (the link is the credential, short-lived). An S3 store
        refuses every one (its links go to the bucket)."""
        assert self.store is not None
        capture_id = request.path.removeprefix("/downloads/")
        try:
            path, info = await self.store.open_download(
                capture_id, request.query.get("expires", ""), request.query.get("token", ""),
                time.time())
        except DownloadRefused as refused:
            return error_response(refused.status, str(refused))
        size = (await trio.Path(path).stat()).st_size
        return HttpResponse(200, [
            ("content-type", "application/octet-stream"),
            ("content-length", str(size)),
            ("content-disposition", f'attachment; filename="{info.capture_id}.pcapng"'),
            ("cache-control", "no-store")], _file_chunks(path))

    def stop_all(self) -> None:
        """Drain: stop every capture gracefully (each user is told CAPTURE_STOPPED and gets a
        complete file); refuse new ones."""
        self.draining = True
        for capture in self.captures.values():
            capture.drain(f"the api {self.config.id} is shutting down: the capture stops here")

    async def handle(self, ws: WebSocketConnection, peer: str, headers: Headers) -> None:
        """One client link, from ``hello`` to close."""
        link = Link(ws, ResponderSession("api"), f"client {peer}")
        intake = _Intake(self.pending, peer.rpartition(":")[0] or peer,
                         self.config.limits.authentication_timeout)
        refused = intake.admit()
        if refused is not None:
            self.metrics.refused("LIMIT_REACHED")
            log.warning("%s: refused: %s", link.peer, refused,
                        extra={"event": "refused", "code": "LIMIT_REACHED"})
            await link.aclose(code=1013, reason=refused)
            return
        try:
            hello = await intake.receive(link)
            assert isinstance(hello, Hello)
            await link.send(link.session.make_welcome(self.config.id))  # type: ignore[union-attr]
            authorization = authorization_from_headers(headers)
            while True:
                msg = await intake.receive(link)
                if isinstance(msg, Status):
                    await link.send(self.status())
                elif isinstance(msg, ListCaptures | GetDownload):
                    if not await self._query(link, msg, authorization, headers, intake):
                        return
                elif isinstance(msg, ListDevices):
                    if not await self._devices(link, msg, authorization, intake):
                        return
                elif isinstance(msg, Start | RecordSave):
                    await self._capture(link, msg, authorization, headers, intake)
                    return
                elif isinstance(msg, Record | ListRecordings | RecordStop):
                    if not await self._recording(link, msg, authorization, intake):
                        return
                elif isinstance(msg, Error):
                    return
        except LinkClosed as exc:
            log.info("%s: %s", link.peer, exc)
        except _NoRequest:
            why = f"no request within {intake.timeout:g}s (limits.authentication_timeout)"
            self.metrics.refused("UNAUTHENTICATED")
            log.info("%s: %s: closing", link.peer, why,
                     extra={"event": "refused", "code": "UNAUTHENTICATED"})
            await link.aclose(code=1008, reason=why)
        finally:
            intake.done()

    async def _query(self, link: Link, msg: ListCaptures | GetDownload,
                     authorization: str | None, headers: Headers, intake: _Intake) -> bool:
        """Answer a question about stored captures; False when refused (link ends)."""
        try:
            token = _bearer(authorization)
            identity = await self.resolver.identify(token)
            intake.authenticated()
            store = self._store()
            if isinstance(msg, ListCaptures):
                found = await owned_captures(store, identity)
                await link.send(CaptureList(captures=[stored_capture(i) for i in found][:1024]))
                return True
            try:
                info = await owned_capture(store, identity, msg.capture_id)
            except InvalidId:
                info = None
            if info is None:  # missing and someone else's look the same: no probing
                raise Refusal("INVALID_REQUEST", f"no capture {msg.capture_id} of yours "
                              "(`pcapd captures list` shows yours)")
            await self.recorder.reauthorize(info, token)
            url, expires = await store.download_url(info, self._base_url(), time.time())
            await link.send(Download(capture=stored_capture(info), url=url,
                                     url_expires_at=expires))
            return True
        except Refusal as refusal:
            await link.send(Error(code=refusal.code, text=refusal.text, origin=self.config.id))
            return False

    async def _recording(self, link: Link, msg: Record | ListRecordings | RecordStop,
                         authorization: str | None, intake: _Intake) -> bool:
        """``pcapd record start|list|stop`` (:mod:`pcapd.api.recordings`); False when
        refused (link ends)."""
        try:
            token = _bearer(authorization)
            identity = await self.resolver.identify(token)
            intake.authenticated()
            if isinstance(msg, Record):
                self._check_requests(identity)
            await self.recorder.answer(link, msg, identity, token)
            return True
        except Refusal as refusal:
            await self._refuse(link, refusal)
            return False

    def _check_requests(self, identity: Identity) -> None:
        """``limits.requests_per_minute`` for a request that is not a capture."""
        wait = self.requests.allow(_user_of(identity), trio.current_time())
        if wait > 0:
            raise Refusal("LIMIT_REACHED", f"too many requests (limits.requests_per_minute is "
                          f"{self.config.limits.requests_per_minute}): try again in "
                          f"{wait:.0f} s")

    async def _devices(self, link: Link, msg: ListDevices, authorization: str | None,
                       intake: _Intake) -> bool:
        """``pcapd capture … -D``: each source's devices, from its agent. Resolved (so
        authenticated and authorized) exactly as a capture of the same target; False when
        refused (link ends)."""
        try:
            await self.resolver.identify(_bearer(authorization))
            intake.authenticated()
            resolution = await self.resolver.resolve(
                Start(target=msg.target, options=CaptureOptions(device="lo")),
                _bearer(authorization))
        except Refusal as refusal:
            await link.send(Error(code=refusal.code, text=refusal.text, origin=self.config.id))
            return False
        answers: list[SourceDevices] = []

        async def ask(job: AgentJob) -> None:
            answers.append(await ask_agent_devices(
                job, ssl_context=self.agent_tls, server_name=self.config.agents.server_name,
                within=START_TIMEOUT))

        async with open_nursery() as nursery:
            for job in resolution.jobs:
                nursery.start_soon(ask, job)
        order = [fit_text(j.origin, MAX_NAME) for j in resolution.jobs]  # as answers name them
        answers.sort(key=lambda a: order.index(a.origin))
        answers += [source_problem(u.origin, u.text) for u in resolution.unavailable]
        await link.send(DeviceList(sources=answers[:MAX_LIST]))
        return True

    def _store(self) -> Store:
        if self.store is None:
            raise Refusal("INVALID_REQUEST", f"the api {self.config.id} keeps no captures "
                          "(no storage configured)")
        return self.store

    def _base_url(self) -> str:
        """Where users reach this api, for download links: ``external_url`` as configured —
        never the ``Host`` / ``X-Forwarded-Proto`` a client sent, which anyone can forge to
        have a victim's link point at their own server. Not set: the listen address."""
        if self.config.external_url is not None:
            return self.config.external_url.rstrip("/")
        listen = self.config.listen
        scheme = "https" if listen.tls is not None else "http"
        host = f"[{listen.address}]" if ":" in listen.address else listen.address
        return f"{scheme}://{host}:{listen.port}"

    async def _capture(self, link: Link, msg: Start | RecordSave, authorization: str | None,
                       headers: Headers, intake: _Intake) -> None:
        """Verify the token, take a capture slot, then admit and run the capture, or merge a
        recording's windows as one (``pcapd record save``: :meth:`ApiRecorder.save` re-checks
        the permission); the slot is given back however this ends."""
        capture_id = uuid.uuid4().hex
        try:
            token = _bearer(authorization)
            identity = await self.resolver.identify(token)
            intake.authenticated()
            self._reserve(capture_id, identity)
        except Refusal as refusal:
            await self._refuse(link, refusal)
            return
        try:
            if isinstance(msg, Start):
                await self._admitted(link, msg, token, headers, capture_id)
            else:
                await self.recorder.save(link, msg, identity, token, headers, capture_id)
        except Refusal as refusal:  # (a save's: a capture's are answered by _admitted)
            await self._refuse(link, refusal)
        finally:
            self.slots.release(capture_id)

    async def _refuse(self, link: Link, refusal: Refusal) -> None:
        self.metrics.refused(refusal.code)
        log.info("%s: refused (%s): %s", link.peer, refusal.code, refusal.text,
                 extra={"event": "refused", "code": refusal.code})
        await link.send(Error(code=refusal.code, text=refusal.text, origin=self.config.id))

    async def _admitted(self, link: Link, start: Start, token: str | None, headers: Headers,
                        capture_id: str, *, resolution: Resolution | None = None,
                        saves: Mapping[str, RecordSave] | None = None) -> None:
        """Admit and run one capture; with ``resolution`` (already authorized) and ``saves``
        it is a recording's saved windows (:meth:`ApiRecorder.save`)."""
        upload: Upload | None = None
        try:
            if resolution is None:
                resolution = await self._admit(start, token)
            if start.upload:
                upload, info = await self._open_upload(capture_id, start, resolution)
        except Refusal as refusal:
            await self._refuse(link, refusal)
            return
        output: ClientOutput | UploadOutput = (
            UploadOutput(upload, link) if upload is not None else ClientOutput(link))
        capture = ApiCapture(self.config, capture_id, start, resolution, output,
                             self.agent_tls, saves=saves)
        self.captures[capture_id] = capture
        who = resolution.identity
        user = f"{who.user_name} ({who.user_id})" if who is not None else "local user"
        where = "".join(f", {key.replace('_', ' ')} {value}"
                        for key, value in resolution.audit.items())
        log.info("capture %s started by %s: %s%s, filter %r", capture_id, user,
                 resolution.target, where, start.options.filter, extra={
                     "event": "capture_started", "capture_id": capture_id, "user": user,
                     "target": resolution.target, "filter": start.options.filter,
                     "sources": [j.origin for j in resolution.jobs], **resolution.audit})
        end: End | None = None
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(self._listen, link, capture, start,
                                   None if upload is not None else nursery.cancel_scope)
                nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                try:
                    end = await capture.run()
                except NoSourceStarted as exc:
                    if upload is not None:
                        await upload.abort()
                    await link.send(Error(code=exc.code, text=exc.text, origin=self.config.id))
                    nursery.cancel_scope.cancel()
                    return
                if upload is not None:
                    assert isinstance(output, UploadOutput) and self.store is not None
                    with trio.CancelScope(shield=True):  # the file must end complete
                        stored = await finish_upload(self.store, upload, info, end,
                                                     output.bytes, self._base_url())
                    end = msgspec.structs.replace(end, stored=stored)
                    log.info("capture %s stored as %s", capture_id, stored.capture.capture_id,
                             extra={"event": "capture_stored", "capture_id": capture_id,
                                    "size": stored.capture.size})
                with contextlib.suppress(LinkClosed):
                    await link.send(end)
                nursery.cancel_scope.cancel()
        finally:
            self._ended(capture_id)
            # an aborted capture (client gone, failure, drain timeout) has no end: its
            # counts so far still go into the audit line and the metrics
            totals = end.totals if end is not None else capture.totals()
            reason = end.reason if end is not None else "aborted"
            self.metrics.ended(reason, totals)
            log.info("capture %s by %s ended: %s (%d packets, %d written)", capture_id, user,
                     reason if end is not None else "aborted (client gone or failed)",
                     totals.packets, totals.written, extra={
                         "event": "capture_ended", "capture_id": capture_id, "user": user,
                         "target": resolution.target, "filter": start.options.filter,
                         **resolution.audit,
                         "reason": reason, "packets": totals.packets, "bytes": totals.bytes,
                         "written": totals.written,
                         "dropped": (totals.agent_dropped + totals.api_dropped
                                     + totals.kernel_dropped),
                         "dropped_by": {"kernel": totals.kernel_dropped,
                                        "agent": totals.agent_dropped,
                                        "api": totals.api_dropped}})

    async def _listen(self, link: Link, capture: ApiCapture, start: Start,
                      scope: trio.CancelScope | None) -> None:
        """The client's side: ``stop``, refreshed tokens, or going away — which cancels a
        streamed capture at once (its agents stop), and stops an upload gracefully (``scope``
        None): the stored file must end complete."""
        try:
            while True:
                msg = await link.receive()
                if isinstance(msg, Stop):
                    capture.request_stop("stopped", "stopped by the user")
                elif isinstance(msg, Token):
                    await self._renew(link, capture, start, msg.token)
        except LinkClosed as exc:
            log.info("capture %s: client gone (%s): stopping its agents", capture.capture_id,
                     exc)
            if scope is None:
                capture.request_stop("stopped", "the user went away")
            else:
                scope.cancel()

    async def _open_upload(self, capture_id: str, start: Start,
                           resolution: Resolution) -> tuple[Upload, CaptureInfo]:
        store = self._store()
        who = resolution.identity or LOCAL_USER
        now = time.time()
        info = CaptureInfo(
            capture_id=capture_id, user_id=owner_key(who), user_name=who.user_name,
            target=resolution.target, filter=start.options.filter, started_at=now,
            ended_at=None, packets=0, dropped=0, size=0, reason="running",
            expires_at=now + self.config.storage.retention_days * 86400)
        try:
            return await store.open_upload(info), info
        except PcapdError as exc:
            raise Refusal("START_CAPTURE_FAILED", f"cannot store the capture: {exc}") from None

    async def _renew(self, link: Link, capture: ApiCapture, start: Start, token: str) -> None:
        """A refreshed token: authorized again for the same target, for the same user; the
        capture may then run past the old token's expiry. A refusal ends the capture (the
        user may no longer capture this); only a platform that cannot be reached leaves it
        running on the old token, which ends it when it expires."""
        try:
            identity = await self.resolver.verify(start, token)
        except Refusal as refusal:
            if refusal.code == "START_CAPTURE_FAILED":
                await link.send(Notice(code="CONNECTION_ERROR", text="the refreshed token "
                                       f"could not be checked: {refusal.text}; the capture "
                                       "goes on until the current token expires",
                                       origin=self.config.id))
                return
            await self._end_on_renewal(link, capture, refusal.code,
                                       f"the refreshed token was refused: {refusal.text}")
            return
        current = capture.identity
        if current is not None and (identity.user_id, identity.is_client) != \
                (current.user_id, current.is_client):
            await self._end_on_renewal(link, capture, "PERMISSION_DENIED",
                                       "the refreshed token belongs to someone else")
            return
        capture.renew(identity)

    async def _end_on_renewal(self, link: Link, capture: ApiCapture, code: Code,
                              text: str) -> None:
        text = f"{text}: the capture ends here"
        log.info("capture %s: %s", capture.capture_id, text,
                 extra={"event": "renewal_refused", "capture_id": capture.capture_id,
                        "code": code})
        try:
            await link.send(Notice(code=code, text=text, origin=self.config.id))
        finally:
            capture.request_stop("limit", text, "token")

    def _reserve(self, capture_id: str, identity: Identity) -> None:
        """Drain, ``limits.concurrent_captures`` (+ ``_per_user``) and
        ``limits.requests_per_minute``, checked and the slot taken with no await between."""
        if self.draining:
            raise Refusal("START_CAPTURE_FAILED", f"the api {self.config.id} is shutting down: "
                          "try again in a moment")
        user = _user_of(identity)
        self.slots.reserve(capture_id, user)
        wait = self.requests.allow(user, trio.current_time())
        if wait > 0:
            self.slots.release(capture_id)
            raise Refusal("LIMIT_REACHED", f"too many capture requests (limits."
                          f"requests_per_minute is {self.config.limits.requests_per_minute}): "
                          f"try again in {wait:.0f} s")

    async def _admit(self, start: Start, token: str | None) -> Resolution:
        """Authorize (the resolver asks the platform), then check the filter."""
        resolution = await self.resolver.resolve(start, token)
        if not resolution.jobs and not resolution.unavailable:
            raise Refusal("INVALID_REQUEST", "the target names no instance to capture")
        if not resolution.jobs:
            raise Refusal("START_CAPTURE_FAILED", "no instance can be captured: " + "; ".join(
                u.text for u in resolution.unavailable))
        try:  # only now, authorized: host names in it resolve in the child, under a deadline
            await check_filter(start.options.filter, start.options.snaplen)
        except InvalidFilter as exc:
            raise Refusal("INVALID_REQUEST", str(exc)) from None
        return resolution


class _NoRequest(Exception):
    """A link without a verified token reached its deadline."""


class _Intake:
    """One client link's unauthenticated phase: counted in :class:`PendingConnections`, and
    every message must arrive by ``timeout`` seconds after the link opened, until the token is
    verified (:meth:`authenticated`)."""

    def __init__(self, pending: PendingConnections, peer: str, timeout: float) -> None:
        self.pending = pending
        self.peer = peer
        self.timeout = timeout
        self.deadline = trio.current_time() + timeout
        self.counted = False

    def admit(self) -> str | None:
        refused = self.pending.admit(self.peer)
        self.counted = refused is None
        return refused

    async def receive(self, link: Link) -> Message | Data:
        """The next message; :class:`_NoRequest` past the deadline."""
        with trio.move_on_at(self.deadline):
            return await link.receive()
        raise _NoRequest

    def authenticated(self) -> None:
        self.deadline = math.inf
        self.done()

    def done(self) -> None:
        if self.counted:
            self.counted = False
            self.pending.release(self.peer)


def _user_of(identity: Identity | None) -> str:
    return owner_key(identity) if identity is not None else "local"


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file in 256 KiB pieces, read off the Trio thread."""
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(256 * 1024):
            yield chunk


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    try:
        return bearer_token(authorization)
    except Unauthenticated as exc:
        raise Refusal("UNAUTHENTICATED", str(exc)) from None


async def serve_api(api: Api, *, unix_path: str | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the api's client endpoint until cancelled (on ``unix_path`` in local mode)."""
    listen = api.config.listen
    ctx = (server_context(listen.tls.certificate, listen.tls.private_key, what="listen.tls")
           if listen.tls is not None else None)
    await serve_websocket(api.handle, listen.address, listen.port, ctx, unix_path=unix_path,
                          http_handler=api.http, max_message_size=CLIENT_MAX_MESSAGE,
                          task_status=task_status)
