"""``pcapd merge``: the offline merge of pcap and pcapng files, against Wireshark's readers.

Inputs are built with pcapd's encoders (and editcap for classic pcap, by hand for big-endian);
the console script runs as a user runs it; tshark, capinfos and mergecap judge the output.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pcapd import _accel
from pcapd.errors import PcapdError
from pcapd.merge.engine import CompiledFileMerge, FileMerge, FileMergeFactory, PureFileMerge
from pcapd.merge.files import MergeInputError, MergeOutputError, MergeResult, merge_files
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    SHB,
    SPB,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    NameResolution,
    PcapngDecoder,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_name_resolution,
    encode_section_header,
)
from tests.readers import run_tool, tshark_fields

NS = 10**9
BASE = 1_700_000_000 * NS
PCAPD = Path(sys.executable).with_name("pcapd")


@dataclass(frozen=True)
class Pkt:
    """A packet as a reader should see it in the merged output."""

    interface: str
    ns: int
    data: bytes
    original_length: int
    comment: str = ""


def frame(n: int, size: int = 60) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes whose payload starts with ``n``."""
    payload = n.to_bytes(4, "big") + bytes(size - 46)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), n & 0xFFFF, 0, 64, 17, 0,
        bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
    )  # fmt: skip
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0)
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + udp + payload


def pcapng(
    interfaces: Sequence[tuple[str | None, int]],
    packets: Sequence[tuple[int, int, bytes, int, str | None]],
    *,
    snaplen: int = 0,
    middle: bytes = b"",
    tail: bytes = b"",
) -> bytes:
    """A little-endian section: ``interfaces`` (name, tsresol exponent), then ``packets``
    (interface, ns, data, original length, comment), ``middle`` after the first packet."""
    parts = [encode_section_header(user_application="test")]
    for name, exponent in interfaces:
        parts.append(
            encode_interface_description(
                link_type=1, snaplen=snaplen, name=name, tsresol=exponent,
                description=None if name is None else f"desc of {name}", filter="udp",
            )
        )  # fmt: skip
    for i, (interface, ns, data, orig, comment) in enumerate(packets):
        ticks = ns // 10 ** (9 - interfaces[interface][1])
        parts.append(
            encode_enhanced_packet(
                interface_id=interface, timestamp=ticks, data=data, original_length=orig,
                comment=comment,
            )
        )  # fmt: skip
        if i == 0:
            parts.append(middle)
    parts.append(tail)
    return b"".join(parts)


# -- big-endian blocks, by hand (no tool here writes them) ----------------------------------


def be_block(block_type: int, body: bytes) -> bytes:
    total = len(body) + 12
    return struct.pack(">II", block_type, total) + body + struct.pack(">I", total)


def be_options(*options: tuple[int, bytes]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) & 3)
    return out + (struct.pack(">HH", 0, 0) if options else b"")


def be_epb(ns: int, data: bytes, orig: int, comment: str | None = None) -> bytes:
    options = be_options((1, comment.encode())) if comment else b""
    pad = b"\0" * (-len(data) & 3)
    head = struct.pack(">5I", 0, ns >> 32, ns & 0xFFFFFFFF, len(data), orig)
    return be_block(EPB, head + data + pad + options)


def big_endian_file(packets: list[tuple[int, bytes, str | None]]) -> bytes:
    shb = be_block(SHB, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1) + be_options((4, b"be")))
    idb = be_block(
        IDB,
        struct.pack(">HHI", 1, 0, 0)
        + be_options((2, b"be0"), (9, b"\x09"), (8, struct.pack(">Q", 10**9))),
    )
    epbs = b"".join(be_epb(ns, data, len(data), comment) for ns, data, comment in packets)
    nrb = be_block(NRB, struct.pack(">HH", 1, 8) + bytes([10, 0, 0, 9]) + b"be\0\0" + bytes(4))
    isb = be_block(
        ISB,
        struct.pack(">3I", 0, (BASE + 10 * NS) >> 32, (BASE + 10 * NS) & 0xFFFFFFFF)
        + be_options((4, struct.pack(">Q", 42)), (7, struct.pack(">Q", 1))),
    )
    return shb + idb + epbs + nrb + isb


