"""The trigger filter: libpcap's interpreter over a batch of EPBs, compiled and pure-Python
paths alike, with hostile programs and blocks refused."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from pcapd import _accel
from pcapd.agent.bpf import DLT_EN10MB, HandleError, compile_program
from pcapd.agent.matcher import Matcher
from pcapd.pcapng import encode_enhanced_packet


def frame(protocol: int, dport: int) -> bytes:
    """Ethernet + IPv4 + a UDP (17) or TCP (6) header to ``dport``."""
    ether = bytes(12) + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20, 0, 0, 64, protocol, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    l4 = struct.pack("!HH", 40000, dport) + bytes(16)
    return ether + ip + l4


def epb(ts: int, data: bytes, caplen: int | None = None) -> bytes:
    block = encode_enhanced_packet(interface_id=0, timestamp=ts, data=data[:caplen],
                                   original_length=len(data))
    return block


def program(expr: str) -> str:
    _, text = compile_program(expr, (), DLT_EN10MB, 65535, split=False)
    assert text is not None
    return text


@pytest.fixture(params=["compiled", "pure"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "compiled":
        if _accel.recorder is None:
            pytest.skip("the compiled trigger filter is not built or off")
    else:
        monkeypatch.setattr(_accel, "recorder", None)
    yield request.param


BATCH = b"".join([epb(1, frame(17, 53)), epb(2, frame(6, 443)), epb(3, frame(17, 9999)),
                  epb(4, frame(17, 53), caplen=30)])  # cut before the UDP ports


def test_the_matching_packets_timestamps(engine: str) -> None:
    assert Matcher(program("udp dst port 53")).matches(BATCH) == [1]
    assert Matcher(program("udp")).matches(BATCH) == [1, 3, 4]
    assert Matcher(program("tcp or udp")).matches(BATCH) == [1, 2, 3, 4]
    assert Matcher(program("icmp")).matches(BATCH) == []
    assert Matcher(program("udp")).matches(b"") == []


@pytest.mark.parametrize("bad", [BATCH[:-4], BATCH + b"\x00" * 4,
                                 b"\x05\x00\x00\x00" + BATCH[4:]])
def test_malformed_blocks_are_refused(engine: str, bad: bytes) -> None:
    with pytest.raises(HandleError, match="trigger filter"):
        Matcher(program("udp")).matches(bad)


@pytest.mark.parametrize(("text", "words"), [
    ("2,6 0 0 0,21 5 0 17", "not valid"),  # a jump past the end
    ("1,0 0 0 12", "does not end with a return"),
    ("2,2 0 0 16,6 0 0 0", "not valid"),  # scratch memory out of range
    ("2,52 0 0 0,6 0 0 0", "not valid"),  # division by a constant 0
    # What libpcap 1.10's bpf_validate lets through, and its interpreter then cannot run:
    ("2,33 0 0 0,6 0 0 0", "not valid"),  # LDX|W|ABS: bpf_filter abort()s
    ("2,14 0 0 0,14 0 0 0", "not valid"),  # RET|X: the same
    ("2,5 0 0 4294967295,6 0 0 0", "not valid"),  # "ja -1": 1 + k wraps to 0; loops for ever
    ("2,100 0 0 32,6 0 0 0", "not valid"),  # a constant shift by 32 (newer libpcap refuses it)
    ("2,96 0 0 3,22 0 0 0", "not valid"),  # scratch memory loaded unset: 1.10 reads its stack
    ("5,21 0 1 1,2 0 0 3,96 0 0 3,22 0 0 0,6 0 0 0", "not valid"),  # set on one path only
])
def test_hostile_programs_are_refused_before_they_run(engine: str, text: str,
                                                      words: str) -> None:
    with pytest.raises(HandleError, match=words):
        Matcher(text)


@pytest.mark.skipif(_accel.recorder is None, reason="the compiled trigger filter is not built")
@pytest.mark.parametrize("text", ["2,6 0 0 0,21 5 0 17", "1,0 0 0 12", "2,2 0 0 16,6 0 0 0",
                                  "2,33 0 0 0,6 0 0 0", "2,5 0 0 4294967295,6 0 0 0"])
def test_the_compiled_filter_validates_on_its_own(text: str) -> None:
    from pcapd.agent.bpf import program_bytes
    assert _accel.recorder is not None
    with pytest.raises(ValueError, match=r"not a valid BPF program|does not end with a return"):
        _accel.recorder.match_epbs(program_bytes(text), BATCH)
    with pytest.raises(ValueError, match="1 to 4096 instructions"):
        _accel.recorder.match_epbs(b"1234567", BATCH)
