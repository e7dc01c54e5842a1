"""What the agent and api services share: their running captures and status answers, serving
until a signal.

Both roles run the same way under monit or systemd: serve, and on the first SIGTERM/SIGINT
*drain* — take no new captures, stop the running ones gracefully so every user gets a complete
file, exit when they are done or ``drain_timeout`` has passed; a second signal exits at once.
"""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Awaitable, Callable, Collection
from typing import Generic, Protocol, TypeVar

import trio

from pcapd.proto import MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION, SOFTWARE, StatusReply
from pcapd.transport.groups import open_nursery

Serve = Callable[..., Awaitable[None]]
T = TypeVar("T")


class Service(Protocol):
    """A role's captures, as draining needs them."""

    draining: bool

    @property
    def running(self) -> Collection[str]: ...

    def stop_all(self) -> None: ...

    async def wait_idle(self) -> None: ...


class RoleService(Generic[T]):
    """What the agent and the api share as a :class:`Service`: the captures running now, by
    id, waited out by a drain and listed by ``/status``.

    ``live`` is the role's own dict of its captures; the role adds to it and calls
    :meth:`_ended` (not ``del``) when one ends, which wakes :meth:`wait_idle`.
    """

    def __init__(self, server_id: str, live: dict[str, T]) -> None:
        self.draining = False
        self._server_id = server_id
        self._live = live
        self._changed = trio.Event()

    async def wait_idle(self) -> None:
        """Until no capture runs (drain)."""
        while self._live:
            await self._changed.wait()

    @property
    def running(self) -> list[str]:
        """Ids of the captures running now."""
        return list(self._live)

    def status(self) -> StatusReply:
        """The answer to a ``status`` request and to ``GET /status``."""
        running = sorted(self._live)
        return StatusReply(healthy=True, draining=self.draining, software=SOFTWARE,
                           protocol=PROTOCOL_VERSION, min_protocol=MIN_COMPATIBLE_VERSION,
                           server_id=self._server_id, captures=len(running),
                           capture_ids=running[:1024])

    def _ended(self, capture_id: str) -> None:
        del self._live[capture_id]
        self._changed.set()
        self._changed = trio.Event()


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; the limit now in force.

    Every connection costs a descriptor, idle ones included, and the usual soft limit (1024)
    is far below what the hard limit (systemd's LimitNOFILE=, bpm's limits.open_files)
    allows; Trio waits on epoll, so no select() ceiling is in the way. Should the table still
    fill up, the listeners wait for descriptors to be freed (:mod:`pcapd.transport.listen`).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


async def serve_until_signalled(role: str, server_id: str, serve: Serve, service: Service,
                                drain_timeout: float, log: logging.Logger) -> None:
    """Run ``serve`` (a ``serve_*`` function taking ``task_status``) until a signal, then drain."""
    open_files = raise_open_files_limit()
    async with open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        for listener in listeners:
            host, port, *_ = listener.socket.getsockname()
            log.info("pcapd %s %s listening on %s:%d (open files limit %d)", role, server_id,
                     host, port, open_files,
                     extra={"event": "listening", "port": port, "open_files": open_files})
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: draining (%d captures running)", signal.Signals(signum).name,
                         len(service.running), extra={"event": "draining"})
                break
            service.stop_all()
            with trio.move_on_after(drain_timeout) as drain:
                async with open_nursery() as waiters:
                    waiters.start_soon(_cancel_when_idle, service, waiters.cancel_scope)
                    async for _ in signals:
                        log.warning("second signal: exiting at once")
                        break
                    waiters.cancel_scope.cancel()
            if drain.cancelled_caught:
                log.warning("drain_timeout of %ss passed: exiting with %d captures running",
                            drain_timeout, len(service.running))
        nursery.cancel_scope.cancel()


async def _cancel_when_idle(service: Service, scope: trio.CancelScope) -> None:
    await service.wait_idle()
    scope.cancel()
