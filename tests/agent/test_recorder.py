"""The flight recorder on a real agent: real libpcap in namespaces, the real protocol over real
mutual TLS. What the api will rely on: windows hold exactly their packets, rings stay inside
keep and max_bytes (checked on the agent's own ring), triggers are reported with the trigger
packet's time, stop frees at once, and the budget refuses rather than squeezes."""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from pcapd.agent.recorder import MAX_READ
from pcapd.agent.ring import Ring, RingStatistics, Window
from pcapd.agent.server import Agent, serve_agent
from pcapd.certs import CertPaths, init_certs
from pcapd.config import AgentConfig, parse_agent_config
from pcapd.config.model import AgentListenConfig
from pcapd.pcapng import (
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    PcapngDecoder,
    encode_section_header,
)
from pcapd.proto import (
    AgentTarget,
    CaptureOptions,
    Data,
    End,
    Error,
    InitiatorSession,
    ListRecordings,
    Message,
    Record,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    Started,
    Statistics,
    Trigger,
    Triggered,
)
from pcapd.transport.link import Link
from pcapd.transport.tls import client_context
from pcapd.transport.ws import open_websocket
from tests.netns import Netns, netns, netns_dir, send_udp

pytestmark = pytest.mark.root
S = 1_000_000_000
PORT = 47311
TRIGGER_PORT = 47312


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


@dataclass
class Cell:
    agent: Agent
    port: int
    container: Netns
    pki: CertPaths

    def ring(self, recording_id: str) -> Ring:
        """The agent's own ring (what it holds, not what a file says)."""
        return self.agent.recorder.recordings[recording_id].ring

    def stats(self, recording_id: str) -> RingStatistics:
        """The agent's own ring's statistics, whatever the storage."""
        return self.agent.recorder.recordings[recording_id].statistics()

    async def held(self, recording_id: str) -> Window:
        return await self.agent.recorder.recordings[recording_id].window(0, 2**64)

    @asynccontextmanager
    async def link(self) -> AsyncIterator[Link]:
        ctx = client_context(ca=self.pki.ca_cert, certificate=self.pki.api_client_cert,
                             private_key=self.pki.api_client_key)
        async with open_websocket("127.0.0.1", self.port, ssl_context=ctx,
                                  server_hostname="pcap-agent.service.cf.internal") as ws:
            link = Link(ws, InitiatorSession("api"), "agent")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            await link.receive()
            yield link

    async def ask(self, msg: Message) -> Message | Data:
        async with self.link() as link:
            await link.send(msg)
            return await link.receive()

    async def record(self, keep: float = 60.0, max_bytes: int = 1 << 20, until: float = 600.0,
                     trigger: Trigger | None = None, filter: str = f"udp port {PORT}",
                     ) -> RecordingStarted | Error:
        answer = await self.ask(Record(
            recording_id="r-" + secrets.token_hex(4),
            target=AgentTarget(namespace=self.container.name, source="app/0"),
            options=CaptureOptions(device="lo", filter=filter),
            ring=RecordRing(keep=keep, max_bytes=max_bytes, until=until), trigger=trigger))
        assert isinstance(answer, RecordingStarted | Error), answer
        return answer

    async def save(self, save: RecordSave) -> Saved:
        async with self.link() as link:
            await link.send(save)
            messages: list[Message | Data] = []
            while not isinstance(msg := await link.receive(), End | Error):
                messages.append(msg)
        if isinstance(msg, Error):
            raise SaveRefused(msg)
        return Saved.of(messages, msg)

    async def send(self, count: int, marker: bytes, port: int = PORT, size: int = 200) -> None:
        await send_udp(self.container, "127.0.0.1", port, count, marker=marker, size=size)

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self.agent.recorder.wait_changed()

    async def wait_captured(self, recording_id: str, packets: int) -> None:
        """Until the agent's ring has taken ``packets`` in all."""
        await self.until(lambda: self.stats(recording_id).captured >= packets)


class SaveRefused(Exception):
    def __init__(self, error: Error) -> None:
        super().__init__(error.text)
        self.error = error


