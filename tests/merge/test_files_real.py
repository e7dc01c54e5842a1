"""``pcapd merge`` on real capture files written by other tools, checked against mergecap/tshark.

The files are the interoperability corpus next to the checkout (``../shared/corpus/interop``,
see its SOURCES.md); they are read where they are, never copied into the project. Cut and
damaged variants are made from them in the test's temporary directory.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.interop import corpus, needs_corpus
from tests.readers import run_tool

PCAPD = Path(os.environ.get("PCAPD", Path(__file__).parents[2] / ".venv" / "bin" / "pcapd"))
EXIT_DAMAGED_INPUT = 4


pytestmark = needs_corpus


def pcapd_merge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PCAPD), "merge", "--force", *[str(arg) for arg in args]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def mergecap(output: Path, *inputs: Path) -> None:
    """mergecap, which may warn about (and stop at) damage but must write ``output``."""
    subprocess.run(
        ["mergecap", "-w", str(output), *map(str, inputs)], capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert output.exists()


def packets(path: Path) -> list[tuple[str, ...]]:
    """Per packet, in order: time, lengths, a hash of the bytes, comments (tshark's view)."""
    out = run_tool(
        "tshark", "-o", "frame.generate_md5_hash:TRUE", "-r", path, "-T", "fields",
        "-E", "separator=\t", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len",
        "-e", "frame.md5_hash", "-e", "frame.comment",
    )  # fmt: skip
    return [tuple(line.split("\t")) for line in out.splitlines()]


def interface_names(path: Path) -> set[str]:
    out = run_tool("tshark", "-r", path, "-T", "fields", "-e", "frame.interface_name")
    return set(out.splitlines())


def merged_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("merged "), result.stderr


@pytest.mark.parametrize(
    "name", ["python-pcapng/test006-fixed.ntar", "scapy/pfcp.pcap"], ids=["little", "big"]
)
@pytest.mark.tools
def test_obsolete_packet_blocks_are_merged_as_mergecap_merges_them(
    tmp_path: Path, name: str
) -> None:
    ours, theirs = tmp_path / "pcapd.pcapng", tmp_path / "mergecap.pcapng"
    result = pcapd_merge("-w", ours, corpus(name))
    merged_ok(result)
    mergecap(theirs, corpus(name))
    expected = packets(theirs)
    assert expected  # the file holds packets, all in Packet Blocks
    assert packets(ours) == expected
    assert "skipped" not in result.stderr


CUT_CASES = [
    ("pcap-parser/wireshark_samples-test.pcapng", (100_003, 577_777, 1_156_000)),
    ("pcapplusplus/many_interfaces-1.pcapng", (3_001, 10_000)),
    ("tcpdump/mptcp-v0.pcap", (30, 20_001, 39_390)),
    ("pcapng-test-generator/be/test009.pcapng", (700,)),
]


@pytest.mark.parametrize(("name", "cuts"), CUT_CASES, ids=[c[0] for c in CUT_CASES])
@pytest.mark.tools
def test_a_file_cut_short_keeps_every_packet_before_the_cut(
    tmp_path: Path, name: str, cuts: tuple[int, ...]
) -> None:
    whole = corpus(name).read_bytes()
    for cut in cuts:
        damaged = tmp_path / f"cut-{cut}-{Path(name).name}"
        damaged.write_bytes(whole[:cut])
        ours, theirs = tmp_path / "pcapd.pcapng", tmp_path / "mergecap.pcapng"
        result = pcapd_merge("-w", ours, damaged)
        assert result.returncode == EXIT_DAMAGED_INPUT, result.stderr
        warning, summary = result.stderr.splitlines()
        assert warning.startswith(f"pcapd: warning: {damaged}: unreadable from byte offset ")
        assert "input ends" in warning
        offset = int(warning.split("byte offset ")[1].split()[0])
        assert offset <= cut
        mergecap(theirs, damaged)
        expected = packets(theirs)
        assert packets(ours) == expected
        assert f"merged {len(expected)} packets" in summary
        assert len(expected) < len(packets(corpus(name)))


@pytest.mark.tools
def test_a_broken_block_in_the_middle_keeps_the_packets_before_it_and_the_other_inputs(
    tmp_path: Path,
) -> None:
    name = "pcap-parser/wireshark_samples-test.pcapng"
    data = bytearray(corpus(name).read_bytes())
    # Find the 1000th block and break its trailing length.
    pos, count = 0, 0
    while count < 1000:
        pos += struct.unpack_from("<I", data, pos + 4)[0]
        count += 1
    total = struct.unpack_from("<I", data, pos + 4)[0]
    data[pos + total - 4 : pos + total] = b"\xff\xff\xff\xff"
    damaged = tmp_path / "damaged.pcapng"
    damaged.write_bytes(data)
    other = corpus("pcapng-test-generator/le/test001.pcapng")
    ours, theirs = tmp_path / "pcapd.pcapng", tmp_path / "mergecap.pcapng"
    result = pcapd_merge("-w", ours, other, damaged)
    assert result.returncode == EXIT_DAMAGED_INPUT
    warning, _ = result.stderr.splitlines()
    assert warning == (
        f"pcapd: warning: {damaged}: unreadable from byte offset {pos + total - 4} "
        f"(trailing block length 4294967295 differs from the leading {total}): "
        f"merged the {len(packets(merged_by_mergecap(tmp_path, damaged)))} packets before it"
    )
    mergecap(theirs, other, damaged)
    assert packets(ours) == packets(theirs)


def merged_by_mergecap(tmp_path: Path, damaged: Path) -> Path:
    out = tmp_path / "alone.pcapng"
    mergecap(out, damaged)
    return out


@pytest.mark.tools
def test_a_section_of_an_unknown_version_is_skipped_and_the_others_kept(tmp_path: Path) -> None:
    name = corpus("gopacket/le/test901.pcapng")  # sections 1.0 (0..479), 2.0, 1.0 (988..)
    data = name.read_bytes()
    assert struct.unpack_from("<HH", data, 480 + 12) == (2, 0)
    without = tmp_path / "sections-1-and-3.pcapng"
    without.write_bytes(data[:480] + data[988:])
    ours, theirs = tmp_path / "pcapd.pcapng", tmp_path / "mergecap.pcapng"
    result = pcapd_merge("-w", ours, name)
    assert result.returncode == 0, result.stderr
    warning, summary = result.stderr.splitlines()
    assert warning == (
        f"pcapd: warning: {name}: the section at byte offset 480 is pcapng version 2.0, "
        "which pcapd cannot read: skipped its 3 blocks"
    )
    assert summary.startswith("merged 2 packets")
    mergecap(theirs, without)
    assert packets(ours) == packets(theirs)


def custom_blocks(data: bytes) -> list[bytes]:
    """The copyable custom blocks (0x00000BAD) of a little-endian pcapng, whole."""
    found, pos = [], 0
    while pos + 12 <= len(data):
        kind, total = struct.unpack_from("<II", data, pos)
        if kind == 0x0BAD:
            found.append(data[pos : pos + total])
        pos += total
    return found


@pytest.mark.tools
def test_copyable_custom_blocks_of_big_endian_sections_are_copied(tmp_path: Path) -> None:
    big, little = tmp_path / "be.pcapng", tmp_path / "le.pcapng"
    merged_ok(pcapd_merge("-w", big, corpus("pcapng-test-generator/be/test102.pcapng")))
    merged_ok(pcapd_merge("-w", little, corpus("pcapng-test-generator/le/test102.pcapng")))
    expected = custom_blocks(little.read_bytes())
    assert len(expected) == 1  # the generator wrote the same block in both byte orders
    assert custom_blocks(big.read_bytes()) == expected
    assert packets(big) == packets(little)


@pytest.mark.tools
def test_inputs_with_the_same_file_name_get_distinct_interface_names(tmp_path: Path) -> None:
    le, be = (corpus(f"pcapng-test-generator/{order}/test001.pcapng") for order in ("le", "be"))
    out = tmp_path / "out.pcapng"
    merged_ok(pcapd_merge("-w", out, le, be))
    assert interface_names(out) == {
        "le/test001.pcapng:silly ethernet interface",
        "be/test001.pcapng:silly ethernet interface",
    }
    merged_ok(pcapd_merge("-w", out, le, le))
    assert interface_names(out) == {
        "test001.pcapng (1):silly ethernet interface",
        "test001.pcapng (2):silly ethernet interface",
    }


def test_a_gzip_compressed_input_says_so(tmp_path: Path) -> None:
    name = corpus("scapy/macos.pcapng.gz")
    out = tmp_path / "out.pcapng"
    result = pcapd_merge("-w", out, corpus("scapy/macos.pcapng"), name)
    assert result.returncode == 1
    assert result.stderr == f"pcapd: error: {name}: gzip-compressed: decompress first\n"
    assert not out.exists()
