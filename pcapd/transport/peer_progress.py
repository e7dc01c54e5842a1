"""Whether a peer is still taking our data, and whether its host still answers at all, as the
kernel sees it (``TCP_INFO``, ``TIOCOUTQ``).

The keepalive (:meth:`pcapd.transport.link.Link.keepalive`) asks this while a pong is overdue:
a slow reader's pong waits behind megabytes of socket buffers, but the bytes it acknowledges
keep growing, so it is not taken for a vanished one. They grow in steps, though: a receiver
reopens its TCP window only once a sixteenth of its buffer is free (Linux's silly-window
avoidance), and with the buffer autotuned to tens of MB a reader at 100 kB/s shows progress
every 5-15 s. A host that vanished is told apart by what its kernel does: it answers neither
our retransmissions nor our window probes.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import NamedTuple

import trio


class Sample(NamedTuple):
    """What the kernel says about one link's socket at one moment."""

    acked: int | None
    """Bytes the peer acknowledged; None for a Unix socket."""
    queued: int
    """Bytes sent and not yet taken by the peer (unacknowledged, or unsent)."""
    answering: bool = True
    """The peer's host answers: nothing we sent has waited through two retransmission timeouts
    or two zero-window probes (always true for a Unix socket: the peer is on this host)."""


_TCP_INFO_SIZE = 136
_TCPI_RETRANSMITS = 2
"""Offset of ``tcpi_retransmits`` (u8: retransmission timeouts since the last ACK of new
data) in Linux's ``struct tcp_info``; ``tcpi_probes`` (zero-window probes unanswered) follows."""
_UNANSWERED = 2
"""Retransmissions or window probes in a row without an answer that mean the host is gone.
One is no sign: a live receiver's kernel leaves a probe unanswered now and then (it rate-limits
its answers to out-of-window segments; measured on loopback and veth, 6.x kernels), and a
lossy path loses one segment now and then. A vanished host reaches two in under 1 s."""
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
            return Sample(None, queued)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
    retransmits, probes = info[_TCPI_RETRANSMITS], info[_TCPI_RETRANSMITS + 1]
    return Sample(acked, queued, answering=max(retransmits, probes) < _UNANSWERED)


def progressed(before: Sample | None, after: Sample | None) -> bool:
    """Whether the peer took data between two :func:`sample`\\ s while data waited for it
    (a ping that waits behind nothing has no excuse)."""
    if before is None or after is None or after.queued <= 0:
        return False
    if after.acked is not None and before.acked is not None:
        return after.acked > before.acked
    return after.queued != before.queued