@dataclass
class Saved:
    packets: list[EnhancedPacket]
    interface: InterfaceDescription
    statistics: InterfaceStatistics
    end: End
    started: Started
    final: Statistics

    @classmethod
    def of(cls, messages: list[Message | Data], end: End) -> Saved:
        started, *rest = messages
        assert isinstance(started, Started)
        final = rest.pop()
        assert isinstance(final, Statistics) and final.final
        decoder = PcapngDecoder()
        decoder.receive_data(encode_section_header())
        watermark = 0
        for data in rest:
            assert isinstance(data, Data)
            assert data.watermark == 0 or data.watermark >= watermark
            watermark = max(watermark, data.watermark)
            decoder.receive_data(bytes(data.payload))
        blocks = []
        while (block := decoder.next_block()) is not None:
            blocks.append(block)
        idb, isb = blocks[1], blocks[-1]
        assert isinstance(idb, InterfaceDescription) and isinstance(isb, InterfaceStatistics)
        packets = [b for b in blocks[2:-1] if isinstance(b, EnhancedPacket)]
        assert len(packets) == len(blocks) - 3
        return cls(packets, idb, isb, end, started, final)

    def markers(self) -> list[bytes]:
        """The UDP payloads' first 7 bytes (a 3-letter marker + seq), in file order."""
        return [p.data[14 + 20 + 8:14 + 20 + 8 + 7] for p in self.packets]


def udp_marker(marker: bytes, seq: int) -> bytes:
    return marker + seq.to_bytes(4, "big")


@contextmanager
def config_for(pki: CertPaths, cells: Path, **recorder: object) -> Iterator[AgentConfig]:
    parsed = parse_agent_config({
        "id": "cell/0", "containers": {"netns_dir": str(cells)}, "recorder": recorder,
        "tls": {"certificate": str(pki.agent_cert), "private_key": str(pki.agent_key),
                "client_ca": str(pki.ca_cert)}})
    yield msgspec.structs.replace(parsed, listen=AgentListenConfig(address="127.0.0.1", port=0))


@asynccontextmanager
async def cell(pki: CertPaths, tmp_path: Path, **recorder: object) -> AsyncIterator[Cell]:
    with netns() as container, netns_dir(tmp_path / "cell", container) as cells, \
            config_for(pki, cells, **recorder) as cfg:
        agent = Agent(cfg)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_agent, cfg, agent)
            yield Cell(agent, listeners[0].socket.getsockname()[1], container, pki)
            nursery.cancel_scope.cancel()


STORAGES = pytest.mark.parametrize("storage", ["memory", "directory"])


def storage_config(storage: str, tmp_path: Path) -> dict[str, object]:
    if storage == "memory":
        return {}
    return {"storage": "directory", "directory": str(tmp_path / "rings")}


def on_disk(rings: Path) -> int:
    return sum(p.stat().st_size for p in rings.rglob("*") if p.is_file())


