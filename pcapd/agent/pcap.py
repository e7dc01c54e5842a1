"""The libpcap engine: a handle driven from Trio, packets out as pcapng EPBs.

Theory of operation. libpcap on Linux fills a TPACKET_V3 ring shared with the kernel in blocks;
the kernel hands a block to us when it is full or when the buffer timeout (a few ms) expires.
A blocking read on a silent interface never returns (the timeout only runs once a packet has
arrived), so the handle is non-blocking and Trio waits on its selectable fd, bounded by a
timeout: every wait is a checkpoint, so a capture can always be cancelled. When the fd is
readable, ``dispatch`` runs on the Trio thread: it only copies what is already in memory, and
each call is capped in packets, so no call runs for long. Packets leave as little-endian
Enhanced Packet Blocks for interface 0, with nanosecond timestamps (see :mod:`.pkthdr`) and
the original length, ready for the wire: nobody re-encodes them.

Two engines do the reading. The compiled one (``pcapd._capture``, built at install) owns the
libpcap handle itself and its dispatch writes each packet straight into a buffer of EPBs: one
Python call per batch, no Python object per packet, nanosecond timestamps asked of libpcap.
Where it is off or not built (``pcapd._accel``), cypcap's handle and a Python callback per
packet do the same (nanoseconds then come through :mod:`.pkthdr`'s probe).

Because a block is only handed over when it is retired, packets may wait in the ring up to
about twice the buffer timeout. That bounds a batch's ``watermark`` (no later packet is
older); :meth:`PcapHandle.drain` waits longer (:data:`DRAIN_GRACE`) so that the tail of a
capture is read before the final statistics even on a loaded host. The handle is activated
in a worker thread inside the target network namespace (:mod:`.netns`) and stays bound there.
"""

from __future__ import annotations

import functools
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cypcap
import trio

from pcapd import _accel
from pcapd.agent.bpf import (
    DLT_EN10MB,
    HandleError,
    InvalidFilter,
    Link,
    _libpcap_words,
    compile_filter,
    exclusion_filter,
    program_bytes,
)
from pcapd.agent.bpf_worker import capture_program
from pcapd.agent.netns import call_in_netns
from pcapd.agent.pkthdr import (
    PKTHDR,
    TimestampReader,
    header_offset,
    header_views,
    timestamp_reader,
)
from pcapd.pcapng import EPB, epb_timestamp

MAX_SNAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN
DEFAULT_BUFFER_SIZE = 32 * 1024 * 1024
DEFAULT_BUFFER_TIMEOUT = 0.005  # seconds: cypcap's set_timeout takes seconds, not ms
DISPATCH_CAP = 1024
"""Packets per ``dispatch`` call (~0.6 ms): the longest the Trio thread is held by one call."""
DELIVERY_SLACK_NS = 20_000_000
"""Added to twice the buffer timeout for the kernel's own latency (softirq backlog, timers)."""
DRAIN_GRACE = 0.25
"""Seconds :meth:`PcapHandle.drain` waits at most for the last packets of an idle interface. The
delivery bound holds for the watermark, where a late packet is only out of order; at a stop
a late packet is lost, and on a loaded host the kernel's block-retire timer and softirqs run
late (packets sent just before the stop were seen missing after 30 ms). A stop is rare and a
quarter of a second is not felt; a busy interface ends sooner (a packet newer than the stop)."""
_PACKERS_MAX = 4096
"""Precompiled EPB structs kept per captured length (most captures see a handful)."""



class InvalidDevice(HandleError):
    """No such network device (in the target namespace)."""


class InvalidSnaplen(HandleError):
    """The snapshot length is out of range."""


class HandleFailed(HandleError):
    """libpcap failed for another reason (permissions, interface went down, ...)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Packets read in one call, as concatenated EPBs of interface 0."""

    blocks: bytes
    packets: int
    captured_bytes: int
    """Sum of captured lengths (what libpcap handed over, without EPB framing)."""
    first_timestamp: int | None
    """ns since the epoch of the first packet; None in an empty batch."""
    last_timestamp: int | None
    watermark: int
    """ns: no packet read later from this capture is older (kernel clock permitting)."""


@dataclass(frozen=True, slots=True)
class HandleStats:
    """libpcap's counters (``pcap_stats``), cumulative since the handle was activated."""

    received: int
    kernel_dropped: int
    interface_dropped: int


