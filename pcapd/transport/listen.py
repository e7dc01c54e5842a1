"""A listener that waits out a full descriptor table instead of failing or flooding logs."""

from __future__ import annotations

import errno
import logging
import resource

import trio

log = logging.getLogger(__name__)

ACCEPT_RETRY = 0.1
"""Seconds between attempts to accept while the process is out of file descriptors."""
ACCEPT_LOG_INTERVAL = 10.0
"""At most one log line per this many seconds about being unable to accept."""


class PatientListener(trio.abc.Listener[trio.SocketStream]):
    """Wraps a listener so that running out of descriptors delays connections, never fails.

    When ``accept`` fails for want of descriptors (EMFILE: the process's ``RLIMIT_NOFILE``;
    ENFILE: the system's) the connection stays in the kernel's backlog; we try again every
    :data:`ACCEPT_RETRY` seconds, so the server recovers by itself once connections close.
    Trio's own loop does the same but logs a traceback ten times a second; this says once
    (per :data:`ACCEPT_LOG_INTERVAL`) what is wrong and what to do, in pcapd's log.
    """

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self._refused_since: float | None = None
        self._logged_at = -ACCEPT_LOG_INTERVAL

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                stream = await self.inner.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                self._cannot_accept(exc)
                await trio.sleep(ACCEPT_RETRY)
                continue
            if self._refused_since is not None:
                log.warning("%s: accepting connections again after %.1fs",
                            self._where(), trio.current_time() - self._refused_since,
                            extra={"event": "accepting"})
                self._refused_since = None
            return stream

    def _cannot_accept(self, exc: OSError) -> None:
        now = trio.current_time()
        if self._refused_since is None:
            self._refused_since = now
        if now - self._logged_at < ACCEPT_LOG_INTERVAL:
            return
        self._logged_at = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error("%s: cannot accept connections: %s (%s; this process may open %d files): "
                  "new connections wait in the backlog until some close; if this recurs, "
                  "raise the limit (systemd LimitNOFILE=, bpm limits.open_files)",
                  self._where(), exc.strerror, errno.errorcode.get(exc.errno or 0, "?"), soft,
                  extra={"event": "cannot_accept"})

    def _where(self) -> str:
        try:
            name = self.inner.socket.getsockname()
        except OSError:
            return "listener"
        if isinstance(name, tuple):
            return f"port {name[1]}"
        return str(name) or "listener"

    async def aclose(self) -> None:
        await self.inner.aclose()