# -- the inputs -----------------------------------------------------------------------------


@dataclass
class Inputs:
    paths: list[Path]
    expected: list[Pkt]
    names: list[str]


def editcap(source: Path, target: Path, file_type: str) -> None:
    run_tool("editcap", "-F", file_type, source, target)


def build_inputs(directory: Path) -> Inputs:
    """a: ns, snaplen-cut, comments, NRB, ISB; b: two µs interfaces (one unnamed); c and d:
    classic pcap from editcap (µs, ns); e: big-endian. a's and b's first packets tie."""
    expected: list[Pkt] = []
    a_packets = []
    for i in range(6):
        data = frame(i, 60 + 30 * i)
        comment = "a comment" if i == 2 else None
        ns = BASE + i * 1_000_001
        a_packets.append((0, ns, data[:100], len(data), comment))
        expected.append(Pkt("a.pcapng:eth0", ns, data[:100], len(data), comment or ""))
    isb_a = encode_interface_statistics(
        interface_id=0, timestamp=(BASE + 9 * NS), received=6, kernel_dropped=1
    )
    nrb = encode_name_resolution([("10.0.0.2", ["peer.example"])])
    (directory / "a.pcapng").write_bytes(
        pcapng([("eth0", 9)], a_packets, snaplen=100, middle=nrb, tail=isb_a)
    )
    b_packets = []
    for i in range(6):
        data = frame(100 + i)
        ns = BASE + i * 1_500_000  # whole microseconds; packet 0 ties with a's packet 0
        b_packets.append((i % 2, ns, data, len(data), "from b" if i == 5 else None))
        name = "b.pcapng:wlan0" if i % 2 == 0 else "b.pcapng:if1"
        expected.append(Pkt(name, ns, data, len(data), "from b" if i == 5 else ""))
    (directory / "b.pcapng").write_bytes(pcapng([("wlan0", 6), (None, 6)], b_packets))
    for letter, file_type, exponent in (("c", "pcap", 6), ("d", "nsecpcap", 9)):
        packets = []
        for i in range(5):
            data = frame(200 + i, 70)
            ns = BASE + 333_000 + i * 2_000_000 + (0 if exponent == 6 else 7)
            packets.append((0, ns, data, len(data), None))
            expected.append(Pkt(f"{letter}.pcap", ns, data, len(data)))
        source = directory / f"{letter}-source.pcapng"
        source.write_bytes(pcapng([("x", exponent)], packets))
        editcap(source, directory / f"{letter}.pcap", file_type)
        source.unlink()
    e_packets = []
    for i in range(4):
        data = frame(300 + i, 62)
        ns = BASE + 500_000 + i * 2_500_000
        comment = "big end" if i == 1 else None
        e_packets.append((ns, data, comment))
        expected.append(Pkt("e.pcapng:be0", ns, data, len(data), comment or ""))
    (directory / "e.pcapng").write_bytes(big_endian_file(e_packets))
    names = ["a.pcapng:eth0", "b.pcapng:wlan0", "b.pcapng:if1", "c.pcap", "d.pcap", "e.pcapng:be0"]
    paths = [directory / f"{x}" for x in ("a.pcapng", "b.pcapng", "c.pcap", "d.pcap", "e.pcapng")]
    return Inputs(paths, expected, names)


def pcapd_merge(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PCAPD), "merge", *[str(arg) for arg in args]],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )  # fmt: skip


def decode(data: bytes) -> list[object]:
    dec = PcapngDecoder()
    dec.receive_data(data)
    dec.receive_data(b"")
    blocks: list[object] = []
    while (block := dec.next_block()) is not None:
        blocks.append(block)
    return blocks


def packets_in(data: bytes) -> list[tuple[int, int, bytes]]:
    """(ns, original length, data) of every packet, in order."""
    dec = PcapngDecoder()
    dec.receive_data(data)
    dec.receive_data(b"")
    out = []
    while (block := dec.next_block()) is not None:
        if isinstance(block, EnhancedPacket):
            out.append((dec.timestamp_ns(block), block.original_length, block.data))
    return out


def epoch(ns: int) -> str:
    return f"{ns // NS}.{ns % NS:09d}"


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    return build_inputs(tmp_path)


# -- through the console script, judged by Wireshark's tools ----------------------------------