def _packet_sink(
    blocks: list[bytes], reader: TimestampReader
) -> tuple[Callable[[Any, bytes], None], Callable[[], int]]:
    """The per-packet hot path (header → EPB, appended to ``blocks``) and its byte counter.

    One closure does it all, with no call per packet beyond the builtins it cannot avoid: the
    header's fields are read once from the C struct (:func:`.pkthdr.header_views`, fused here
    rather than called), and the whole option-less EPB is packed by one precompiled ``Struct``
    per captured length. Closures over locals, not methods: an attribute update per packet cost
    0.3 µs, a ``nonlocal`` almost nothing. Measured 0.61 against 1.1 µs per packet for the
    former ``read()`` + ``encode_enhanced_packet()`` calls (bench/binding_bench.py,
    docs/performance.md "Capture").
    """
    append = blocks.append
    packers: dict[int, tuple[Callable[..., bytes], int]] = {}
    captured = 0

    def packer(caplen: int) -> tuple[Callable[..., bytes], int]:
        made = struct.Struct(f"<7I{caplen + (-caplen & 3)}sI")
        entry = made.pack, made.size
        if len(packers) < _PACKERS_MAX:  # lengths are data: bounded
            packers[caplen] = entry
        return entry

    def take_captured() -> int:
        nonlocal captured
        taken, captured = captured, 0
        return taken

    if reader.layout is None:  # microseconds through cypcap's float: the slow, rare fallback
        read = reader.read

        def on_packet_fallback(hdr: Any, data: bytes) -> None:
            nonlocal captured
            timestamp, length = read(hdr)
            caplen = len(data)
            pack, size = packers.get(caplen) or packer(caplen)
            append(pack(EPB, size, 0, timestamp >> 32, timestamp & 0xFFFFFFFF, caplen,
                        max(length, caplen), data, size))
            captured += caplen

        return on_packet_fallback, take_captured

    offset, scale = reader.layout
    cached, view_at = header_views(offset)
    unpack_from = PKTHDR.unpack_from
    get_packer = packers.get

    def on_packet(hdr: Any, data: bytes) -> None:
        nonlocal captured
        address = id(hdr)
        view = cached(address)
        if view is None:
            view = view_at(address)
        sec, frac, caplen, length = unpack_from(view)
        timestamp = sec * 1_000_000_000 + frac * scale
        entry = get_packer(caplen)
        if entry is None:
            entry = packer(caplen)
        pack, size = entry
        append(pack(EPB, size, 0, timestamp >> 32, timestamp & 0xFFFFFFFF, caplen, length,
                    data, size))
        captured += caplen

    return on_packet, take_captured


class _CypcapEngine:
    """cypcap's handle and a Python callback per packet: the engine without the extension."""

    def __init__(self, pcap: Any, device: str, nanoseconds: bool) -> None:
        self.device = device
        self.link_type = int(pcap.datalink())
        self.snaplen = int(pcap.snapshot())
        reader = timestamp_reader(nanoseconds)
        self.exact_timestamps = reader.exact
        self.timestamp_note = reader.why
        self.fd = int(pcap.get_selectable_fd())
        required = pcap.get_required_select_timeout()
        self.poll_timeout = math.inf if required is None else float(required)
        self._pcap = pcap
        self._blocks: list[bytes] = []
        self._on_packet, self._take_captured = _packet_sink(self._blocks, reader)

    def dispatch(self, limit: int) -> bool:
        blocks, start = self._blocks, len(self._blocks)
        while (done := len(blocks) - start) < limit:
            try:
                self._pcap.dispatch(min(limit - done, DISPATCH_CAP), self._on_packet)
            except cypcap.Error as exc:
                raise HandleFailed(f"{self.device}: {_libpcap_words(exc)}") from exc
            if len(blocks) - start == done:
                return True
        return False

    def newest(self) -> int:
        return epb_timestamp(self._blocks[-1]) if self._blocks else 0

    def pending(self) -> int:
        return len(self._blocks)

    def take(self) -> tuple[bytes, int, int, int | None, int | None]:
        pending = self._blocks  # cleared in place: the callback holds its append
        count, captured = len(pending), self._take_captured()
        first = epb_timestamp(pending[0]) if pending else None
        last = epb_timestamp(pending[-1]) if pending else None
        blocks = b"".join(pending)
        pending.clear()
        return blocks, count, captured, first, last

    def stats(self) -> HandleStats:
        try:
            stat = self._pcap.stats()
        except cypcap.Error as exc:
            raise HandleFailed(f"{self.device}: {_libpcap_words(exc)}") from exc
        return HandleStats(int(stat.recv), int(stat.drop), int(stat.ifdrop))

    def close(self) -> None:
        self._pcap.close()


