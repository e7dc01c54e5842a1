"""The flight recorder on the agent: recordings that capture into rings, whatever the api does.

Theory of operation. A recording is a capture (the same engine, the same BPF compiled by the
limited child) whose reader puts every batch into a :class:`~.ring.Ring` instead of a link, in
a task of the recorder's own nursery: it lives as long as the agent, not the link that armed
it. Its cancel scope carries the deadline (``until``), so expiry is Trio's business. Each
recording reserves its ``max_bytes`` from the agent's :class:`~.ring.Budget` before anything
is opened; a recording that does not fit is refused and running ones are never squeezed.

A trigger is a second BPF program run by pcapd on each batch (:mod:`.matcher`); the pure rule
(:mod:`.triggers`) says when one fires and when its window is whole (the batch's watermark has
passed its end). Then every link watching (``list_recordings`` with ``watch``) is told; a link
that is down misses nothing, since ``list_recordings`` lists the fired triggers. With ``once``
the capture ends there and the ring is *held* until stopped or expired, for the api to save.

Stopping frees the ring at once, synchronously, before the capture task has even unwound; the
recording's final state (not its packets) is remembered for a while so the api learns how it
ended. Saving reads a window out of the ring (views of its buffers: the ring may move on
meanwhile) and streams it as a capture: ``started``, the IDB and EPBs, the ISB, ``end``.

With ``recorder.storage: directory`` a ring keeps its bytes in files (:mod:`.ring_files`):
every ring call that may touch them (add, window, clear) runs in a worker thread under the
recording's lock, and the Trio thread reads a snapshot of the ring's statistics. Stopping
deletes the files in a shielded task as soon as an in-flight write is done. A write error
(a full disk) ends that recording alone. Arming checks the filesystem's free space first.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from pcapd.agent.bpf_worker import filter_program
from pcapd.agent.matcher import Matcher
from pcapd.agent.pcap import HandleError, PcapHandle, open_handle
from pcapd.agent.ring import (
    MIN_PIECE,
    Budget,
    BudgetRefused,
    Chunk,
    Ring,
    RingStatistics,
    Window,
    size_text,
)
from pcapd.agent.ring_files import DirectoryStore, free_space, prepare_directory
from pcapd.agent.triggers import Fired, Triggers
from pcapd.config import AgentConfig
from pcapd.errors import Refusal
from pcapd.pcapng import encode_interface_description, encode_interface_statistics
from pcapd.proto import (
    Counters,
    Data,
    End,
    Record,
    Recording,
    RecordingStarted,
    RecordSave,
    RingStatus,
    Source,
    SourceStatistics,
    Started,
    Statistics,
    Triggered,
    TriggerFired,
)
from pcapd.proto.messages import MAX_TRIGGERS_LISTED, RecordingEnd, RecordingState
from pcapd.proto.ring_note import RingNote
from pcapd.transport.link import Link

log = logging.getLogger(__name__)

READ_WAIT = 0.1
"""Seconds a read waits before returning empty: how often an idle recording ages its ring."""
MAX_READ = 4096
STATS_PERIOD = 1.0
ENDED_KEPT = 256
"""Ended recordings whose final state is remembered (not their packets)."""
WATCH_QUEUE = 64
"""Trigger notices queued per watching link; a link that falls behind catches up by listing."""
MAX_CHUNK = 1 << 20
"""Bytes of EPBs per binary message of a save."""
_NS = 1_000_000_000


class ActiveRecording:
    """One recording on this agent: its ring, its trigger rule, its life."""

    def __init__(self, record: Record, source: Source, started_at: float,
                 files: DirectoryStore | None = None) -> None:
        ring = record.ring
        assert record.recording_id is not None and ring.max_bytes is not None  # the session
        assert ring.until is not None
        self.id = record.recording_id
        self.record = record
        self.source = source
        self.started_at = started_at
        self.ends_at = started_at + ring.until
        self.ring = Ring(keep_ns=max(1, round(ring.keep * _NS)), max_bytes=ring.max_bytes,
                         store=files)
        self.files = files
        """The ring's files (None: in memory); touched only in a thread, under ``lock``."""
        self.lock = trio.Lock()
        self._stats = self.ring.statistics()
        trigger = record.trigger
        self.triggers = None if trigger is None else Triggers(
            keep_ns=self.ring.keep_ns, after_ns=round((trigger.after or 0.0) * _NS),
            once=trigger.once)
        self.state: RecordingState = "recording"
        self.end_reason: RecordingEnd | None = None
        self.end_text = ""
        self.scope = trio.CancelScope(deadline=trio.current_time() + ring.until)
        self.link_type = 1
        self.snaplen = record.options.snaplen
        self.kernel_received = 0

    def end(self, reason: RecordingEnd, text: str = "") -> None:
        """First caller's reason wins; frees the ring at once."""
        if self.end_reason is None:
            self.end_reason, self.end_text = reason, text
        self.state = "ended"
        if self.files is None:
            self.ring.clear()
        else:  # the files go in a thread (Recorder._finish); the snapshot says they are gone
            self._stats = dataclasses.replace(self._stats, packets=0, bytes=0, memory=0,
                                              first_timestamp=None, last_timestamp=None)
        self.scope.cancel()

    def statistics(self) -> RingStatistics:
        """The ring's statistics, safe to read on the Trio thread whatever the storage."""
        return self.ring.statistics() if self.files is None else self._stats

    async def add(self, blocks: bytes, now_ns: int) -> None:
        if self.files is None:
            self.ring.add(blocks, now_ns)
            return
        async with self.lock:
            self._stats = await trio.to_thread.run_sync(self._add_sync, blocks, now_ns)

    def _add_sync(self, blocks: bytes, now_ns: int) -> RingStatistics:
        self.ring.add(blocks, now_ns)
        return self.ring.statistics()

    def note_kernel(self, kernel_dropped: int, interface_dropped: int) -> None:
        self.ring.note_kernel(kernel_dropped, interface_dropped)
        self._stats = dataclasses.replace(self._stats, kernel_dropped=kernel_dropped,
                                          interface_dropped=interface_dropped)

    async def window(self, t_from: int, t_to: int) -> Window:
        if self.files is None:
            return self.ring.window(t_from, t_to)
        async with self.lock:
            return await trio.to_thread.run_sync(self.ring.window, t_from, t_to)

    async def discard(self) -> None:
        """Delete the ring's files once an in-flight call is done, even if cancelled."""
        with trio.CancelScope(shield=True):
            async with self.lock:
                await trio.to_thread.run_sync(self.discard_sync)

    def discard_sync(self) -> None:
        if self.files is not None and not self.files.closed:
            self.ring.clear()
            self.files.close()

    def status(self) -> Recording:
        stats = self.statistics()
        triggers = self.triggers
        fired = [] if triggers is None else [_fired(f) for f in triggers.fired]
        ring = RingStatus(
            source=self.source, state=self.state, packets=stats.packets, bytes=stats.bytes,
            first=stats.first_timestamp, last=stats.last_timestamp, captured=stats.captured,
            aged_out_time=stats.aged_out_time, aged_out_size=stats.aged_out_size,
            kernel_dropped=stats.kernel_dropped, interface_dropped=stats.interface_dropped,
            triggers=fired[-MAX_TRIGGERS_LISTED:],
            triggers_fired=0 if triggers is None else triggers.total,
            triggers_suppressed=0 if triggers is None else triggers.suppressed,
            text=self.end_text)
        r = self.record
        return Recording(
            recording_id=self.id, options=r.options, ring=r.ring, trigger=r.trigger,
            started_at=self.started_at, ends_at=self.ends_at, state=self.state,
            end_reason=self.end_reason, end_text=self.end_text, sources=[ring])