@pytest.mark.tools
def test_tshark_sees_every_packet_once_in_order_with_names_lengths_and_comments(
    inputs: Inputs, tmp_path: Path
) -> None:
    out = tmp_path / "out.pcapng"
    result = pcapd_merge("-w", out, *inputs.paths)
    assert result.returncode == 0, result.stderr
    assert f"merged {len(inputs.expected)} packets from 5 files (6 interfaces)" in result.stderr
    rows = tshark_fields(
        out, "frame.interface_name", "frame.time_epoch", "frame.len", "frame.cap_len",
        "frame.comment",
    )  # fmt: skip
    expected = [
        [p.interface, epoch(p.ns), str(p.original_length), str(len(p.data)), p.comment]
        for p in inputs.expected
    ]
    assert Counter(map(tuple, rows)) == Counter(map(tuple, expected))
    times = [int(row[1].replace(".", "")) for row in rows]
    assert times == sorted(times)
    assert [row[0] for row in rows[:2]] == ["b.pcapng:wlan0", "a.pcapng:eth0"]  # tie: later first
    assert any(p.original_length > len(p.data) for p in inputs.expected)


@pytest.mark.tools
def test_capinfos_reads_it_without_warnings(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    assert pcapd_merge("-w", out, *inputs.paths).returncode == 0
    info = run_tool("capinfos", "-S", out)  # fails on any warning
    assert f"Number of packets:   {len(inputs.expected)}\n" in info
    assert "Strict time order:   True" in info
    assert "Number of interfaces in file: 6" in info
    for name in inputs.names:
        assert f"Name = {name}\n" in info
    assert "Description = desc of eth0\n" in info  # kept
    assert f"Description = {inputs.paths[2]}\n" in info  # none in a pcap: the path
    assert "Capture length = 100\n" in info  # a's snaplen
    assert info.count("Time ticks per second = 1000000000\n") == 3  # a, d, e
    assert info.count("Time ticks per second = 1000000\n") == 3  # b (2), c
    assert info.count("Number of stat entries = 1\n") == 2  # a's and e's ISBs
    assert "Number of resolved IPv4 addresses in file: 2" in info  # a's and e's NRBs


@pytest.mark.tools
def test_same_packets_in_the_same_order_as_mergecap(inputs: Inputs, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.pcapng", tmp_path / "theirs.pcapng"
    assert pcapd_merge("-w", ours, *inputs.paths).returncode == 0
    run_tool("mergecap", "-w", theirs, *inputs.paths)
    expected = packets_in(theirs.read_bytes())
    assert len(expected) == len(inputs.expected)
    assert packets_in(ours.read_bytes()) == expected


@pytest.mark.tools
def test_stdout_pipes_into_tshark(inputs: Inputs) -> None:
    merge = subprocess.Popen(
        [str(PCAPD), "merge", "-w", "-", *map(str, inputs.paths)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert merge.stdout is not None
    tshark = subprocess.run(
        ["tshark", "-r", "-", "-T", "fields", "-e", "frame.interface_name"],
        stdin=merge.stdout, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    merge.stdout.close()
    assert merge.wait(timeout=60) == 0
    assert tshark.returncode == 0, tshark.stderr
    assert Counter(tshark.stdout.split()) == Counter(p.interface for p in inputs.expected)


@pytest.mark.tools
def test_concatenated_sections_get_their_own_interfaces(inputs: Inputs, tmp_path: Path) -> None:
    joined = tmp_path / "ab.pcapng"
    joined.write_bytes(inputs.paths[0].read_bytes() + inputs.paths[1].read_bytes())
    out = tmp_path / "out.pcapng"
    result = pcapd_merge("-w", out, joined, inputs.paths[2])
    assert result.returncode == 0, result.stderr
    rows = tshark_fields(out, "frame.interface_name", "frame.time_epoch")
    rename = {"a.pcapng:": "ab.pcapng:", "b.pcapng:": "ab.pcapng#2:"}
    expected = Counter(
        (next((p.interface.replace(k, v) for k, v in rename.items() if k in p.interface),
              p.interface), epoch(p.ns))
        for p in inputs.expected if p.interface[0] in "abc"
    )  # fmt: skip
    assert Counter(map(tuple, rows)) == expected


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "missing.pcapng", "missing.pcapng: cannot read: No such file"),
        (lambda d: d, "cannot read: Is a directory"),
        (lambda d: _write(d / "text.pcapng", b"hello, world\n"), "neither pcap nor pcapng"),
        (lambda d: _write(d / "empty.pcap", b""), "empty.pcap: empty file"),
    ],
    ids=["missing", "directory", "text", "empty"],
)
def test_bad_inputs_exit_1_naming_the_file_and_leave_no_output(
    inputs: Inputs, tmp_path: Path, make: object, words: str
) -> None:
    assert callable(make)
    bad = make(tmp_path)
    out = tmp_path / "out.pcapng"
    before = set(tmp_path.iterdir())
    result = pcapd_merge("-w", out, inputs.paths[0], bad)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pcapd: error: ") and words in result.stderr
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: _write(d / "cut.pcapng", _cut_pcapng()), "cut.pcapng: unreadable from byte "
         "offset 288 (input ends 82 bytes into a block of 92 bytes): merged the 2 packets"),
        (lambda d: _write(d / "bad.pcapng", _bad_pcapng()), "bad.pcapng: unreadable from byte "
         "offset 376 (trailing block length 0 differs from the leading 92): merged the 2 packets"),
        (lambda d: _write(d / "cut.pcap", _cut_pcap(d)), "cut.pcap: unreadable from byte offset "
         "24 (input ends 73 bytes into a 76-byte record): merged the 0 packets"),
    ],
    ids=["cut pcapng", "bad pcapng", "cut pcap"],
)  # fmt: skip
def test_damaged_inputs_are_merged_up_to_the_damage_and_exit_4(
    inputs: Inputs, tmp_path: Path, make: object, words: str
) -> None:
    assert callable(make)
    bad = make(tmp_path)
    out = tmp_path / "out.pcapng"
    result = pcapd_merge("-w", out, inputs.paths[0], bad)
    assert result.returncode == 4
    warning, summary = result.stderr.splitlines()
    assert warning == f"pcapd: warning: {bad.parent}/{words} before it"
    kept = int(words.split("merged the ")[1].split(maxsplit=1)[0])
    good = len(packets_in(inputs.paths[0].read_bytes()))
    assert len(packets_in(out.read_bytes())) == good + kept
    assert summary.startswith(f"merged {good + kept} packets from 2 files")


