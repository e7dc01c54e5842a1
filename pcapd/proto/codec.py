"""Encoding and decoding of single WebSocket messages, with every limit checked.

The decoder is the trust boundary: whatever a peer sends, the only exception that leaves this
module for input is :class:`~pcapd.errors.RemoteProtocolError`, whose text names the field at
fault (msgspec's ``$.options.snaplen`` paths are kept). Sizes are checked before parsing, so an
oversized message costs one ``len()``. The encoder checks our own output against the same schema
(by decoding it again): a message the peer would refuse fails here, as a
:class:`~pcapd.errors.LocalProtocolError`, where the bug is.

Binary (data) messages carry a 12-byte header, network byte order::

    0      1      2             4                              12
    +------+------+-------------+------------------------------+-----------------------+
    | kind | flags| reserved    | watermark (uint64, ns, 0=none)| payload: pcapng blocks |
    +------+------+-------------+------------------------------+-----------------------+

``kind`` 0x01 is the only kind of level 1; ``flags`` and ``reserved`` must be zero. The payload is
opaque here (concatenated pcapng blocks); it is returned as a view, not copied.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from pcapd.errors import LocalProtocolError, RemoteProtocolError
from pcapd.proto.messages import MESSAGE_TYPES, Data, Message, type_code

MAX_TEXT_MESSAGE: Final = 1 << 20
"""Bytes in one TEXT message: room for ``started``/``statistics`` with 1024 sources."""
MAX_BINARY_MESSAGE: Final = 8 << 20
"""Bytes in one BINARY message, header included: bounds what one batch can pin in memory."""

DATA_HEADER: Final = struct.Struct(">BBHQ")
DATA_HEADER_SIZE: Final = DATA_HEADER.size
KIND_PCAPNG: Final = 0x01
MAX_WATERMARK: Final = 2**64 - 1

Buffer = bytes | bytearray | memoryview

_decoder: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)
_encoder: Final = msgspec.json.Encoder()


def nbytes(data: Buffer) -> int:
    """Size in bytes of any buffer (``len`` of a memoryview counts items)."""
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _clip(text: str, limit: int = 200, *, path: bool = True) -> str:
    """msgspec quotes the peer's value in full: clip it, escape controls, keep the path."""
    head, sep, where = text.rpartition(" - at `")
    if not sep:  # msgspec names no path for the message itself: name it all the same
        head, sep, where = (text, " - at `", "$`") if path else (text, "", "")
    if len(head) > limit:
        head = head[:limit] + "…"
    head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return head + sep + where


def encode(msg: Message, *, max_size: int = MAX_TEXT_MESSAGE) -> str:
    """The JSON text of ``msg`` for a TEXT message; LocalProtocolError if a peer would refuse it."""
    if not isinstance(msg, MESSAGE_TYPES):
        raise LocalProtocolError(f"not a protocol message: {type(msg).__name__}")
    code = type_code(msg)
    try:
        raw = _encoder.encode(msg)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise LocalProtocolError(f"cannot encode a `{code}` message: {exc}") from exc
    if len(raw) > max_size:
        raise LocalProtocolError(
            f"a `{code}` message of {len(raw)} bytes is over the limit of {max_size} bytes"
        )
    try:
        again = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise LocalProtocolError(f"refusing to send an invalid `{code}` message: {exc}") from exc
    if again != msg:
        raise LocalProtocolError(
            f"a `{code}` message does not survive encoding (a NaN or infinite float, or a tuple "
            "where a list belongs?)"
        )
    return raw.decode()


def decode_text(data: str | Buffer, *, max_size: int = MAX_TEXT_MESSAGE) -> Message:
    """Parse one TEXT message; RemoteProtocolError, naming the field, for anything invalid."""
    if isinstance(data, str):
        if len(data) > max_size:  # characters <= bytes: surely too long, skip the encoding
            raise RemoteProtocolError(
                f"text message of {len(data)}+ bytes is over the limit of {max_size} bytes"
            )
        try:
            raw: Buffer = data.encode()
        except UnicodeEncodeError as exc:
            raise RemoteProtocolError(
                f"text message is not valid UTF-8 (lone surrogate at character {exc.start})"
            ) from exc
    else:
        raw = data
    size = nbytes(raw)
    if size > max_size:
        raise RemoteProtocolError(
            f"text message of {size} bytes is over the limit of {max_size} bytes"
        )
    if not isinstance(data, str):
        # Checked here, not left to the JSON parser: its answer differs between versions
        # (msgspec 0.22 raised UnicodeDecodeError, 0.23 a DecodeError in its own words).
        try:
            str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"text message is not valid UTF-8 (at byte {exc.start})"
            ) from exc
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid message: {_clip(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(
            f"invalid message: not well-formed JSON ({_clip(str(exc), path=False)})"
        ) from exc
    except RecursionError as exc:
        raise RemoteProtocolError("invalid message: JSON nested too deeply") from exc


def encode_data(
    watermark_ns: int, payload: Buffer = b"", *, max_size: int = MAX_BINARY_MESSAGE
) -> bytes:
    """A BINARY message: header + payload (one copy, the join). Empty payload = heartbeat."""
    return data_header(watermark_ns, nbytes(payload), max_size=max_size) + payload


def data_header(watermark_ns: int, payload_size: int, *, max_size: int = MAX_BINARY_MESSAGE
                ) -> bytes:
    """The first bytes of a BINARY message whose payload (``payload_size`` bytes) follows: for
    a sender that writes header and payload out without joining them first."""
    if not 0 <= watermark_ns <= MAX_WATERMARK:
        raise LocalProtocolError(f"watermark {watermark_ns} is not an unsigned 64-bit integer")
    size = DATA_HEADER_SIZE + payload_size
    if size > max_size:
        raise LocalProtocolError(
            f"a data message of {size} bytes is over the limit of {max_size} bytes: "
            "send smaller batches"
        )
    return DATA_HEADER.pack(KIND_PCAPNG, 0, 0, watermark_ns)


def decode_binary(data: Buffer, *, max_size: int = MAX_BINARY_MESSAGE) -> Data:
    """Parse one BINARY message; the payload is a view into ``data`` (no copy)."""
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    size = view.nbytes
    if size > max_size:
        raise RemoteProtocolError(
            f"data message of {size} bytes is over the limit of {max_size} bytes"
        )
    if size < DATA_HEADER_SIZE:
        raise RemoteProtocolError(
            f"data message of {size} bytes is shorter than its {DATA_HEADER_SIZE}-byte header"
        )
    kind, flags, reserved, watermark = DATA_HEADER.unpack_from(view)
    if kind != KIND_PCAPNG:
        raise RemoteProtocolError(
            f"unknown data kind 0x{kind:02x} (protocol level 1 knows 0x01, pcapng blocks)"
        )
    if flags:
        raise RemoteProtocolError(f"unknown data flags 0x{flags:02x} (level 1 defines none)")
    if reserved:
        raise RemoteProtocolError(f"reserved data header bytes are 0x{reserved:04x}, not zero")
    return Data(watermark=watermark, payload=view[DATA_HEADER_SIZE:])
