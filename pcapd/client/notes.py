"""The capture's own record of what happened to it: notices as packet comments.

A person reading the file later (or Wireshark through extcap, where stderr is hidden) sees an
unavailable instance or a congested link where it happened: each notice becomes an
``opt_comment`` of the next packet written after it (``frame.comment`` in Wireshark). The api
sends whole pcapng blocks in pcapd's own byte order (little-endian), so the first Enhanced
Packet Block of a payload is found by walking block lengths and re-encoded with the comment;
everything else passes through untouched. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct

from pcapd.pcapng import EPB
from pcapd.pcapng.rewrite import commented_packet
from pcapd.proto import Notice

NOTED = frozenset({"INSTANCE_UNAVAILABLE", "CONGESTED", "CAPTURE_STOPPED", "CAPTURE_RESUMED",
                   "LIMIT_REACHED", "START_CAPTURE_FAILED", "CONNECTION_ERROR"})
"""Notices worth a comment in the file (the api already marks a resumption's first packet)."""

_HEAD = struct.Struct("<II")


def note_text(msg: Notice) -> str:
    """``pcapd CONGESTED router/0: the agent dropped 12 packets``."""
    where = f" {msg.origin}:" if msg.origin and msg.origin not in msg.text else ""
    return f"pcapd {msg.code}{where} {msg.text}"


def with_comments(payload: bytes, comments: list[str]) -> bytes | None:
    """``payload`` with ``comments`` on its first packet; None when it holds no packet."""
    pos = 0
    while pos + _HEAD.size <= len(payload):
        block_type, length = _HEAD.unpack_from(payload, pos)
        if length < 12 or length % 4 or pos + length > len(payload):
            return None  # not whole little-endian blocks: leave it alone
        if block_type == EPB:
            commented = commented_packet(payload[pos:pos + length], comments)
            return payload[:pos] + commented + payload[pos + length:]
        pos += length
    return None


class Notes:
    """Notices waiting for the next packet (:meth:`annotate` each payload before writing)."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def add(self, msg: Notice) -> None:
        if msg.code in NOTED:
            self.pending.append(note_text(msg))

    def annotate(self, payload: bytes) -> bytes:
        if not self.pending:
            return payload
        commented = with_comments(payload, self.pending)
        if commented is None:
            return payload
        self.pending = []
        return commented
