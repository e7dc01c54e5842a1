"""Real readers and writers: Wireshark's tshark, capinfos and editcap against our bytes.

Marked ``tools``: tests/conftest.py skips them when a tool is missing, except under CI=true.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pcapd.pcapng import (
    EnhancedPacket,
    InterfaceDescription,
    PcapDecoder,
    PcapHeader,
    PcapRecord,
    sniff_format,
)
from tests.pcapng.pcapng_samples import INTERFACES, Packet, decode_all, sample_capture
from tests.readers import run_tool

pytestmark = pytest.mark.tools

run = run_tool


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, list[Packet]]:
    data, packets = sample_capture()
    path = tmp_path / "sample.pcapng"
    path.write_bytes(data)
    return path, packets


def epoch(ns: int) -> str:
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def test_capinfos_reads_every_block(sample: tuple[Path, list[Packet]]) -> None:
    path, packets = sample
    out = run("capinfos", "-S", path)
    assert "Number of packets:   6" in out
    assert "File timestamp precision:  nanoseconds (9)" in out
    assert "Capture application: pcapd-tests 0.1" in out
    assert "Number of interfaces in file: 2" in out
    for name, description in INTERFACES:
        assert f"Name = {name}\n" in out
        assert f"Description = {description}\n" in out
    assert out.count("Capture length = 64\n") == 2
    assert out.count("Time ticks per second = 1000000000\n") == 2
    assert out.count("Number of stat entries = 1\n") == 2  # our ISBs
    assert "Number of resolved IPv4 addresses in file: 1" in out  # our NRB
    assert "Number of resolved IPv6 addresses in file: 1" in out
    assert f"First packet time:   {epoch(packets[0].ts_ns)}\n" in out
    assert f"Last packet time:    {epoch(packets[-1].ts_ns)}\n" in out
    assert "Strict time order:   True" in out


def test_tshark_shows_names_lengths_timestamps_and_comment(
    sample: tuple[Path, list[Packet]],
) -> None:
    path, packets = sample
    out = run(
        "tshark", "-r", path, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.len",
        "-e", "frame.cap_len", "-e", "frame.time_epoch", "-e", "frame.comment",
    )  # fmt: skip
    names = [name for name, _ in INTERFACES]
    expected = [
        f"{names[p.interface_id]}\t{p.original_length}\t{len(p.data)}\t{epoch(p.ts_ns)}"
        f"\t{p.comment or ''}"
        for p in packets
    ]
    assert out.splitlines() == expected
    assert any(p.original_length > len(p.data) for p in packets)


def test_tshark_dissects_the_frames_without_complaint(sample: tuple[Path, list[Packet]]) -> None:
    path, packets = sample
    out = run(
        "tshark", "-r", path, "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
        "-T", "fields", "-e", "frame.protocols", "-e", "ip.checksum.status",
        "-e", "_ws.expert.severity",
    )  # fmt: skip
    lines = [line.split("\t") for line in out.splitlines()]
    assert len(lines) == len(packets)
    for protocols, ip_checksum, severity in lines:
        assert protocols == "eth:ethertype:ip:udp:data"
        assert ip_checksum == "1"  # good
        assert severity in ("", "1048576")  # nothing above a comment
    assert run("tshark", "-r", path).count("UDP") == len(packets)


def test_editcap_pcapng_output_reads_back(
    sample: tuple[Path, list[Packet]], tmp_path: Path
) -> None:
    path, packets = sample
    out = tmp_path / "editcap.pcapng"
    run("editcap", "-F", "pcapng", path, out)
    data = out.read_bytes()
    assert sniff_format(data) == "pcapng"
    blocks = decode_all([data])
    names = [b.name for b in blocks if isinstance(b, InterfaceDescription)]
    assert names == [name for name, _ in INTERFACES]
    assert [b for b in blocks if isinstance(b, EnhancedPacket)] == [
        EnhancedPacket(
            p.interface_id, p.ts_ns, len(p.data), p.original_length, p.data,
            comments=() if p.comment is None else (p.comment,),
        )
        for p in packets
    ]  # fmt: skip


@pytest.mark.parametrize(("file_type", "tsresol"), [("nsecpcap", 10**9), ("pcap", 10**6)])
def test_editcap_legacy_output_reads_back(
    sample: tuple[Path, list[Packet]], tmp_path: Path, file_type: str, tsresol: int
) -> None:
    path, packets = sample
    out = tmp_path / f"editcap.{file_type}"
    run("editcap", "-F", file_type, path, out)
    data = out.read_bytes()
    assert sniff_format(data) == "pcap"
    dec = PcapDecoder()
    dec.receive_data(data)
    dec.receive_data(b"")
    items = []
    while (item := dec.next_record()) is not None:
        items.append(item)
    header, records = items[0], items[1:]
    assert isinstance(header, PcapHeader)
    assert (header.link_type, header.tsresol, header.big_endian) == (1, tsresol, False)
    assert len(records) == len(packets)
    for record, p in zip(records, packets, strict=True):
        assert isinstance(record, PcapRecord)
        # editcap truncates nanoseconds to microseconds for classic pcap
        assert record.timestamp == p.ts_ns * tsresol // 10**9
        assert (record.captured_length, record.original_length) == (len(p.data), p.original_length)
        assert record.data == p.data