class _CompiledEngine:
    """``pcapd._capture.Handle``: libpcap's dispatch writes EPBs into one C buffer."""

    exact_timestamps = True
    timestamp_note = ""

    def __init__(self, handle: Any, device: str) -> None:
        self.device = device
        self._handle = handle
        self.link_type, self.snaplen, self.fd, required = handle.info()
        self.poll_timeout = math.inf if required is None else float(required)
        self.pending = handle.pending

    def dispatch(self, limit: int) -> bool:
        try:
            return bool(self._handle.dispatch(limit))
        except _PcapError as exc:
            raise HandleFailed(f"{self.device}: {_pcap_words(exc)}") from exc

    def newest(self) -> int:
        return int(self._handle.newest())

    def take(self) -> tuple[bytes, int, int, int | None, int | None]:
        blocks, count, captured, first, last = self._handle.take()
        return blocks, count, captured, first, last

    def stats(self) -> HandleStats:
        try:
            received, dropped, if_dropped = self._handle.stats()
        except _PcapError as exc:
            raise HandleFailed(f"{self.device}: {_pcap_words(exc)}") from exc
        return HandleStats(received, dropped, if_dropped)

    def close(self) -> None:
        self._handle.close()


_PcapError: type[Exception] = _accel.capture.PcapError if _accel.capture else OSError


_PERM_DENIED_WORDS = "Attempt to create packet socket failed - CAP_NET_RAW may be required"
"""What libpcap 1.10.4+ says (cypcap bundles it) where older ones say only ``socket: ...``."""


def _pcap_words(exc: BaseException) -> str:
    """libpcap's own words from the extension's error ``(code, call, text)``."""
    code, call, text = exc.args if len(exc.args) == 3 else (0, "", str(exc))
    if (
        _accel.capture is not None
        and code == _accel.capture.ERROR_PERM_DENIED
        and "CAP_NET_RAW" not in text
    ):
        return _PERM_DENIED_WORDS
    return str(text or f"{call} failed ({code})")


class PcapHandle:
    """An activated, non-blocking libpcap handle. Made by :func:`open_handle`."""

    def __init__(
        self, engine: _CypcapEngine | _CompiledEngine, buffer_timeout: float
    ) -> None:
        self._engine = engine
        self.device = engine.device
        self.link_type = engine.link_type
        self.snaplen = engine.snaplen
        self.exact_timestamps = engine.exact_timestamps
        """False when timestamps fell back to microseconds; ``timestamp_note`` says why."""
        self.timestamp_note = engine.timestamp_note
        self._fd = engine.fd
        self._poll_timeout = engine.poll_timeout
        self._delivery_ns = round(2 * buffer_timeout * 1e9) + DELIVERY_SLACK_NS
        self._watermark = 0

    def _dispatch(self, limit: int) -> bool:
        """Read up to ``limit`` packets already in the ring; True if the ring is now empty."""
        return self._engine.dispatch(limit)

    def _take(self, ring_empty: bool, now_ns: int) -> Batch:
        blocks, count, captured, first, last = self._engine.take()
        # Once the ring was found empty nothing older than (now - delivery bound) can still be
        # in it; if we stopped at the limit, later packets follow the last one read.
        reference = now_ns if ring_empty or last is None else last
        self._watermark = max(self._watermark, reference - self._delivery_ns)
        return Batch(blocks, count, captured, first, last, self._watermark)

    async def read_batch(self, max_packets: int = 1024, max_wait: float = 1.0,
                         linger: float = 0.0) -> Batch:
        """The packets that arrive within ``max_wait`` seconds, returned as soon as any do.

        With ``linger``, a batch that has its first packets but fewer than ``max_packets`` is
        held up to ``linger`` seconds more (never past ``max_wait``) and read again once:
        under load one wake-up, message and TLS record then carry a ``linger``'s worth of
        packets instead of one ring block's (a few ms). It sleeps rather than wait on the fd,
        which would wake it at every block the kernel hands over; the ring holds the packets
        meanwhile. An empty batch after ``max_wait`` (its watermark still advances: a
        heartbeat). Cancellation loses no packet: what was read stays pending in the engine
        and :meth:`drain` takes it; the handle is left ready for it.
        """
        if max_packets < 1:
            raise ValueError(f"max_packets must be at least 1, not {max_packets}")
        await trio.lowlevel.checkpoint_if_cancelled()
        deadline = trio.current_time() + max_wait
        engine = self._engine
        waited = False
        while True:
            now_ns = time.time_ns()
            ring_empty = engine.dispatch(max_packets)
            pending = engine.pending()
            if pending and linger > 0 and pending < max_packets and ring_empty:
                await trio.sleep_until(min(deadline, trio.current_time() + linger))
                now_ns = time.time_ns()
                ring_empty = engine.dispatch(max_packets - pending)
                waited = True
            if pending or trio.current_time() >= deadline:
                batch = self._take(ring_empty, now_ns)
                if not waited:  # (a loop turn a batch less: the wait was the checkpoint)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return batch
            await self._wait_readable(deadline)
            waited = True

    async def _wait_readable(self, deadline: float) -> None:
        with trio.move_on_at(min(deadline, trio.current_time() + self._poll_timeout)):
            await trio.lowlevel.wait_readable(self._fd)

    async def drain(self, late: bool = True) -> Batch:
        """Everything still in the ring when called: the tail, read before :meth:`stats`.

        Waits at most :data:`DRAIN_GRACE` (``late`` False: the delivery bound, for a tail
        nobody will write, as after a limit) for the kernel to hand over its last partly
        filled block, and stops early once it reads a packet newer than the call (everything
        before it has then been read). The batch holds at most about a ring's worth. Shielded from
        cancellation: it is short and bounded, and a cancelled drain would lose the tail it
        exists to save; it checkpoints between chunks.
        """
        start_ns = time.time_ns()
        deadline = trio.current_time() + max(self._delivery_ns / 1e9,
                                             DRAIN_GRACE if late else 0.0)
        engine = self._engine
        with trio.CancelScope(shield=True):
            while True:
                now_ns = time.time_ns()
                ring_empty = engine.dispatch(DISPATCH_CAP)
                if engine.newest() >= start_ns or (
                    ring_empty and trio.current_time() >= deadline
                ):
                    break
                if ring_empty:
                    await self._wait_readable(deadline)
                else:
                    await trio.lowlevel.checkpoint()
        return self._take(ring_empty, now_ns)

    def stats(self) -> HandleStats:
        """libpcap's counters; call after :meth:`drain`, or the tail is counted but not read."""
        return self._engine.stats()

    def _close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self._engine.close()


