"""The agent role: a mutual-TLS WebSocket server that runs captures for the api.

Each connection is one link (``hello``, then ``status`` requests or one ``start``). Requests are
checked here, before libpcap sees them: the concurrency limit, the snaplen limit, and the
namespace — ``host`` or an instance guid that must name a file in ``containers.netns_dir``. The
agent's own link to the api is left out of host captures, or a capture of the interface
carrying it would capture itself capturing.
"""

from __future__ import annotations

import json
import logging
import socket
from functools import cached_property, partial
from pathlib import Path

import trio
from trio_websocket import Endpoint, WebSocketConnection

from pcapd.agent.capture import CaptureRun
from pcapd.agent.netns import NamespaceError, open_in_netns, resolve_container_netns
from pcapd.agent.pcap import (
    HandleError,
    HandleFailed,
    InvalidDevice,
    InvalidFilter,
    InvalidSnaplen,
    open_handle,
)
from pcapd.agent.pcap import (
    Link as TcpLink,
)
from pcapd.agent.recorder import Recorder, send_save
from pcapd.config import AgentConfig
from pcapd.errors import Refusal
from pcapd.flow import DropGate
from pcapd.metrics import Metrics
from pcapd.proto import (
    AgentTarget,
    Counters,
    DeviceList,
    Error,
    Hello,
    ListDevices,
    ListRecordings,
    Record,
    RecordingList,
    RecordingStarted,
    RecordSave,
    RecordStop,
    ResponderSession,
    Source,
    SourceDevices,
    Start,
    Started,
    Status,
)
from pcapd.transport.groups import open_nursery
from pcapd.transport.http import HttpRouter, metrics_route, status_route
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Link, LinkClosed
from pcapd.transport.service import RoleService
from pcapd.transport.tls import client_identity_problem, server_context
from pcapd.transport.ws import Headers, link_endpoints, serve_websocket

LOCAL_NETNS_DIR = "/run/netns"
"""Where ``ip netns add`` puts its namespaces (local mode's containers.netns_dir)."""

log = logging.getLogger(__name__)