def _fired(f: Fired) -> TriggerFired:
    return TriggerFired(number=f.number, at=f.at, window_start=max(0, f.window_start),
                        window_end=f.window_end, matches=f.matches, complete=f.complete)


class Recorder:
    """The recordings of one agent and its budget. :meth:`serve` must run for any to start."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        rc = config.recorder
        self.budget = Budget(max_bytes=rc.max_bytes, max_recordings=rc.max_recordings)
        self.recordings: dict[str, ActiveRecording] = {}
        self.ended: OrderedDict[str, Recording] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._watchers: set[trio.MemorySendChannel[Triggered]] = set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Until a ring has read (and aged) once more, or a recording has ended."""
        await self._changed.wait()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Own the recordings until cancelled (they end as ``drained``)."""
        try:
            async with trio.open_nursery() as nursery:
                rc = self.config.recorder
                if rc.storage == "directory":
                    assert rc.directory is not None  # the config's rule
                    # an agent restart loses its rings: leftovers of the previous run go
                    await trio.to_thread.run_sync(prepare_directory, Path(rc.directory))
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for recording in list(self.recordings.values()):
                self._finish(recording, "drained", f"agent {self.config.id} stopped")

    # --- requests ----------------------------------------------------------------------------

    async def start(self, record: Record, source: Source, netns: Path | None,
                    kernel_filter: str) -> RecordingStarted:
        """Arm a recording; raises :class:`Refusal` or :class:`HandleError` if it cannot.
        ``kernel_filter`` is the record's filter with what the agent leaves out (its port)."""
        agent = self.config.id
        assert record.recording_id is not None and record.ring.max_bytes is not None
        if self._nursery is None:
            raise Refusal("START_CAPTURE_FAILED", f"agent {agent}: the recorder is not running")
        if record.recording_id in self.recordings:
            raise Refusal("INVALID_REQUEST", f"recording {record.recording_id} already runs "
                          f"on agent {agent}")
        try:
            self.budget.reserve(record.recording_id, record.ring.max_bytes)
        except BudgetRefused as exc:
            raise Refusal("LIMIT_REACHED", f"agent {agent}: {exc}") from None
        files = None
        if self.config.recorder.storage == "directory":
            try:
                files = await self._open_files(record.recording_id, record.ring.max_bytes)
            except BaseException:
                self.budget.release(record.recording_id)
                raise
        recording = ActiveRecording(record, source, time.time(), files)
        self.recordings[recording.id] = recording
        self.ended.pop(recording.id, None)
        try:
            await self._nursery.start(self._run, recording, netns, kernel_filter)
        except BaseException:
            self._finish(recording, "failed", "it did not start")
            raise
        log.info("recording %s started: %s filter=%r keep=%gs max_bytes=%d until=%gs trigger=%r",
                 recording.id, source.name, record.options.filter, record.ring.keep,
                 record.ring.max_bytes, record.ring.until,
                 record.trigger.filter if record.trigger else None,
                 extra={"event": "recording_started", "recording_id": recording.id})
        return RecordingStarted(recording_id=recording.id, sources=[source], ring=record.ring,
                                ends_at=recording.ends_at)

    async def _open_files(self, recording_id: str, max_bytes: int) -> DirectoryStore:
        """The recording's directory, if the filesystem can hold its ``max_bytes`` on top of
        what the running recordings may still grow into; else :class:`Refusal`."""
        agent, rc = self.config.id, self.config.recorder
        assert rc.directory is not None
        root = Path(rc.directory)
        try:
            free = await trio.to_thread.run_sync(free_space, root)
        except OSError as exc:
            raise Refusal("START_CAPTURE_FAILED", f"agent {agent}: recorder.directory {root}: "
                          f"{exc.strerror or exc}") from None
        growth = max(0, sum(r.record.ring.max_bytes or 0 for r in self.recordings.values())
                     - sum(r.statistics().memory for r in self.recordings.values()))
        if free - growth < max_bytes:
            raise Refusal("LIMIT_REACHED", (
                f"agent {agent}: recorder.directory {root} has {size_text(free)} free, "
                f"{size_text(growth)} of it promised to running recordings, and cannot hold "
                f"this recording's {size_text(max_bytes)} (its max_bytes, within "
                "recorder.max_bytes): ask for less (--max-bytes), or ask the operator to free "
                "the disk or lower recorder.max_bytes"))
        try:
            return await trio.to_thread.run_sync(
                DirectoryStore, root, recording_id, max(MIN_PIECE, max_bytes // 8))
        except (OSError, ValueError) as exc:
            raise Refusal("START_CAPTURE_FAILED", f"agent {agent}: recorder.directory {root}: "
                          f"cannot hold recording {recording_id}: {exc}") from None

    def stop(self, recording_id: str) -> list[Recording]:
        """Stop a recording and free its ring at once; its final state (none if unknown)."""
        recording = self.recordings.get(recording_id)
        if recording is None:
            return []
        self._finish(recording, "stopped", "stopped by the api")
        return [self.ended[recording_id]]

    def listed(self, recording_ids: list[str]) -> list[Recording]:
        """The state of these recordings (all, if none is named), ended ones included."""
        if not recording_ids:
            return [r.status() for r in self.recordings.values()] + list(self.ended.values())
        found = []
        for rid in recording_ids:
            if rid in self.recordings:
                found.append(self.recordings[rid].status())
            elif rid in self.ended:
                found.append(self.ended[rid])
        return found

    @contextmanager
    def watch(self) -> Iterator[trio.MemoryReceiveChannel[Triggered]]:
        """Trigger notices, for as long as the block runs."""
        send, receive = trio.open_memory_channel[Triggered](WATCH_QUEUE)
        self._watchers.add(send)
        try:
            yield receive
        finally:
            self._watchers.discard(send)
            send.close()

    async def window(self, save: RecordSave) -> tuple[ActiveRecording, Window] | None:
        """The recording and the window ``save`` asks for (None: no such recording held)."""
        recording = self.recordings.get(save.recording_id)
        if recording is None:
            return None
        if save.last is not None:
            t_from, t_to = time.time_ns() - round(save.last * _NS), 2**64
        else:
            t_from, t_to = save.start or 0, 2**64 if save.end is None else save.end
        return recording, await recording.window(t_from, t_to)

    # --- the recording's task ----------------------------------------------------------------

    def _finish(self, recording: ActiveRecording, reason: RecordingEnd, text: str) -> None:
        recording.end(reason, text)
        if recording.files is not None:
            if self._nursery is not None:
                self._nursery.start_soon(self._discard, recording)
            else:  # the recorder has stopped: no thread of this recording runs any more
                recording.discard_sync()
        if self.recordings.pop(recording.id, None) is None:
            return
        self.budget.release(recording.id)
        self._change()
        self.ended[recording.id] = recording.status()
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)
        stats = recording.statistics()
        log.info("recording %s ended (%s%s): %d packets captured, %d aged out, kernel dropped %d",
                 recording.id, recording.end_reason, f": {text}" if text else "", stats.captured,
                 stats.aged_out_time + stats.aged_out_size, stats.kernel_dropped,
                 extra={"event": "recording_ended", "recording_id": recording.id})

    async def _discard(self, recording: ActiveRecording) -> None:
        await recording.discard()
        self._change()

    async def _run(self, recording: ActiveRecording, netns: Path | None, kernel_filter: str,
                   *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        options = recording.record.options
        started = False
        failure = ""
        try:
            with recording.scope:
                async with open_handle(options.device, filter=kernel_filter,
                                       snaplen=options.snaplen, netns=netns) as handle:
                    recording.link_type, recording.snaplen = handle.link_type, handle.snaplen
                    matcher = None
                    if recording.record.trigger is not None:
                        matcher = Matcher(await filter_program(
                            recording.record.trigger.filter, handle.link_type,
                            handle.snaplen))
                    task_status.started()
                    started = True
                    await self._record(recording, handle, matcher)
                recording.state = "held"  # a `once` trigger: keep the ring for the save
                await trio.sleep_forever()
        except Exception as exc:  # a recording that fails must not take the agent with it
            if not started:
                raise  # the request is refused with it
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                failure = (f"disk full: recorder.directory {self.config.recorder.directory} "
                           "could not take more packets; this recording ended, the others run "
                           "on — free the disk or lower recorder.max_bytes")
            else:
                failure = (str(exc) if isinstance(exc, HandleError)
                           else f"internal error: {exc!r}")
            log.warning("recording %s failed: %s", recording.id, failure,
                        exc_info=not isinstance(exc, (HandleError, OSError)))
        finally:
            if started and recording.id in self.recordings:
                if failure:
                    self._finish(recording, "failed", failure)
                elif recording.scope.cancelled_caught:  # its deadline: `until`
                    self._finish(recording, "expired",
                                 f"until ({recording.record.ring.until:g}s) reached")
                else:
                    self._finish(recording, "drained", f"agent {self.config.id} stopped")

    async def _record(self, recording: ActiveRecording, handle: PcapHandle,
                      matcher: Matcher | None) -> None:
        """Read into the ring until cancelled, or until a ``once`` trigger's window is whole."""
        triggers = recording.triggers
        next_stats = trio.current_time()
        while True:
            batch = await handle.read_batch(max_packets=MAX_READ, max_wait=READ_WAIT)
            if matcher is not None and triggers is not None and batch.blocks:
                fired = triggers.matched(matcher.matches(batch.blocks))
                if fired is not None:
                    log.info("recording %s: trigger %d fired at %d", recording.id,
                             fired.number, fired.at, extra={"event": "recording_triggered",
                                                            "recording_id": recording.id})
            await recording.add(batch.blocks, time.time_ns())
            self._change()
            if trio.current_time() >= next_stats:
                stats = handle.stats()
                recording.note_kernel(stats.kernel_dropped, stats.interface_dropped)
                recording.kernel_received = stats.received
                next_stats = trio.current_time() + STATS_PERIOD
            if triggers is not None and (done := triggers.complete(batch.watermark)):
                self._notify(recording, done, stopping=triggers.done)
                if triggers.done:
                    stats = handle.stats()
                    recording.note_kernel(stats.kernel_dropped, stats.interface_dropped)
                    return

    def _notify(self, recording: ActiveRecording, fired: Fired, *, stopping: bool) -> None:
        notice = Triggered(recording_id=recording.id, source=recording.source.name,
                           trigger=_fired(fired), stopping=stopping)
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(notice)
            except trio.WouldBlock:
                pass  # that link is behind: it catches up by listing
            except trio.ClosedResourceError:
                self._watchers.discard(watcher)


# --- saving a window ----------------------------------------------------------------------------


async def send_save(link: Link, recording: ActiveRecording, window: Window) -> None:
    """Answer a ``record_save``: the same stream as a capture's, from ``started`` to ``end``.
    Each data message's watermark is its last packet's time (the window is sorted). Parts of
    a disk ring are read a message at a time, in a worker thread: the window is never whole
    in memory."""
    rid = recording.id
    await link.send(Started(capture_id=rid, sources=[Source(
        id=0, name=recording.source.name, description=recording.source.description)]))
    await link.send(Data(watermark=0, payload=encode_interface_description(
        link_type=recording.link_type, snaplen=recording.snaplen, name=recording.source.name,
        description=recording.source.description, tsresol=9,
        filter=recording.record.options.filter or None)))
    for group in message_groups(window.chunks):
        if all(isinstance(chunk, memoryview) for chunk in group):
            payload = _joined(group)
        else:
            payload = await trio.to_thread.run_sync(_joined, group)
        await link.send(_data(payload))
    for msg in save_end(recording, window):
        await link.send(msg)


def message_groups(chunks: list[Chunk]) -> Iterator[list[Chunk]]:
    """``chunks`` in runs of at most :data:`MAX_CHUNK` bytes (or one larger chunk)."""
    pending: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if pending and size + len(chunk) > MAX_CHUNK:
            yield pending
            pending, size = [], 0
        pending.append(chunk)
        size += len(chunk)
    if pending:
        yield pending


def save_end(recording: ActiveRecording, window: Window) -> Iterator[Data | Statistics | End]:
    """The statistics block, final statistics and ``end`` of a save."""
    rid = recording.id
    stats = recording.statistics()
    now = time.time_ns()
    aged = stats.aged_out_time + stats.aged_out_size
    yield Data(watermark=0, payload=encode_interface_statistics(
        interface_id=0, timestamp=now, start_time=round(recording.started_at * _NS),
        end_time=now, received=recording.kernel_received, kernel_dropped=stats.kernel_dropped,
        interface_dropped=stats.interface_dropped, delivered=window.packets,
        comment=RingNote(rid, window.packets, stats.packets, stats.aged_out_time,
                         stats.aged_out_size, stats.captured).text()))
    counters = Counters(packets=window.packets, bytes=window.bytes,
                        kernel_received=recording.kernel_received,
                        kernel_dropped=stats.kernel_dropped,
                        interface_dropped=stats.interface_dropped, written=window.packets)
    yield Statistics(sources=[SourceStatistics(source=0, state="stopped", packets=window.packets,
                                               bytes=window.bytes, written=window.packets,
                                               kernel_dropped=stats.kernel_dropped)], final=True)
    yield End(reason="completed", totals=counters,
              text=f"{window.packets} packets saved from recording {rid} ({aged} aged out)")


def _joined(chunks: list[Chunk]) -> bytes | memoryview:
    """One message's bytes (a disk ring's parts are read here: blocking)."""
    if len(chunks) == 1:
        chunk = chunks[0]
        return chunk if isinstance(chunk, memoryview) else bytes(chunk)
    return b"".join(c if isinstance(c, memoryview) else bytes(c) for c in chunks)


def _data(payload: bytes | memoryview) -> Data:
    tail = int.from_bytes(payload[-4:], "little")
    block = payload[len(payload) - tail:]
    watermark = int.from_bytes(block[12:16], "little") << 32 | int.from_bytes(block[16:20],
                                                                               "little")
    return Data(watermark=watermark, payload=payload)


__all__ = ["ActiveRecording", "Recorder", "send_save"]