def _open(device: str, netns: Path | None, snaplen: int, buffer_size: int,
          buffer_timeout: float) -> Any:
    """Open and activate the handle in ``netns`` (in a worker thread), without a filter yet:
    only creating and activating happen inside the namespace (the packet socket binds to it
    there). The compiled engine's handle when it is built, else cypcap's."""
    activate = _activate_compiled if _accel.capture is not None else _activate
    return call_in_netns(
        netns, functools.partial(activate, device, snaplen, buffer_size, buffer_timeout)
    )


def _link_of(handle: Any) -> tuple[int, int]:
    """``(link type, snaplen)`` of an activated handle of either engine: what the filter is
    compiled for."""
    if _accel.capture is not None:
        link_type, snaplen, _, _ = handle.info()
        return int(link_type), int(snaplen)
    return int(handle.datalink()), int(handle.snapshot())


def _engine(handle: Any, device: str, direction: cypcap.Direction | None,
            program: str | None) -> _CypcapEngine | _CompiledEngine:
    """Apply the direction and the program compiled by the child (cheap: no compile here),
    make the handle non-blocking, and wrap it in its engine."""
    if _accel.capture is None:
        nanoseconds = _set_filter(handle, device, direction,
                                  None if program is None else cypcap.BpfProgram.loads(program))
        return _CypcapEngine(handle, device, nanoseconds)
    try:
        if direction is not None:
            handle.setdirection(_DIRECTION_CODES[direction])
        if program is not None:
            handle.setfilter(program_bytes(program))
        handle.setnonblock()
    except _PcapError as exc:
        raise HandleFailed(f"{device}: {_pcap_words(exc)}") from None
    return _CompiledEngine(handle, device)


def _set_filter(pcap: Any, device: str, direction: cypcap.Direction | None,
                program: cypcap.BpfProgram | None) -> bool:
    """cypcap's handle: apply a compiled filter; whether timestamps are nanoseconds."""
    try:
        if direction is not None:
            pcap.setdirection(direction)
        if program is not None:
            pcap.setfilter(program)
        pcap.setnonblock(True)
        return bool(pcap.get_tstamp_precision() == cypcap.TstampPrecision.NANO)
    except cypcap.Error as exc:
        raise HandleFailed(f"{device}: {_libpcap_words(exc)}") from None


_DIRECTION_CODES = {cypcap.Direction.IN: 1, cypcap.Direction.OUT: 2}  # PCAP_D_IN, PCAP_D_OUT


