"""A ring's pieces in segment files (``recorder.storage: directory``): the same packets as a
ring in memory within ``max_bytes`` on disk, segments rotated and deleted with their last
piece, private files, no symlink followed, and windows readable after their segments went."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd.agent.ring import MAX_PIECE, Ring
from pcapd.agent.ring_files import DirectoryStore, prepare_directory
from tests.agent.rings import PACKET, T0, S, batch, epb, held, operations, packets


def _segments(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.integers(1, 5 * S), st.integers(PACKET, 40 * PACKET), st.data())
def test_a_ring_in_files_holds_what_the_memory_ring_holds_within_max_bytes_on_disk(
    ops: list[tuple[int, list[int]]], keep: int, max_bytes: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = DirectoryStore(Path(tmp), "r-1", max(1, max_bytes // 8))
        on_disk, in_memory = Ring(keep, max_bytes, files), Ring(keep, max_bytes)
        now = T0
        for step, offsets in ops:
            now += step
            blocks = b"".join(epb(now + o, i) for i, o in enumerate(offsets))
            on_disk.add(blocks, now)
            in_memory.add(blocks, now)
            disk = sum(p.stat().st_size for p in files.path.iterdir())
            assert disk == files.held == on_disk.statistics().memory <= max_bytes
        assert held(on_disk) == held(in_memory)
        t_from = data.draw(st.integers(T0 - 2 * S, now + S), label="from")
        t_to = data.draw(st.integers(t_from, now + 2 * S), label="to")
        window = on_disk.window(t_from, t_to)
        assert packets(window) == packets(in_memory.window(t_from, t_to))
        on_disk_stats, in_memory_stats = on_disk.statistics(), in_memory.statistics()
        assert (on_disk_stats.packets, on_disk_stats.bytes, on_disk_stats.captured) == (
            in_memory_stats.packets, in_memory_stats.bytes, in_memory_stats.captured)
        files.close()
        assert not files.path.exists()
        packets(window)  # a window read before the files went stays whole


def test_a_segment_is_deleted_when_its_last_packet_ages_out(tmp_path: Path) -> None:
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=2 * PACKET)
    ring = Ring(keep_ns=10 * S, max_bytes=1 << 20, store=files)
    for i in range(6):  # two packets a segment: three segments
        ring.add(batch(T0 + i * S), now_ns=T0 + i * S)
    assert len(_segments(files.path)) == 3
    assert (files.path.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in files.path.iterdir())
    ring.age(T0 + 10 * S + S // 2)  # T0 goes: its segment still holds T0 + 1 s
    assert len(_segments(files.path)) == 3
    ring.age(T0 + 11 * S + S // 2)  # T0 + 1 s goes: the first segment is deleted
    assert len(_segments(files.path)) == 2 and files.held == 4 * PACKET
    ring.clear()
    assert _segments(files.path) == [] and files.held == 0
    files.close()
    assert not files.path.exists()


def test_a_ring_directory_refuses_unsafe_names_and_symlinks(tmp_path: Path) -> None:
    for name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="not a safe directory name"):
            DirectoryStore(tmp_path, name, 4096)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "r-2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        DirectoryStore(tmp_path, "r-2", 4096)
    link = tmp_path / "rings"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotADirectoryError, match=r"recorder\.directory"):
        prepare_directory(link)


def test_prepare_directory_removes_a_previous_runs_rings(tmp_path: Path) -> None:
    rings = tmp_path / "rings"
    prepare_directory(rings)
    assert (rings.stat().st_mode & 0o777) == 0o700
    old = DirectoryStore(rings, "r-old", 4096)
    old.put(epb(T0))
    (rings / "stray").write_bytes(b"x")
    prepare_directory(rings)
    assert list(rings.iterdir()) == []


def test_a_window_of_a_ring_in_files_is_read_as_it_is_sent(tmp_path: Path) -> None:
    """A 16 MiB window of a disk ring holds in memory only the two pieces at its ends (cut
    by time); the rest is read when sent, and stays readable after its segments aged out
    and were deleted, until the window is gone."""
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=4 << 20)
    ring = Ring(keep_ns=60 * S, max_bytes=32 << 20, store=files)
    per_batch = (1 << 20) // 1044  # 1 KiB packets: a piece (1 MiB) a batch
    for i in range(16):
        ring.add(b"".join(epb(T0 + (i * per_batch + j) * 1000, j, size=1000)
                          for j in range(per_batch)), now_ns=T0 + i * S // 10)
    window = ring.window(T0 + 500, 2**64)  # cuts the first piece
    in_memory = sum(len(c) for c in window.chunks if isinstance(c, memoryview))
    assert window.bytes > 15 << 20 and in_memory <= 2 * MAX_PIECE, in_memory
    expected = packets(window)
    ring.age(T0 + 3600 * S)  # everything aged out: the segments are deleted
    assert _segments(files.path) == [] and files.held == 0
    assert packets(window) == expected
    del window, expected  # its segments' descriptors go with it

    def open_segments(mine: str = f"{files.path}/segment-") -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # (listdir's own descriptor)
                if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(mine):
                    found.append(target)
        return found

    assert open_segments() == []
    files.close()


def test_pieces_go_into_segments_of_at_most_segment_bytes_and_read_back(
        tmp_path: Path) -> None:
    """A segment is rotated before a piece would take it past ``segment_bytes``; a piece
    larger than that has a segment of its own rather than being refused."""
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=100)
    pieces = [bytes([n]) * size for n, size in enumerate((60, 40, 1, 250, 10))]
    refs = [files.put(p) for p in pieces]
    assert [files.get(r) for r in refs] == pieces
    sizes = {p.name: p.stat().st_size for p in files.path.iterdir()}
    assert sizes == {"segment-00000000.epb": 100, "segment-00000001.epb": 1,
                     "segment-00000002.epb": 250, "segment-00000003.epb": 10}
    assert files.held == sum(map(len, pieces))
    files.close()


def test_a_slice_reads_its_part_even_after_its_segment_is_deleted(tmp_path: Path) -> None:
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=1 << 20)
    ref = files.put(b"0123456789")
    part = files.part(ref, 3, 7)
    assert len(part) == 4 and bytes(part) == b"3456"
    files.free(ref)  # its last piece: the segment is deleted
    assert _segments(files.path) == [] and files.held == 0
    assert bytes(part) == b"3456"
    files.close()
    assert bytes(part) == b"3456"


def test_a_segment_cut_short_underneath_is_an_error_naming_it(tmp_path: Path) -> None:
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=1 << 20)
    ref = files.put(b"x" * 100)
    os.truncate(files.path / "segment-00000000.epb", 40)
    with pytest.raises(OSError, match=r"segment .*/r-1/segment-00000000\.epb is shorter than "
                       r"written"):
        files.get(ref)
    files.close()


def test_close_deletes_everything_once(tmp_path: Path) -> None:
    files = DirectoryStore(tmp_path, "r-1", segment_bytes=10)
    for _ in range(3):
        files.put(b"y" * 10)
    files.close()
    files.close()  # a second close (the recording's end after an error) is harmless
    assert files.closed and list(tmp_path.iterdir()) == []


def test_prepare_directory_makes_an_existing_directory_private_and_refuses_a_file(
        tmp_path: Path) -> None:
    rings = tmp_path / "rings"
    rings.mkdir(mode=0o755)
    prepare_directory(rings)
    assert (rings.stat().st_mode & 0o777) == 0o700
    (tmp_path / "plain").write_text("")
    with pytest.raises(NotADirectoryError, match=r"recorder\.directory .*/plain is not a "
                       r"directory"):
        prepare_directory(tmp_path / "plain")
