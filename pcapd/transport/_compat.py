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
- trio: :func:`send_binary` writes a data frame through a ``trio.SSLStream`` over a socket
  itself (:func:`_send_through_tls`): it encrypts with the stream's ``_ssl_object`` into its
  ``_outgoing`` BIO and writes the records to the socket, holding the stream's
  ``_outer_send_conflict_detector`` and ``_inner_send_lock`` and checking ``_check_status()``
  as ``SSLStream.send_all`` does, and setting ``_state`` to its ``BROKEN`` as trio does when
  encryption or the socket fails; records a cancelled send could not write go to the stream's
  ``_delayed_outgoing``, which trio sends before anything else it sends on the stream.

The checks take the module as an argument, so a test can hand them a fake one.
"""

from __future__ import annotations

import errno
import os
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
    """One binary WebSocket message ``header + payload``, framed here without wsproto's copies.

    trio-websocket's ``send_message`` goes through wsproto, which copies a message four times
    on its way to the stream (``bytearray``, ``header + payload``, ``bytearray`` again, and
    ``bytes +=``): at a few hundred kB a batch that was a fifth of an agent's CPU. A server's
    frames are unmasked and trio-websocket negotiates no extension, so the frame is the RFC's
    header and the bytes; it is written under the connection's send lock, as trio-websocket
    does, and a broken stream ends the connection as there. Over TLS on a socket (every agent
    link) the frame is encrypted and written here (:func:`_send_through_tls`); over any other
    stream it is joined once and handed to the stream. Anything else (a client, which masks; a
    connection not open) takes trio-websocket's own path.
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
    lock: trio.Lock = impl._stream_lock
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        lock.acquire_nowait()  # (``async with`` would yield even when the lock is free)
    except trio.WouldBlock:
        await lock.acquire()
    try:
        tls = _tls_over_socket(impl._stream)
        if tls is not None:
            await _send_through_tls(tls, frame + header, payload)
        else:
            await impl._stream.send_all(b"".join((frame, header, payload)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await impl._abort_web_socket()
        raise trio_websocket.ConnectionClosed(impl._close_reason) from None
    finally:
        lock.release()


TLS_RECORD = 16384
"""Plaintext bytes in a full TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1)."""
ENCRYPT_PIECE = 4 * TLS_RECORD
"""Plaintext encrypted per ``SSLObject.write``: whole records, and ciphertext pieces (~64 kB)
below glibc's mmap threshold (128 kB), so they come from the heap instead of fresh pages."""


def _tls_over_socket(stream: trio.abc.Stream) -> trio.SSLStream[trio.SocketStream] | None:
    """The ``trio.SSLStream`` over a socket under pcapd's own stream wrappers, or None.

    pcapd's wrappers (``ReplayStream``, ``WatchedStream``) forward ``send_all`` unchanged to
    their ``inner`` stream, so writing below them is what writing through them does.
    """
    while not isinstance(stream, trio.SSLStream):
        inner = getattr(stream, "inner", None)
        if not type(stream).__module__.startswith("pcapd.") or not isinstance(
                inner, trio.abc.Stream):
            return None
        stream = inner
    if not isinstance(stream.transport_stream, trio.SocketStream):
        return None
    tls: Any = stream
    if tls._ssl_object.version() is None:  # handshake not done: trio's send_all does it
        return None
    return stream


def _encrypt(tls: Any, head: bytes, payload: bytes | memoryview) -> list[bytes]:
    """The TLS records of ``head + payload``, as one ``SSLObject.write`` of the joined bytes
    makes them (full records, the last one short), without the join: the first record is
    ``head`` and the payload's first bytes, the rest is encrypted from the payload itself."""
    ssl_object: ssl.SSLObject = tls._ssl_object
    outgoing: ssl.MemoryBIO = tls._outgoing
    view = memoryview(payload)
    first = max(0, TLS_RECORD - len(head))
    pieces = []
    try:
        ssl_object.write(head + view[:first])
        pieces.append(outgoing.read())
        for start in range(first, len(view), ENCRYPT_PIECE):
            ssl_object.write(view[start:start + ENCRYPT_PIECE])
            pieces.append(outgoing.read())
    except (ssl.SSLError, ssl.CertificateError) as exc:  # as trio's SSLStream: broken for good
        _break(tls)
        raise trio.BrokenResourceError(f"TLS: {exc}") from exc
    return pieces


def _break(tls: Any) -> None:
    tls._state = type(tls._state).BROKEN


async def _send_through_tls(tls: Any, head: bytes, payload: bytes | memoryview) -> None:
    """``tls.send_all(head + payload)`` with one copy less and one loop turn instead of four.

    Trio's ``SSLStream.send_all`` encrypts the joined message in one ``SSLObject.write``, reads
    the whole ciphertext out of the BIO (one more copy, above glibc's mmap threshold at a few
    hundred kB: fresh pages each time), takes its inner lock (a turn of the event loop) and
    sends through ``SocketStream`` (another turn, a third for the caller's lock). Here the
    records are encrypted in pieces of :data:`ENCRYPT_PIECE` and written with one ``writev``
    while the socket takes them, with trio's own locks taken without yielding when they are
    free, and a single checkpoint at the end.

    Cancellation. Once records are encrypted the TLS sequence numbers have moved on: they must
    reach the socket whole and in order, or the stream is corrupt. So encryption happens only
    after the caller's cancellation was checked, and the only place a send can be cancelled
    afterwards is its wait for the socket to become writable: the records not yet written are
    then handed to the stream's ``_delayed_outgoing``, which trio's ``SSLStream`` prepends to
    the next data it sends (a ping, a close frame) — and so does the next call here. A
    cancelled send thus leaves the link whole; its message may still go out, complete, ahead of
    the next one. A socket error breaks the stream, as in trio.
    """
    with tls._outer_send_conflict_detector:
        tls._check_status()
        inner: trio.StrictFIFOLock = tls._inner_send_lock
        try:
            inner.acquire_nowait()
        except trio.WouldBlock:
            await inner.acquire()
        try:
            pieces = _encrypt(tls, head, payload)
            pending = tls._delayed_outgoing
            if pending is not None:
                tls._delayed_outgoing = None
                pieces.insert(0, pending)
            if not await _write_all(tls.transport_stream.socket.fileno(), pieces, tls):
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            inner.release()


async def _write_all(fd: int, pieces: list[bytes], tls: Any) -> bool:
    """Write ``pieces`` to the non-blocking socket ``fd``; True if it had to wait (a checkpoint).

    What a cancelled wait leaves unwritten becomes ``tls._delayed_outgoing``."""
    views = [memoryview(piece) for piece in pieces]
    waited = False
    while views:
        try:
            sent = os.writev(fd, views[:1024])  # (IOV_MAX)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            _break(tls)
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the socket was closed") from exc
            raise trio.BrokenResourceError(f"socket send failed: {exc}") from exc
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
        if not views:
            break
        waited = True
        try:
            await trio.lowlevel.wait_writable(fd)
        except BaseException:
            tls._delayed_outgoing = b"".join(views)
            raise
    return waited


def check_trio(module: ModuleType) -> None:
    """Check the private names :func:`ssl_object` and :func:`_send_through_tls` use."""
    _require(module, "trio", "SSLStream", "_ssl_object",
             "to read the TLS records already received in one go", in_init=True)
    why = "to encrypt and write a data message with one loop turn and no join"
    _require(module, "trio", "SSLStream", "_check_status", why)
    for name in ("_state", "_outgoing", "_delayed_outgoing", "_inner_send_lock",
                 "_outer_send_conflict_detector", "transport_stream"):
        _require(module, "trio", "SSLStream", name, why, in_init=True)


def ssl_object(stream: trio.abc.Stream) -> ssl.SSLObject | None:
    """The ``ssl.SSLObject`` inside a ``trio.SSLStream``; None for any other stream."""
    if not isinstance(stream, trio.SSLStream):
        return None
    found = stream._ssl_object  # checked by check_trio
    return found if isinstance(found, ssl.SSLObject) else None


patch_trio_websocket(trio_websocket)
check_send_binary(trio_websocket)
check_trio(trio)