def test_a_failed_merge_keeps_the_previous_output(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"yesterday's merge")
    bad = _write(tmp_path / "bad.pcapng", b"\x0a\x0d\x0d\x0anot really")
    result = merge_files([inputs.paths[0], bad], out)
    assert [(d.path, d.offset) for d in result.damaged] == [(str(bad), 8)]
    text = _write(tmp_path / "text.pcapng", b"hello, world")
    with pytest.raises(MergeInputError) as info:
        merge_files([inputs.paths[0], text], out)
    assert info.value.path == str(text) and info.value.offset == 0
    assert "at byte offset" in str(info.value)
    assert out.read_bytes() != b"yesterday's merge"
    out.write_bytes(b"yesterday's merge")
    with pytest.raises(MergeInputError):
        merge_files([inputs.paths[0], text], out)
    assert out.read_bytes() == b"yesterday's merge"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unwritable_output_is_named(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "out.pcapng"
    result = pcapd_merge("-w", out, inputs.paths[0])
    assert result.returncode == 2  # refused before any input is read, as for a capture
    assert result.stderr == (f"pcapd: error: -w {out}: no directory {out.parent}: create it "
                             "first, or choose another path\n")
    assert issubclass(MergeOutputError, PcapdError)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cut_pcapng() -> bytes:
    data = pcapng([("x", 9)], [(0, BASE + i, frame(i), 60, None) for i in range(3)])
    return data[:-10]


def _bad_pcapng() -> bytes:
    data = bytearray(pcapng([("x", 9)], [(0, BASE + i, frame(i), 60, None) for i in range(3)]))
    data[-4:] = b"\0\0\0\0"
    return bytes(data)


def _cut_pcap(directory: Path) -> bytes:
    source = _write(directory / "src.pcapng", pcapng([("x", 6)], [(0, BASE, frame(1), 60, None)]))
    target = directory / "full.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(source), str(target)], check=True)
    data = target.read_bytes()[:-3]
    source.unlink()
    target.unlink()
    return data


# -- the API, without tools ---------------------------------------------------------------


def simple_inputs(directory: Path, count: int = 3, packets: int = 50) -> list[Path]:
    paths = []
    for k in range(count):
        rows = [(0, BASE + (i * count + k) * 1000, frame(i, 60 + i % 7), 60 + i % 7, None)
                for i in range(packets)]  # fmt: skip
        paths.append(_write(directory / f"in{k}.pcapng", pcapng([(f"eth{k}", 9)], rows)))
    return paths


def test_result_counts_packets_and_interfaces(tmp_path: Path) -> None:
    paths = simple_inputs(tmp_path)
    result = merge_files(paths, tmp_path / "out.pcapng")
    assert result == MergeResult(packets=150, interfaces=3, reordered=0, skipped_blocks=0)
    stamps = [ns for ns, _, _ in packets_in((tmp_path / "out.pcapng").read_bytes())]
    assert stamps == [BASE + i * 1000 for i in range(150)]


@pytest.mark.parametrize("chunk_size", [5, 64, 333, 4096])
def test_any_read_size_gives_the_same_bytes(tmp_path: Path, chunk_size: int) -> None:
    paths = simple_inputs(tmp_path)
    merge_files(paths, tmp_path / "reference.pcapng")
    merge_files(paths, tmp_path / "small.pcapng", chunk_size=chunk_size)
    assert (tmp_path / "small.pcapng").read_bytes() == (tmp_path / "reference.pcapng").read_bytes()


def test_an_input_that_goes_back_in_time_keeps_its_order_and_is_counted(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.pcapng", pcapng([("a", 9)], [
        (0, BASE + 5, frame(1), 60, None), (0, BASE + 3, frame(2), 60, None)]))  # fmt: skip
    b = _write(tmp_path / "b.pcapng", pcapng([("b", 9)], [(0, BASE + 4, frame(3), 60, None)]))
    result = merge_files([a, b], tmp_path / "out.pcapng")
    assert result.reordered == 1
    stamps = [ns - BASE for ns, _, _ in packets_in((tmp_path / "out.pcapng").read_bytes())]
    assert stamps == [4, 5, 3]