def _activate_compiled(
    device: str, snaplen: int, buffer_size: int, buffer_timeout: float
) -> Any:
    """Create, configure and activate a compiled handle (in the target namespace), asking
    libpcap for nanosecond timestamps (it falls back to microseconds where it cannot)."""
    assert _accel.capture is not None
    try:
        handle = _accel.capture.Handle(device)
    except _PcapError as exc:
        raise HandleFailed(f"{device}: {_pcap_words(exc)}") from None
    try:
        handle.set_snaplen(snaplen)
        handle.set_promisc(0)
        handle.set_timeout_ms(max(1, round(buffer_timeout * 1000)))
        handle.set_buffer_size(buffer_size)
        try:
            handle.set_tstamp_precision(_accel.capture.TSTAMP_PRECISION_NANO)
        except _PcapError:
            pass  # not supported here: microseconds, still exact in the EPBs
        handle.activate()
    except _PcapError as exc:
        handle.close()
        words = _pcap_words(exc)
        if exc.args[0] == _accel.capture.ERROR_NO_SUCH_DEVICE:
            raise InvalidDevice(f"{device}: {words}") from None
        raise HandleFailed(f"{device}: {words}") from None
    except BaseException:
        handle.close()
        raise
    return handle


def _activate(device: str, snaplen: int, buffer_size: int, buffer_timeout: float) -> Any:
    """Create, configure and activate a handle (in the target namespace).

    Nanoseconds are asked for only when the probed header layout lets us read them
    (see :mod:`.pkthdr`).
    """
    precision = cypcap.TstampPrecision
    try:
        pcap = cypcap.create(device)
    except cypcap.Error as exc:
        raise HandleFailed(f"{device}: {_libpcap_words(exc)}") from None
    try:
        pcap.set_snaplen(snaplen)
        pcap.set_promisc(False)
        pcap.set_timeout(buffer_timeout)
        pcap.set_buffer_size(buffer_size)
        pcap.set_tstamp_precision(
            precision.NANO if header_offset() is not None else precision.MICRO
        )
        pcap.activate()
    except cypcap.Error as exc:
        pcap.close()
        words = _libpcap_words(exc)
        if exc.code == cypcap.ErrorCode.NO_SUCH_DEVICE:
            raise InvalidDevice(f"{device}: {words}") from None
        raise HandleFailed(f"{device}: {words}") from None
    except BaseException:
        pcap.close()
        raise
    return pcap


@asynccontextmanager
async def open_handle(
    device: str,
    *,
    filter: str = "",
    snaplen: int = 65535,
    netns: Path | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    buffer_timeout: float = DEFAULT_BUFFER_TIMEOUT,
    exclude: Iterable[Link] = (),
) -> AsyncIterator[PcapHandle]:
    """A libpcap handle on ``device`` in ``netns`` (a namespace file; None: the agent's own),
    activated and non-blocking.

    ``filter`` is the user's BPF expression; TCP connections in ``exclude`` (the agent's own
    link to the api) are left out of it. Raises :class:`InvalidFilter`,
    :class:`InvalidDevice`, :class:`InvalidSnaplen` or :class:`HandleFailed` before yielding.
    The handle is closed on exit, also on cancellation.
    """
    if not device or "\0" in device or "/" in device:
        raise InvalidDevice(f"invalid device name {device!r}")
    if not 1 <= snaplen <= MAX_SNAPLEN:
        raise InvalidSnaplen(f"snaplen {snaplen} out of range: 1 to {MAX_SNAPLEN}")
    # not abandoned on cancellation: what the thread opens is returned, then closed below
    handle = await trio.to_thread.run_sync(
        functools.partial(_open, device, netns, snaplen, buffer_size, buffer_timeout)
    )
    try:
        # compiled once, for this handle's link type, in a child process (see .bpf_worker):
        # names resolve in the agent's own namespace, which a container's may not reach
        direction, program = await capture_program(filter, list(exclude), *_link_of(handle))
        opened = PcapHandle(_engine(handle, device, direction, program), buffer_timeout)
    except BaseException:
        handle.close()
        raise
    try:
        yield opened
    finally:
        opened._close()


__all__ = [
    "DLT_EN10MB",
    "Batch",
    "HandleError",
    "HandleFailed",
    "HandleStats",
    "InvalidDevice",
    "InvalidFilter",
    "InvalidSnaplen",
    "Link",
    "PcapHandle",
    "compile_filter",
    "exclusion_filter",
    "open_handle",
]
