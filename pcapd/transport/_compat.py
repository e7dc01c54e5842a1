"""Every use pcapd makes of a dependency's private API, checked when pcapd loads.

A private name may change in any release, and setup.cfg puts no upper bound on trio or
trio-websocket. A patch assigned to a renamed method silently creates an attribute nobody calls,
and a ``getattr(obj, "_private", None)`` silently takes its fallback: only a behaviour test would
notice. So each private name pcapd relies on is listed here and checked at import; a missing one
raises :class:`IncompatibleDependency`, which names the dependency, its version, what pcapd
expected and why, before any connection is made.

The uses:

- trio-websocket: ``WebSocketConnection._handle_ping_event`` is replaced by
  :func:`_pong_while_open`, which reads the connection's ``_wsproto`` and calls its ``_send``.
- trio-websocket: :func:`send_binary` frames a server's data message itself and writes it with
  the connection's ``_stream`` under its ``_stream_lock``, reading ``_wsproto`` and
  ``_close_reason`` and calling ``_abort_web_socket`` as trio-websocket's own send does.
- trio: ``SSLStream._ssl_object``, read by :func:`ssl_object` (the TLS records already
  received, decrypted without I/O: :mod:`pcapd.transport.streams`).

The checks take the module as an argument, so a test can hand them a fake one.
"""

from __future__ import annotations

import ssl
import struct
from importlib import metadata
from types import ModuleType
from typing import Any

import trio
import trio_websocket
from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import Ping

from pcapd.errors import PcapdError

CHECKED_WITH = {"trio-websocket": "0.12.2", "trio": "0.35.0"}
"""The versions whose private names this module was checked against: the lock's
(requirements/*.txt; a test keeps the two equal, so a lock update means a look here)."""


class IncompatibleDependency(PcapdError, ImportError):
    """An installed dependency lacks a private name pcapd relies on (see the module docstring)."""


def _version(module: ModuleType, dist: str) -> str:
    found = getattr(module, "__version__", None)
    if isinstance(found, str):
        return found
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _require(module: ModuleType, dist: str, owner: str, name: str, why: str, *,
             in_init: bool = False) -> Any:
    """``module.owner`` after checking that it has ``name``: a class attribute, or with
    ``in_init`` an instance attribute that ``owner.__init__`` assigns."""
    cls = getattr(module, owner, None)
    if not isinstance(cls, type):
        present = False
    elif in_init:
        init = getattr(getattr(cls, "__init__", None), "__code__", None)
        present = init is not None and name in init.co_names
    else:
        present = callable(getattr(cls, name, None))
    if not present:
        kind = "an attribute set in __init__" if in_init else "a method"
        raise IncompatibleDependency(
            f"{dist} {_version(module, dist)} ({module.__name__}): pcapd expected "
            f"{owner}.{name}, {kind}, and it is missing; pcapd uses it {why}. "
            f"pcapd was checked with {dist} {CHECKED_WITH.get(dist, '?')}: install that version, "
            "or adapt pcapd/transport/_compat.py to this one")
    return cls


async def _pong_while_open(self: WebSocketConnection, event: Ping) -> None:
    """Answer a ping only while the connection is open.

    trio-websocket answers every ping, also one that arrives after our own close frame went
    out; wsproto then raises LocalProtocolError in the connection's reader task, which fails the
    nursery that task runs in — for a served connection, the whole server. Any client could end
    the api with a malformed message and a ping (trio-websocket#184; the fix, #198, is not
    released). A closing connection owes no pong.
    """
    if self._wsproto.state == ConnectionState.OPEN:
        await self._send(event.response())


def patch_trio_websocket(module: ModuleType) -> None:
    """Check the private names :func:`_pong_while_open` uses, then install it."""
    why = "to leave a ping unanswered once the connection is closing (trio-websocket#184)"
    dist = "trio-websocket"
    _require(module, dist, "WebSocketConnection", "_send", why)
    _require(module, dist, "WebSocketConnection", "_wsproto", why, in_init=True)
    cls = _require(module, dist, "WebSocketConnection", "_handle_ping_event", why)
    cls._handle_ping_event = _pong_while_open


_FRAME_BINARY = 0x82  # FIN, binary opcode (RFC 6455 §5.2)


def check_send_binary(module: ModuleType) -> None:
    """Check the private names :func:`send_binary` uses."""
    why = "to frame a data message with one copy instead of wsproto's four"
    dist = "trio-websocket"
    _require(module, dist, "WebSocketConnection", "_abort_web_socket", why)
    for name in ("_wsproto", "_close_reason", "_stream", "_stream_lock"):
        _require(module, dist, "WebSocketConnection", name, why, in_init=True)


async def send_binary(ws: WebSocketConnection, header: bytes, payload: bytes | memoryview
                      ) -> None:
    """One binary WebSocket message ``header + payload``, framed here with one copy (the join).

    trio-websocket's ``send_message`` goes through wsproto, which copies a message four times
    on its way to the stream (``bytearray``, ``header + payload``, ``bytearray`` again, and
    ``bytes +=``): at a few hundred kB a batch that was a fifth of an agent's CPU. A server's
    frames are unmasked and trio-websocket negotiates no extension, so the frame is the RFC's
    header and the bytes; it is written under the connection's send lock, as trio-websocket
    does, and a broken stream ends the connection as there. Anything else (a client, which
    masks; a connection not open) takes trio-websocket's own path.
    """
    impl: Any = ws
    if ws.is_client or impl._wsproto.state is not ConnectionState.OPEN:
        await ws.send_message(header + payload)
        return
    if impl._close_reason:
        raise trio_websocket.ConnectionClosed(impl._close_reason)
    size = len(header) + len(payload)
    if size < 126:
        frame = bytes((_FRAME_BINARY, size))
    elif size < 65536:
        frame = struct.pack("!BBH", _FRAME_BINARY, 126, size)
    else:
        frame = struct.pack("!BBQ", _FRAME_BINARY, 127, size)
    data = b"".join((frame, header, payload))
    async with impl._stream_lock:
        try:
            await impl._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await impl._abort_web_socket()
            raise trio_websocket.ConnectionClosed(impl._close_reason) from None


def check_trio(module: ModuleType) -> None:
    """Check the private name :func:`ssl_object` reads."""
    _require(module, "trio", "SSLStream", "_ssl_object",
             "to read the TLS records already received in one go", in_init=True)


def ssl_object(stream: trio.abc.Stream) -> ssl.SSLObject | None:
    """The ``ssl.SSLObject`` inside a ``trio.SSLStream``; None for any other stream."""
    if not isinstance(stream, trio.SSLStream):
        return None
    found = stream._ssl_object  # checked by check_trio
    return found if isinstance(found, ssl.SSLObject) else None


patch_trio_websocket(trio_websocket)
check_send_binary(trio_websocket)
check_trio(trio)