def test_statistics_go_last_with_new_ids_and_only_the_latest_per_interface(
    tmp_path: Path,
) -> None:
    a = pcapng([("a", 9)], [(0, BASE, frame(1), 60, None)], tail=b"".join(
        encode_interface_statistics(interface_id=0, timestamp=BASE + n, received=n)
        for n in (1, 2)))  # fmt: skip
    paths = [_write(tmp_path / "x.pcapng", pcapng([("x", 9)], [(0, BASE, frame(0), 60, None)])),
             _write(tmp_path / "a.pcapng", a),
             _write(tmp_path / "e.pcapng", big_endian_file([(BASE, frame(2), None)]))]  # fmt: skip
    merge_files(paths, tmp_path / "out.pcapng")
    blocks = decode((tmp_path / "out.pcapng").read_bytes())
    names = [b.name for b in blocks if isinstance(b, InterfaceDescription)]
    assert names == ["x.pcapng:x", "a.pcapng:a", "e.pcapng:be0"]
    assert [type(b) for b in blocks[-2:]] == [InterfaceStatistics] * 2
    first, second = blocks[-2:]
    assert isinstance(first, InterfaceStatistics) and isinstance(second, InterfaceStatistics)
    assert (first.interface_id, first.timestamp, first.received) == (1, BASE + 2, 2)
    assert (second.interface_id, second.received, second.kernel_dropped) == (2, 42, 1)
    nrbs = [b for b in blocks if isinstance(b, NameResolution)]
    assert [nrb.records for nrb in nrbs] == [(("10.0.0.9", ("be",)),)]


