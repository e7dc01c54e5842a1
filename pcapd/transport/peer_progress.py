"""Whether a peer is still taking our data, as the kernel sees it (``TCP_INFO``, ``TIOCOUTQ``).

The keepalive (:meth:`pcapd.transport.link.Link.keepalive`) asks this while a pong is overdue:
a slow reader's pong waits behind megabytes of socket buffers, but the bytes it acknowledges
keep growing, so it is not taken for a vanished one.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

import trio

Sample = tuple[int | None, int]
"""``(bytes the peer acknowledged, bytes queued toward it)``; the first is None for a Unix
socket."""

_TCP_INFO_SIZE = 136
_TCPI_BYTES_ACKED = 120
"""Offset of ``tcpi_bytes_acked`` in Linux's ``struct tcp_info`` (since Linux 4.1)."""


def sample(sock: trio.socket.SocketType | None) -> Sample | None:
    """What the kernel says about the data toward the peer now; None when the link has no
    socket (or the kernel will not say). Cheap: two system calls, made only while a pong is
    overdue."""
    if sock is None:
        return None
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if sock.family == socket.AF_UNIX:
            return None, queued
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
    return acked, queued


def progressed(before: Sample | None, after: Sample | None) -> bool:
    """Whether the peer took data between two :func:`sample`\\ s while data waited for it
    (a ping that waits behind nothing has no excuse)."""
    if before is None or after is None or after[1] <= 0:
        return False
    if after[0] is not None and before[0] is not None:
        return after[0] > before[0]
    return after[1] != before[1]