class Agent(RoleService[CaptureRun]):
    """The captures of one agent process, and the rules for starting more."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.runs: dict[str, CaptureRun] = {}
        super().__init__(config.id, self.runs)
        self.metrics = Metrics("agent", lambda: len(self.runs))
        self.recorder = Recorder(config)

    @cached_property
    def http(self) -> HttpRouter:
        """Plain HTTP on the agent's (mutual TLS) port: ``GET /status``."""
        return HttpRouter({"/status": status_route(self.status),
                           "/metrics": metrics_route(self.metrics)})

    def stop_all(self) -> None:
        """Ask every running capture to stop gracefully (drain)."""
        self.draining = True
        for run in self.runs.values():
            run.request_stop("drained", f"agent {self.config.id} is shutting down")

    async def handle(self, ws: WebSocketConnection, peer: str, headers: Headers) -> None:
        """One link from the api, from ``hello`` to close."""
        link = Link(ws, ResponderSession("agent"), peer)
        try:
            hello = await link.receive()
            assert isinstance(hello, Hello)  # the session refuses anything else first
            await link.send(link.session.make_welcome(self.config.id))  # type: ignore[union-attr]
            async with open_nursery() as nursery:  # a watching link's trigger notices
                try:
                    await self._serve_link(link, nursery)
                finally:
                    nursery.cancel_scope.cancel()
        except LinkClosed as exc:
            log.info("link from %s closed: %s", peer, exc)

    async def _serve_link(self, link: Link, nursery: trio.Nursery) -> None:
        """Requests until a capture or a save (the link's last) or the api's ``error``."""
        while True:
            msg = await link.receive()
            if isinstance(msg, Status):
                await link.send(self.status())
            elif isinstance(msg, Start):
                await self._capture(link, msg)
                return
            elif isinstance(msg, ListDevices):
                await link.send(await self._devices(msg))
            elif isinstance(msg, Record):
                answer = await self._record(link, msg)
                await link.send(answer)
                if isinstance(answer, Error):
                    return
            elif isinstance(msg, RecordStop):
                await link.send(RecordingList(recordings=self.recorder.stop(msg.recording_id)))
            elif isinstance(msg, ListRecordings):
                await link.send(RecordingList(
                    recordings=self.recorder.listed(msg.recording_ids)))
                if msg.watch:
                    nursery.start_soon(self._forward_triggers, link)
                    nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            elif isinstance(msg, RecordSave):
                await self._save(link, msg)
                return
            elif isinstance(msg, Error):
                return

    async def _record(self, link: Link, record: Record) -> RecordingStarted | Error:
        """Arm a recording (checked as a capture is), or say why not."""
        target = record.target
        assert isinstance(target, AgentTarget)  # the session checks
        device = record.options.device
        try:
            if self.draining:
                raise Refusal("START_CAPTURE_FAILED", f"agent {self.config.id} is shutting down")
            limit = self.config.limits.max_snaplen
            if record.options.snaplen > limit:
                raise Refusal("INVALID_REQUEST", f"snaplen {record.options.snaplen} is above "
                              f"this agent's maximum of {limit} (limits.max_snaplen)")
            netns = self._netns(target)
            await self._check_container(target)
            source = Source(id=0, name=f"{target.source}:{device}",
                            description=target.namespace if netns is not None else self.config.id)
            kernel = record.options.filter
            if netns is None:  # the agent's own port: saves of the ring would fill the ring
                port = self.config.listen.port
                kernel = f"({kernel}) and not tcp port {port}" if kernel.strip() else \
                    f"not tcp port {port}"
            return await self.recorder.start(record, source, netns, kernel)
        except Refusal as refusal:
            self.metrics.refused(refusal.code)
            return Error(code=refusal.code, text=refusal.text, origin=self.config.id)
        except InvalidDevice:
            return Error(code="INVALID_REQUEST", text=await self._no_such_device(
                target.source, device, netns), origin=self.config.id)
        except (InvalidFilter, InvalidSnaplen) as exc:
            return Error(code="INVALID_REQUEST", text=f"{self.config.id}: {exc}",
                         origin=self.config.id)
        except (HandleError, NamespaceError) as exc:
            self.metrics.refused("START_CAPTURE_FAILED")
            return Error(code="START_CAPTURE_FAILED", text=f"{self.config.id}: {exc}",
                         origin=self.config.id)

    async def _forward_triggers(self, link: Link) -> None:
        """Trigger notices to a watching link; its receiving side reports the link's end."""
        with self.recorder.watch() as notices:
            async for notice in notices:
                try:
                    await link.send(notice)
                except LinkClosed:
                    return

    async def _save(self, link: Link, save: RecordSave) -> None:
        """A window of a recording's ring, streamed as a capture. A ring in files that cannot
        be read (a disk error, a segment cut short) ends the save with ``error``, not the
        link with an internal error."""
        try:
            await self._send_window(link, save)
        except OSError as exc:
            log.warning("recording %s: cannot read its ring: %s", save.recording_id, exc)
            await link.send(Error(code="INSTANCE_UNAVAILABLE", origin=self.config.id, text=(
                f"agent {self.config.id}: cannot read recording {save.recording_id}'s ring "
                f"({exc}): the save ends here")))

    async def _send_window(self, link: Link, save: RecordSave) -> None:
        found = await self.recorder.window(save)
        if found is None:
            await link.send(Error(code="INSTANCE_UNAVAILABLE", origin=self.config.id, text=(
                f"agent {self.config.id} holds no recording {save.recording_id} (it ended, "
                "or the agent restarted)")))
            return
        recording, window = found
        log.info("recording %s: saving %d packets for %s", recording.id, window.packets,
                 link.peer, extra={"event": "recording_saved", "recording_id": recording.id})
        await send_save(link, recording, window)

    async def _capture(self, link: Link, start: Start) -> None:
        target = start.target
        assert isinstance(target, AgentTarget) and start.capture_id is not None  # session checks
        try:
            netns = self._admit(start, target)
            await self._check_container(target)
        except Refusal as refusal:
            self.metrics.refused(refusal.code)
            await link.send(Error(code=refusal.code, text=refusal.text, origin=self.config.id))
            return
        device = start.options.device
        name = f"{target.source}:{device}"
        description = target.namespace if netns is not None else self.config.id
        exclude = [] if netns is not None else _own_link(link.ws)
        run = CaptureRun(start.capture_id, start, name, description)
        self.runs[start.capture_id] = run  # reserved before the await: counts toward the limit
        gate: DropGate | None = None
        try:
            try:
                opening = open_handle(device, filter=start.options.filter,
                                      snaplen=start.options.snaplen, netns=netns,
                                      exclude=exclude)
                async with opening as handle:
                    log.info("capture %s started: %s filter=%r for %s", start.capture_id, name,
                             start.options.filter, link.peer)
                    await link.send(Started(capture_id=start.capture_id, sources=[
                        Source(id=0, name=name, description=description)]))
                    buf = self.config.buffer
                    gate = DropGate(buf.size, buf.upper_limit, buf.lower_limit)
                    async with open_nursery() as nursery:
                        nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                        await run.run(link, handle, gate)
                        nursery.cancel_scope.cancel()
            except InvalidDevice:
                await link.send(Error(code="INVALID_REQUEST", text=await self._no_such_device(
                    target.source, device, netns), origin=self.config.id))
                return
            except (InvalidFilter, InvalidSnaplen) as exc:
                await link.send(Error(code="INVALID_REQUEST", text=f"{self.config.id}: {exc}",
                                      origin=self.config.id))
                return
            except (HandleFailed, HandleError, NamespaceError) as exc:
                self.metrics.refused("START_CAPTURE_FAILED")
                await link.send(Error(code="START_CAPTURE_FAILED", text=f"{self.config.id}: {exc}",
                                      origin=self.config.id))
                return
        except LinkClosed:
            run.end_reason, run.end_text = "failed", "the api went away"
            raise
        finally:
            self._ended(start.capture_id)
            c = run.counters
            self.metrics.ended(run.end_reason, Counters(
                packets=c.packets, bytes=c.bytes, kernel_received=c.kernel.received,
                kernel_dropped=c.kernel.kernel_dropped,
                interface_dropped=c.kernel.interface_dropped,
                agent_dropped=gate.statistics().dropped if gate is not None else 0,
                written=c.sent))
            log.info("capture %s ended (%s%s): %d packets, %d sent, kernel dropped %d",
                     run.capture_id, run.end_reason, f": {run.end_text}" if run.end_text else "",
                     c.packets, c.sent, c.kernel.kernel_dropped,
                     extra={"event": "capture_ended", "capture_id": run.capture_id})

    def _admit(self, start: Start, target: AgentTarget) -> Path | None:
        """The namespace to capture in, or a :class:`Refusal` saying why not."""
        limits = self.config.limits
        if self.draining:
            raise Refusal("START_CAPTURE_FAILED", f"agent {self.config.id} is shutting down")
        if len(self.runs) >= limits.concurrent_captures:
            raise Refusal("LIMIT_REACHED", f"agent {self.config.id} already runs "
                          f"{len(self.runs)} captures (limits.concurrent_captures)")
        if start.capture_id in self.runs:
            raise Refusal("INVALID_REQUEST", f"capture {start.capture_id} is already running")
        if start.options.snaplen > limits.max_snaplen:
            raise Refusal("INVALID_REQUEST", f"snaplen {start.options.snaplen} is above this "
                          f"agent's maximum of {limits.max_snaplen} (limits.max_snaplen)")
        return self._netns(target)

    def _netns(self, target: AgentTarget) -> Path | None:
        """The namespace file of ``target`` (None: the agent's own), or a Refusal."""
        if target.namespace == "host":
            return None
        netns_dir = self.config.containers.netns_dir
        if netns_dir is None:
            raise Refusal("INVALID_REQUEST", f"agent {self.config.id} hosts no containers "
                          f"(containers.netns_dir is not set): cannot capture {target.namespace}")
        try:
            return resolve_container_netns(Path(netns_dir), target.namespace)
        except NamespaceError as exc:
            if Path(netns_dir) == Path(LOCAL_NETNS_DIR):  # `ip netns` names: the user's typo
                raise Refusal("INVALID_REQUEST", f"{target.source}: no network namespace "
                              f"{target.namespace!r} in {netns_dir} (`ip netns list` shows "
                              "those there are)") from None
            raise Refusal("INSTANCE_UNAVAILABLE", f"{self.config.id}: {exc}") from None

    async def _no_such_device(self, source: str, device: str, netns: Path | None) -> str:
        """``my-app/0: eth7 not in the container; it has: eth0, lo`` — the instance named once,
        with what is there to choose from."""
        where = "in the container" if netns is not None else "on the host"
        try:
            found = await open_in_netns(netns, socket.if_nameindex)
            names = ", ".join(sorted(name for _, name in found))
        except (OSError, NamespaceError):
            names = "(cannot list its devices)"
        return f"{source}: {device} not {where}; it has: {names}"

    async def _devices(self, msg: ListDevices) -> DeviceList | Error:
        """``tcpdump -D`` in the namespace the api names, checked as a capture there would be."""
        target = msg.target
        assert isinstance(target, AgentTarget)  # the session checks
        try:
            netns = self._netns(target)
            await self._check_container(target)
            names = await open_in_netns(netns, socket.if_nameindex)
        except Refusal as refusal:
            return Error(code=refusal.code, text=refusal.text, origin=self.config.id)
        except (NamespaceError, OSError) as exc:
            return Error(code="INSTANCE_UNAVAILABLE", text=f"{self.config.id}: {exc}",
                         origin=self.config.id)
        devices = [name for _, name in sorted(names)]
        return DeviceList(sources=[SourceDevices(origin=target.source, devices=devices)])

    async def _check_container(self, target: AgentTarget) -> None:
        """With garden's container metadata store configured, the container must belong to the
        app the api named: a confused or compromised api cannot aim at another app's container.
        """
        store = self.config.containers.metadata_store
        if store is None or target.namespace == "host":
            return
        if target.app_guid is None:
            raise Refusal("INVALID_REQUEST", f"{self.config.id}: container {target.namespace} "
                          "requested without its app guid (containers.metadata_store is set)")
        try:
            entries = await trio.to_thread.run_sync(_read_metadata_store, store)
        except (OSError, ValueError) as exc:
            raise Refusal("START_CAPTURE_FAILED", f"{self.config.id}: cannot read the container "
                          f"metadata store {store} (containers.metadata_store): {exc}") from None
        entry = entries.get(target.namespace)
        metadata = entry.get("metadata") if isinstance(entry, dict) else None
        if not isinstance(metadata, dict):
            raise Refusal("INSTANCE_UNAVAILABLE", f"{self.config.id}: no container "
                          f"{target.namespace} on this cell")
        if metadata.get("app_id") != target.app_guid:
            raise Refusal("PERMISSION_DENIED", f"{self.config.id}: container {target.namespace} "
                          f"does not belong to app {target.app_guid}")


def _read_metadata_store(path: str) -> dict[str, object]:
    """Garden's ``container-metadata/store.json``: ``{handle: {"metadata": {...}}}``."""
    with open(path, "rb") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _own_link(ws: WebSocketConnection) -> list[TcpLink]:
    local, remote = link_endpoints(ws)
    if isinstance(local, Endpoint) and isinstance(remote, Endpoint):
        return [(str(local.address), local.port, str(remote.address), remote.port)]
    return []


async def serve_agent(config: AgentConfig, agent: Agent | None = None, *,
                      task_status: trio.TaskStatus[list[trio.SocketListener]]
                      = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the agent until cancelled; reports the listeners (for the bound port)."""
    tls = config.tls
    ctx = server_context(tls.certificate, tls.private_key, client_ca=tls.client_ca, what="tls")
    agent = agent or Agent(config)
    async with open_nursery() as nursery:
        await nursery.start(agent.recorder.serve)
        await serve_websocket(agent.handle, config.listen.address, config.listen.port, ctx,
                              http_handler=agent.http,
                              check_client=partial(client_identity_problem, name=tls.client_name),
                              task_status=task_status)