def test_big_endian_packets_become_little_endian_keeping_comments(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.pcapng", big_endian_file([(BASE + 7, b"abcde", "hello")]))
    merge_files([path], tmp_path / "out.pcapng")
    blocks = decode((tmp_path / "out.pcapng").read_bytes())
    (idb,) = [b for b in blocks if isinstance(b, InterfaceDescription)]
    assert (idb.name, idb.tsresol) == ("e.pcapng:be0", NS)
    assert b"\x08\x00\x08\x00" + struct.pack("<Q", 10**9) in idb.raw  # if_speed, swapped
    packets = [b for b in blocks if isinstance(b, EnhancedPacket)]
    assert packets == [EnhancedPacket(0, BASE + 7, 5, 5, b"abcde", comments=("hello",))]


def test_simple_packets_take_the_previous_packets_time(tmp_path: Path) -> None:
    spb = struct.pack("<III", SPB, 16 + 60, 60) + frame(9) + struct.pack("<I", 16 + 60)
    data = pcapng([("s", 6)], [(0, BASE + 5000, frame(1), 60, None)], middle=spb)
    first_spb = pcapng([("t", 6)], [], tail=spb)
    paths = [_write(tmp_path / "s.pcapng", data), _write(tmp_path / "t.pcapng", first_spb)]
    result = merge_files(paths, tmp_path / "out.pcapng")
    assert result.packets == 3
    blocks = decode((tmp_path / "out.pcapng").read_bytes())
    packets = [b for b in blocks if isinstance(b, EnhancedPacket)]
    assert [(p.interface_id, p.timestamp, p.data) for p in packets] == [
        (1, 0, frame(9)),  # no packet before it: the epoch
        (0, (BASE + 5000) // 1000, frame(1)),
        (0, (BASE + 5000) // 1000, frame(9)),
    ]


def test_other_blocks_copied_or_skipped(tmp_path: Path) -> None:
    copyable = struct.pack("<III", 0x00000BAD, 20, 32473) + b"abcd" + struct.pack("<I", 20)
    private = struct.pack("<III", 0x40000BAD, 20, 32473) + b"wxyz" + struct.pack("<I", 20)
    dsb = struct.pack("<IIII", 0x0A, 24, 0x544C534B, 4) + b"keys" + struct.pack("<I", 24)
    data = pcapng([("o", 9)], [(0, BASE, frame(1), 60, None)], middle=copyable + private + dsb)
    result = merge_files([_write(tmp_path / "o.pcapng", data)], tmp_path / "out.pcapng")
    assert result.skipped_blocks == 1
    out = (tmp_path / "out.pcapng").read_bytes()
    assert copyable in out and dsb in out and private not in out


def test_the_output_may_be_an_input(tmp_path: Path) -> None:
    paths = simple_inputs(tmp_path, count=2)
    merge_files(paths, tmp_path / "reference.pcapng")
    merge_files(paths, paths[0])
    assert paths[0].read_bytes() == (tmp_path / "reference.pcapng").read_bytes()


def test_a_device_is_written_in_place(tmp_path: Path) -> None:
    result = merge_files(simple_inputs(tmp_path, count=2), os.devnull)
    assert result.packets == 100
    assert os.path.exists(os.devnull)


def test_new_files_get_the_usual_mode(tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    merge_files(simple_inputs(tmp_path, count=1), out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


class Watched:
    """An engine (``make``: either implementation) that notes what waits in it at each pop,
    and after each add."""

    def __init__(self, make: FileMergeFactory, at_pop: list[int], at_add: list[int]) -> None:
        self.make = make
        self.at_pop = at_pop
        self.at_add = at_add

    def __call__(self, sources: int, max_buffered: int, tie_run_cap: int) -> FileMerge:
        engine = self.make(sources, max_buffered, tie_run_cap)
        at_pop, at_add = self.at_pop, self.at_add

        class Watching:
            def __getattr__(self, name: str) -> object:
                return getattr(engine, name)

            def pop(self) -> bytes:
                at_pop.append(engine.waiting)
                return engine.pop()

            def add_run(self, *args: Any) -> int:
                taken = engine.add_run(*args)
                if taken:
                    at_add.append(engine.waiting)
                return taken

        return Watching()  # type: ignore[return-value]


ENGINES = [
    pytest.param(PureFileMerge, id="pure"),
    pytest.param(
        CompiledFileMerge, id="compiled",
        marks=pytest.mark.skipif(_accel.walk is None, reason="the compiled walker is off"),
    ),
]  # fmt: skip


@pytest.mark.parametrize("make", ENGINES)
def test_memory_stays_bounded_by_the_reads_not_the_files(
    tmp_path: Path, make: FileMergeFactory
) -> None:
    """Read from the input holding the others back: at most a read or two per input waits."""
    peaks: list[int] = []
    # A dense and a sparse input over the same 6 ms: read in turn, the sparse one would run
    # ahead and pile up most of its 1000 packets; read lowest first, neither does.
    dense = [(0, BASE + i * 1000, frame(i), 60, None) for i in range(6000)]
    sparse = [(0, BASE + i * 6000 + 500, frame(i), 60, None) for i in range(1000)]
    paths = [
        _write(tmp_path / "dense.pcapng", pcapng([("d", 9)], dense)),
        _write(tmp_path / "sparse.pcapng", pcapng([("s", 9)], sparse)),
    ]
    chunk = 4096  # at most 4096 / 92 bytes per EPB = 44 packets per read
    result = merge_files(
        paths, tmp_path / "out.pcapng", chunk_size=chunk, engine=Watched(make, peaks, [])
    )
    assert result.packets == 7000 and result.reordered == 0
    assert 0 < max(peaks) <= 2 * 2 * (chunk // 92 + 1)


def test_if_tsoffset_is_kept_and_ordered_by(tmp_path: Path) -> None:
    body = struct.pack("<HHI", 1, 0, 0) + b"".join(
        struct.pack("<HH", code, len(value)) + value + bytes(-len(value) & 3)
        for code, value in ((2, b"off"), (9, b"\x09"), (14, struct.pack("<q", 100)), (0, b""))
    )
    idb = struct.pack("<II", IDB, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    shifted = (
        encode_section_header()
        + idb
        + encode_enhanced_packet(interface_id=0, timestamp=5 * NS, data=frame(1))
    )
    plain = pcapng([("plain", 9)], [(0, 50 * NS, frame(2), 60, None)])
    paths = [_write(tmp_path / "off.pcapng", shifted), _write(tmp_path / "p.pcapng", plain)]
    merge_files(paths, tmp_path / "out.pcapng")
    blocks = decode((tmp_path / "out.pcapng").read_bytes())
    packets = [b for b in blocks if isinstance(b, EnhancedPacket)]
    assert [(p.interface_id, p.timestamp) for p in packets] == [(1, 50 * NS), (0, 5 * NS)]
    (off, _) = [b for b in blocks if isinstance(b, InterfaceDescription)]
    assert b"\x0e\x00\x08\x00" + struct.pack("<q", 100) in off.raw


def test_an_existing_output_keeps_its_mode_and_a_link_its_target(tmp_path: Path) -> None:
    paths = simple_inputs(tmp_path, count=2)
    real = _write(tmp_path / "real.pcapng", b"old")
    real.chmod(0o640)
    link = tmp_path / "link.pcapng"
    link.symlink_to(real.name)
    merge_files(paths, link)
    assert link.is_symlink() and link.resolve() == real
    assert real.stat().st_mode & 0o777 == 0o640
    assert len(packets_in(real.read_bytes())) == 100


def test_thousands_of_packets_of_both_resolutions_across_a_high_word_change(
    tmp_path: Path,
) -> None:
    """Sort keys on every path: nanosecond and microsecond inputs over a change of the 32-bit
    high timestamp word, and an input 200 days later (beyond exact float keys)."""
    import random

    rng = random.Random(7)
    start_us = ((BASE >> 32) + 1 << 32) // 1000 - 3000  # 3 ms before the high word changes
    rows: list[list[tuple[int, int, bytes, int, None]]] = [[], []]
    us = start_us
    for i in range(6000):
        us += rng.randrange(1, 4)
        rows[rng.randrange(2)].append((0, us * 1000, frame(i, 60 + i % 41), 60 + i % 41, None))
    late = [(0, (start_us + 200 * 86_400_000_000 + i) * 1000, frame(i), 60, None) for i in range(9)]
    paths = [
        _write(tmp_path / "ns.pcapng", pcapng([("n", 9)], rows[0])),
        _write(tmp_path / "us.pcapng", pcapng([("u", 6)], rows[1])),
        _write(tmp_path / "late.pcapng", pcapng([("l", 9)], late)),
    ]
    expected = sorted(ns for _, ns, _, _, _ in [*rows[0], *rows[1], *late])
    for chunk_size in (None, 4096):
        out = tmp_path / f"out{chunk_size}.pcapng"
        result = merge_files(paths, out, chunk_size=chunk_size)
        assert (result.packets, result.reordered) == (6009, 0)
        assert [ns for ns, _, _ in packets_in(out.read_bytes())] == expected


def test_equal_timestamps_split_across_reads_still_go_out_later_input_first(
    tmp_path: Path,
) -> None:
    """However the reads cut a run of equal timestamps, the later input's packets of that
    time all go out before the earlier input's (mergecap's order)."""
    rows_a = [(0, BASE + i * 1000, frame(i), 60, None) for i in range(20)]
    rows_b = [(0, BASE + (i // 3) * 1000, frame(100 + i), 60, None) for i in range(30)]
    paths = [
        _write(tmp_path / "a.pcapng", pcapng([("a", 9)], rows_a)),
        _write(tmp_path / "b.pcapng", pcapng([("b", 6)], rows_b)),
    ]
    expected = []
    for t in range(20):
        expected += [frame(100 + i) for i in range(30) if i // 3 == t]  # b: the later input
        expected.append(frame(t))
    for chunk_size in [None, *range(64, 700, 4)]:
        out = tmp_path / "out.pcapng"
        merge_files(paths, out, chunk_size=chunk_size)
        assert [data for _, _, data in packets_in(out.read_bytes())] == expected, chunk_size


@pytest.mark.parametrize("make", ENGINES)
def test_a_long_run_of_one_timestamp_is_not_held_back_whole(
    tmp_path: Path, make: FileMergeFactory
) -> None:
    same = [(0, BASE, frame(i), 60, None) for i in range(40)]
    later = [(0, BASE + 1, frame(100 + i), 60, None) for i in range(3)]
    paths = [
        _write(tmp_path / "same.pcapng", pcapng([("s", 9)], same)),
        _write(tmp_path / "later.pcapng", pcapng([("l", 9)], later)),
    ]
    peaks: list[int] = []
    result = merge_files(
        paths, tmp_path / "out.pcapng", chunk_size=256, engine=Watched(make, [], peaks),
        tie_run_cap=5,
    )
    assert result.packets == 43
    data = [d for _, _, d in packets_in((tmp_path / "out.pcapng").read_bytes())]
    assert data == [frame(i) for i in range(40)] + [frame(100 + i) for i in range(3)]
    assert sum(1 for waiting in peaks if waiting) > 3  # in the merge as it came, not held


@pytest.mark.parametrize("make", ENGINES)
def test_many_inputs_pop_every_few_reads_in_order_and_bounded(
    tmp_path: Path, make: FileMergeFactory
) -> None:
    """With 12 inputs a pop follows every 3 reads: equal timestamps still go out later input
    first, and what waits stays within two reads per input plus the reads between pops."""
    peaks: list[int] = []
    inputs = 12
    rows = [
        [(0, BASE + (i // (n + 1)) * 1000, frame(1000 * n + i), 60, None) for i in range(300)]
        for n in range(inputs)
    ]  # input n: runs of n + 1 packets of one time; every input has packets of most times
    paths = [
        _write(tmp_path / f"in{n:02d}.pcapng", pcapng([(f"i{n}", 9 if n % 2 else 6)], row))
        for n, row in enumerate(rows)
    ]
    order = sorted(
        ((ns, -n, i) for n, row in enumerate(rows) for i, (_, ns, _, _, _) in enumerate(row))
    )  # by time, then later input first, then file order
    expected = [frame(1000 * -m + i) for _, m, i in order]
    for chunk in (512, 1000, 4096):
        peaks.clear()
        out = tmp_path / "out.pcapng"
        result = merge_files(paths, out, chunk_size=chunk, engine=Watched(make, peaks, []))
        assert result.packets == 3600
        assert [data for _, _, data in packets_in(out.read_bytes())] == expected, chunk
        per_read = chunk // 92 + 1
        assert peaks and max(peaks) <= inputs * 2 * per_read + 3 * per_read, chunk