@STORAGES
async def test_a_window_holds_exactly_its_packets_in_order_and_old_ones_age_out(
        pki: CertPaths, tmp_path: Path, storage: str) -> None:
    with trio.fail_after(60):
        async with cell(pki, tmp_path, **storage_config(storage, tmp_path)) as c:
            started = await c.record(keep=2.0)
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            assert [s.name for s in started.sources] == ["app/0:lo"]
            await c.send(20, b"old")
            await c.wait_captured(rid, 20)
            await trio.sleep(0.05)  # t0 strictly after the last "old" packet
            t0 = time.time_ns()
            await c.send(30, b"win")
            await c.wait_captured(rid, 50)
            t1 = time.time_ns()
            await c.send(10, b"aft")
            await c.wait_captured(rid, 60)

            saved = await c.save(RecordSave(recording_id=rid, start=t0, end=t1))
            assert saved.markers() == [udp_marker(b"win", i) for i in range(30)]
            stamps = [p.timestamp for p in saved.packets]
            assert stamps == sorted(stamps) and t0 <= stamps[0] and stamps[-1] <= t1
            assert saved.interface.name == "app/0:lo" and saved.interface.filter == (
                f"udp port {PORT}")
            assert saved.end.totals.packets == saved.end.totals.written == 30
            assert saved.statistics.delivered == 30 and saved.started.capture_id == rid

            everything = await c.save(RecordSave(recording_id=rid))
            assert everything.markers() == ([udp_marker(b"old", i) for i in range(20)]
                                            + [udp_marker(b"win", i) for i in range(30)]
                                            + [udp_marker(b"aft", i) for i in range(10)])

            # keep (2 s) passes for the "old" packets: the agent's ring lets them go
            await c.until(lambda: c.stats(rid).aged_out_time >= 20)
            now = time.time_ns()
            held = await c.held(rid)
            first = c.stats(rid).first_timestamp
            assert first is None or first >= now - 2 * S - S // 10
            assert all(ts >= now - 2 * S - S // 10 for ts in _stamps(held.chunks))
            later = await c.save(RecordSave(recording_id=rid, last=60.0))
            assert not any(m.startswith(b"old") for m in later.markers())
            assert "aged out (older than keep)" in " ".join(later.statistics.comments)

            listed = await c.ask(ListRecordings(recording_ids=[rid]))
            assert isinstance(listed, RecordingList)
            (status,) = listed.recordings
            (source,) = status.sources
            assert status.state == source.state == "recording"
            assert source.captured == 60 and source.aged_out_time >= 20
            assert source.captured == source.packets + source.aged_out_time + source.aged_out_size


def _stamps(chunks: list[memoryview]) -> list[int]:
    from pcapd.pcapng import split_packets
    return split_packets(b"".join(bytes(c) for c in chunks)).timestamps


@STORAGES
async def test_ten_times_max_bytes_of_traffic_stays_within_budget(
        pki: CertPaths, tmp_path: Path, storage: str) -> None:
    max_bytes = 64 << 10
    rings = tmp_path / "rings"
    with trio.fail_after(60):
        async with cell(pki, tmp_path, **storage_config(storage, tmp_path)) as c:
            started = await c.record(max_bytes=max_bytes)
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            size = 1000
            count = 10 * max_bytes // size  # ten times the ring in UDP payload alone
            async with trio.open_nursery() as nursery:
                nursery.start_soon(c.send, count, b"big", PORT, size)
                while (stats := c.stats(rid)).captured < count:
                    assert stats.memory <= max_bytes and stats.bytes <= max_bytes
                    if storage == "directory":  # the disk, not just the count
                        assert on_disk(rings) <= max_bytes + MAX_READ * 1100  # + a batch
                    await c.agent.recorder.wait_changed()
            stats = c.stats(rid)
            assert stats.memory <= max_bytes and stats.aged_out_size > 0
            assert stats.captured == stats.packets + stats.aged_out_size == count
            saved = await c.save(RecordSave(recording_id=rid))
            seqs = [int.from_bytes(m[3:], "big") for m in saved.markers()]
            assert seqs == list(range(count - len(seqs), count))  # the newest, none missing
            assert sum(len(p.raw) for p in saved.packets) <= max_bytes
            if storage == "directory":
                assert on_disk(rings) == c.stats(rid).memory <= max_bytes


async def test_a_trigger_is_reported_with_its_packets_time_and_once_holds_the_ring(
        pki: CertPaths, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cell(pki, tmp_path) as c, c.link() as watch:
            await watch.send(ListRecordings(watch=True))
            assert isinstance(await watch.receive(), RecordingList)
            started = await c.record(
                filter=f"udp portrange {PORT}-{TRIGGER_PORT}",
                trigger=Trigger(filter=f"udp dst port {TRIGGER_PORT}", after=0.5, once=True))
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            await c.send(5, b"bef")
            await c.wait_captured(rid, 5)
            await c.send(1, b"TRG", port=TRIGGER_PORT)
            await c.wait_captured(rid, 6)
            await c.send(5, b"aft")
            notice = await watch.receive()
            assert isinstance(notice, Triggered) and notice.recording_id == rid
            assert notice.stopping and notice.source == "app/0:lo"
            fired = notice.trigger
            assert fired.complete and fired.number == 1
            assert fired.window_end == fired.at + S // 2

            saved = await c.save(RecordSave(recording_id=rid, start=fired.window_start,
                                            end=fired.window_end))
            markers = saved.markers()
            (trigger_packet,) = [p for p, m in zip(saved.packets, markers, strict=True)
                                 if m.startswith(b"TRG")]
            assert trigger_packet.timestamp == fired.at  # the trigger packet's own time
            assert markers[:5] == [udp_marker(b"bef", i) for i in range(5)]
            assert udp_marker(b"aft", 0) in markers  # packets from after it, too

            listed = await c.ask(ListRecordings(recording_ids=[rid]))
            assert isinstance(listed, RecordingList)
            (status,) = listed.recordings
            assert status.state == "held" and status.sources[0].triggers_fired == 1
            assert status.sources[0].triggers[0].at == fired.at
            captured = c.ring(rid).statistics().captured
            await c.send(5, b"lat")  # held: captures no more (its handle is closed)
            assert c.agent.recorder.recordings[rid].state == "held"
            assert c.ring(rid).statistics().captured == captured


async def test_stop_frees_the_ring_at_once_and_the_budget_refuses_rather_than_squeezes(
        pki: CertPaths, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cell(pki, tmp_path, max_bytes=1 << 20, max_recordings=2) as c:
            first = await c.record(max_bytes=768 << 10)
            assert isinstance(first, RecordingStarted)
            too_big = await c.record(max_bytes=512 << 10)
            assert isinstance(too_big, Error) and too_big.code == "LIMIT_REACHED"
            assert "recorder.max_bytes" in too_big.text and "cell/0" in too_big.text
            second = await c.record(max_bytes=256 << 10)
            assert isinstance(second, RecordingStarted)
            third = await c.record(max_bytes=1)
            assert isinstance(third, Error) and "recorder.max_recordings" in third.text

            rid = first.recording_id
            await c.send(20, b"stp")
            await c.wait_captured(rid, 20)
            ring = c.ring(rid)
            assert ring.statistics().packets == 20
            answer = await c.ask(RecordStop(recording_id=rid))
            assert isinstance(answer, RecordingList)
            (final,) = answer.recordings
            assert final.state == "ended" and final.end_reason == "stopped"
            assert final.sources[0].captured == 20 and final.sources[0].packets == 0
            stats = ring.statistics()  # freed before the answer was sent
            assert (stats.packets, stats.memory) == (0, 0)
            assert rid not in c.agent.recorder.recordings
            assert c.agent.recorder.budget.statistics().reserved == 256 << 10
            with pytest.raises(SaveRefused) as refused:
                await c.save(RecordSave(recording_id=rid))
            assert refused.value.error.code == "INSTANCE_UNAVAILABLE"
            unknown = await c.ask(RecordStop(recording_id="nobody"))
            assert unknown == RecordingList(recordings=[])
            listed = await c.ask(ListRecordings(recording_ids=[rid]))
            assert isinstance(listed, RecordingList) and listed.recordings == [final]


async def test_a_recording_frees_itself_at_until(pki: CertPaths, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cell(pki, tmp_path) as c:
            started = await c.record(until=0.5)
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            await c.until(lambda: rid not in c.agent.recorder.recordings)
            listed = await c.ask(ListRecordings(recording_ids=[rid]))
            assert isinstance(listed, RecordingList)
            (status,) = listed.recordings
            assert (status.state, status.end_reason) == ("ended", "expired")
            assert c.agent.recorder.budget.statistics().reserved == 0


async def test_bad_requests_are_refused_and_reserve_nothing(
        pki: CertPaths, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cell(pki, tmp_path) as c:
            bad_filter = await c.record(filter="udp port nonsense")
            assert isinstance(bad_filter, Error) and bad_filter.code == "INVALID_REQUEST"
            bad_trigger = await c.record(trigger=Trigger(filter="tcp port banana"))
            assert isinstance(bad_trigger, Error) and bad_trigger.code == "INVALID_REQUEST"
            assert "banana" in bad_trigger.text
            assert c.agent.recorder.budget.statistics().reserved == 0
            assert c.agent.recorder.recordings == {}


# --- recorder.storage: directory ---------------------------------------------------------------


async def test_in_a_directory_aged_out_segments_and_stopped_rings_are_deleted(
        pki: CertPaths, tmp_path: Path) -> None:
    rings = tmp_path / "rings"
    rings.mkdir()
    (rings / "r-previous-run").mkdir()  # an agent restart loses its rings
    (rings / "r-previous-run" / "segment-00000000.epb").write_bytes(b"x" * 100)
    with trio.fail_after(60):
        async with cell(pki, tmp_path, storage="directory", directory=str(rings)) as c:
            assert list(rings.iterdir()) == [] and (rings.stat().st_mode & 0o777) == 0o700
            started = await c.record(keep=1.0, max_bytes=64 << 10)
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            ring_dir = rings / rid
            await c.send(100, b"seg", size=200)  # ~25 KiB in 8 KiB segments
            await c.wait_captured(rid, 100)
            assert len(list(ring_dir.iterdir())) >= 3
            assert all((p.stat().st_mode & 0o777) == 0o600 for p in ring_dir.iterdir())
            await c.until(lambda: c.stats(rid).aged_out_time == 100)
            assert list(ring_dir.iterdir()) == []  # each segment went with its last packet

            await c.send(20, b"stp")
            await c.wait_captured(rid, 120)
            assert on_disk(ring_dir) > 0
            answer = await c.ask(RecordStop(recording_id=rid))
            assert isinstance(answer, RecordingList)
            (final,) = answer.recordings
            assert final.end_reason == "stopped" and final.sources[0].packets == 0
            await c.until(lambda: not ring_dir.exists())
            assert list(rings.iterdir()) == []


async def test_a_ring_file_cut_short_ends_the_save_with_an_error_not_the_agent(
        pki: CertPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Someone (or a disk error) cuts a ring's segment files short: the save is answered with
    an error naming the recording, nothing is logged as an internal error, and the agent
    goes on serving."""
    rings = tmp_path / "rings"
    with trio.fail_after(60):
        async with cell(pki, tmp_path, storage="directory", directory=str(rings)) as c:
            started = await c.record(max_bytes=64 << 10)
            assert isinstance(started, RecordingStarted)
            rid = started.recording_id
            await c.send(100, b"cut", size=200)
            await c.wait_captured(rid, 100)
            for segment in (rings / rid).iterdir():
                os.truncate(segment, 0)
            with pytest.raises(SaveRefused) as refused:
                await c.save(RecordSave(recording_id=rid))
            error = refused.value.error
            assert error.code == "INSTANCE_UNAVAILABLE", error
            assert f"cannot read recording {rid}'s ring" in error.text, error.text
            assert isinstance(await c.ask(RecordStop(recording_id=rid)), RecordingList)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def test_a_small_disk_refuses_the_arm_and_a_full_one_ends_only_that_recording(
        pki: CertPaths, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1m") as small, trio.fail_after(60):
        rings = small / "rings"
        async with cell(pki, tmp_path, storage="directory", directory=str(rings)) as c:
            refused = await c.record(max_bytes=2 << 20)
            assert isinstance(refused, Error) and refused.code == "LIMIT_REACHED"
            assert "recorder.directory" in refused.text and str(rings) in refused.text
            assert "cell/0" in refused.text and c.agent.recorder.budget.statistics().reserved == 0

            started = await c.record(max_bytes=600 << 10)
            assert isinstance(started, RecordingStarted)
            disk_bound = await c.record(max_bytes=600 << 10)  # the first may still take 600 KiB
            assert isinstance(disk_bound, Error) and "promised to running" in disk_bound.text
            rid = started.recording_id
            # someone else fills the disk: the recording's next write fails
            filler = small / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while os.write(fd, bytes(4096)):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            await c.send(50, b"ful", size=1000)
            await c.until(lambda: rid not in c.agent.recorder.recordings)
            listed = await c.ask(ListRecordings(recording_ids=[rid]))
            assert isinstance(listed, RecordingList)
            (status,) = listed.recordings
            assert status.end_reason == "failed" and status.end_text.startswith("disk full")
            assert "recorder.directory" in status.end_text
            await c.until(lambda: not (rings / rid).exists())
            filler.unlink()
            again = await c.record(max_bytes=256 << 10)  # the agent runs on
            assert isinstance(again, RecordingStarted)
            await c.send(5, b"ok!")
            await c.wait_captured(again.recording_id, 5)
