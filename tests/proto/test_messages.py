"""The wire format: every message round-trips, the JSON and the data header cannot drift, every
limit holds at its edge, and every kind of bad input is a RemoteProtocolError naming the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pcapd.errors import LocalProtocolError, RemoteProtocolError
from pcapd.proto import (
    MAX_BINARY_MESSAGE,
    MAX_TEXT_MESSAGE,
    MESSAGE_TYPES,
    Absent,
    AgentTarget,
    BoshTarget,
    CaptureLimits,
    CaptureList,
    CaptureOptions,
    CfTarget,
    Counters,
    Data,
    DeviceList,
    Download,
    End,
    Error,
    GetDownload,
    Hello,
    ListCaptures,
    ListDevices,
    ListRecordings,
    LocalTarget,
    Message,
    Notice,
    Record,
    Recording,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    RingStatus,
    Source,
    SourceDevices,
    SourceStatistics,
    Start,
    Started,
    Statistics,
    Status,
    StatusReply,
    Stop,
    StoredCapture,
    Token,
    Trigger,
    Triggered,
    TriggerFired,
    Welcome,
    decode_binary,
    decode_text,
    encode,
    encode_data,
    type_code,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
T_NS = 1_764_240_000_000_000_000

FIRED = TriggerFired(number=1, at=T_NS, window_start=T_NS - 600 * 10**9,
                     window_end=T_NS + 30 * 10**9, matches=2, complete=True)
RECORDER_EXAMPLES: list[Message] = [
    Record(target=CfTarget(app="my-app", instances=[0]),
           options=CaptureOptions(device="eth0", filter="port 443"),
           ring=RecordRing(keep=600.0, max_bytes=256 << 20, until=86400.0),
           trigger=Trigger(filter="tcp[tcpflags] & tcp-rst != 0", after=30.0, once=True)),
    Record(recording_id="r-1", target=AgentTarget(namespace="host", source="router/0"),
           options=CaptureOptions(device="eth0"),
           ring=RecordRing(keep=60.0, max_bytes=1 << 20, until=3600.0)),
    RecordingStarted(recording_id="r-1", sources=[Source(id=0, name="router/0:eth0")],
                     ring=RecordRing(keep=60.0, max_bytes=1 << 20, until=3600.0),
                     ends_at=1764243600.0,
                     absent=[Absent(name="router/1", reason="no agent", partial=True)]),
    RecordSave(recording_id="r-1", last=300.0, upload=True),
    RecordSave(recording_id="r-1", start=T_NS - 10**9, end=T_NS),
    RecordStop(recording_id="r-1"),
    ListRecordings(),
    ListRecordings(recording_ids=["r-1"], watch=True),
    RecordingList(recordings=[Recording(
        recording_id="r-1", target="bosh:cf/router", options=CaptureOptions(device="eth0"),
        ring=RecordRing(keep=60.0, max_bytes=1 << 20, until=3600.0),
        trigger=Trigger(filter="icmp"), started_at=1764240000.0, ends_at=1764243600.0,
        state="ended", end_reason="triggered", end_text="stopped after the first trigger",
        sources=[RingStatus(source=Source(id=0, name="router/0:eth0"), state="held",
                            packets=10, bytes=1280, first=T_NS - 10**9, last=T_NS,
                            captured=25, aged_out_time=15, kernel_dropped=1, triggers=[FIRED],
                            triggers_fired=1, triggers_suppressed=3)],
        absent=[Absent(name="router/1", reason="its agent restarted: the ring is lost")])]),
    Triggered(recording_id="r-1", source="router/0:eth0", trigger=FIRED, stopping=True),
]
EXAMPLES: list[Message] = [
    Hello(protocol=1, min_protocol=1, software="pcapd 0.1.0", role="client"),
    Welcome(protocol=1, min_protocol=1, software="pcapd 0.1.0", role="api", server_id="api/0"),
    Start(
        target=CfTarget(app="my-app", space="s-guid", instances=[0, 2], process_type="web"),
        options=CaptureOptions(device="eth0", filter="tcp port 443", snaplen=96),
        limits=CaptureLimits(max_duration=60.5, max_packets=1000, max_bytes=2**40),
        upload=True,
    ),
    Start(target=LocalTarget(netns=["ns1", "ns2"]), options=CaptureOptions(device="lo")),
    Start(
        target=BoshTarget(deployment="cf", groups=["router"], instances=["d55b"]),
        options=CaptureOptions(device="eth0"),
    ),
    Start(
        capture_id="c-1",
        target=AgentTarget(namespace="guid-1", app_guid="app-guid", source="my-app/2"),
        options=CaptureOptions(device="eth0", filter="udp"),
    ),
    Stop(),
    Stop(reason="client_gone"),
    Status(),
    StatusReply(
        healthy=True,
        draining=False,
        software="pcapd 0.1.0",
        protocol=1,
        min_protocol=1,
        server_id="router/d55b",
        captures=2,
        capture_ids=["a", "b"],
    ),
    Started(capture_id="c-1", sources=[Source(id=0, name="my-app/2:eth0", description="g")]),
    Notice(code="CONGESTED", text="dropped", origin="router/0", source=3, party="agent", count=7),
    Notice(code="LIMIT_REACHED", text="1 GiB reached", limit="max_bytes"),
    Statistics(
        sources=[SourceStatistics(source=0, state="capturing", packets=10, bytes=900, written=9)],
        final=True,
    ),
    End(reason="limit", text="max_packets", limit="max_packets", totals=Counters(packets=5)),
    Error(code="PERMISSION_DENIED", text="you may not see app my-app", origin="api/0"),
    Token(token="eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
    ListCaptures(),
    CaptureList(captures=[StoredCapture(capture_id="a1", started_at=1.0, expires_at=2.0)]),
    GetDownload(capture_id="a1"),
    Download(capture=StoredCapture(capture_id="a1", started_at=1.0, expires_at=2.0),
             url="https://pcap.example.com/downloads/a1?expires=2&token=x", url_expires_at=2.0),
    ListDevices(target=CfTarget(app="my-app", instances=[1])),
    ListDevices(target=AgentTarget(namespace="guid-1", app_guid="app-guid", source="my-app/1")),
    DeviceList(sources=[SourceDevices(origin="my-app/1", devices=["lo", "eth0"]),
                        SourceDevices(origin="my-app/2", problem="my-app/2 is CRASHED")]),
    *RECORDER_EXAMPLES,
]


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", EXAMPLES, ids=type_code)
def test_round_trip(msg: Message) -> None:
    text = encode(msg)
    assert decode_text(text) == msg
    assert decode_text(text.encode()) == msg
    assert decode_text(memoryview(text.encode())) == msg
    assert json.loads(text)["type"] == type_code(msg)


def test_exact_json_of_start() -> None:
    """The wire format, byte for byte: a change here is a protocol change (bump the level)."""
    assert encode(EXAMPLES[2]) == (
        '{"type":"start","target":{"kind":"cf","app":"my-app","space":"s-guid",'
        '"instances":[0,2]},"options":{"device":"eth0","filter":"tcp port 443","snaplen":96},'
        '"limits":{"max_duration":60.5,"max_packets":1000,"max_bytes":1099511627776},'
        '"upload":true}'
    )
    assert encode(Status()) == '{"type":"status"}'
    assert encode(Notice(code="CAPTURE_STOPPED", text="")) == (
        '{"type":"message","code":"CAPTURE_STOPPED","text":""}'
    )


def test_data_header_exact_bytes() -> None:
    wire = encode_data(0x0102030405060708, b"\xaa\xbb")
    assert wire == b"\x01\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\xaa\xbb"
    data = decode_binary(wire)
    assert data == Data(watermark=0x0102030405060708, payload=b"\xaa\xbb")
    assert isinstance(data.payload, memoryview)  # a view, not a copy
    heartbeat = decode_binary(encode_data(5))
    assert heartbeat.is_heartbeat and heartbeat.watermark == 5
    assert decode_binary(encode_data(2**64 - 1, memoryview(b"x"))).watermark == 2**64 - 1
    assert decode_binary(bytearray(encode_data(0, b"abcd"))).payload == b"abcd"


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"", "shorter than its 12-byte header"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "shorter than its 12-byte header"),
        (b"\x02" + bytes(11), "unknown data kind 0x02"),
        (b"\x00" + bytes(11), "unknown data kind 0x00"),
        (b"\x01\x80" + bytes(10), "unknown data flags 0x80"),
        (b"\x01\x00\x00\x01" + bytes(8), "reserved data header bytes"),
    ],
)
def test_bad_data_header(wire: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(words)):
        decode_binary(wire)


def test_binary_size_limit() -> None:
    payload = bytes(MAX_BINARY_MESSAGE - 12)
    assert len(decode_binary(encode_data(1, payload)).payload) == len(payload)
    with pytest.raises(LocalProtocolError, match="over the limit"):
        encode_data(1, payload + b"x")
    with pytest.raises(RemoteProtocolError, match=f"{MAX_BINARY_MESSAGE + 1} bytes is over"):
        decode_binary(encode_data(1, payload) + b"x")
    with pytest.raises(RemoteProtocolError, match="17 bytes is over the limit of 16"):
        decode_binary(encode_data(1, b"12345"), max_size=16)
    for bad in (-1, 2**64):
        with pytest.raises(LocalProtocolError, match="watermark"):
            encode_data(bad)


def test_text_size_limit() -> None:
    """Whitespace padding makes a valid message of any size: exactly the limit passes."""
    base = '{"type":"status"}'
    assert decode_text(base + " " * (MAX_TEXT_MESSAGE - len(base))) == Status()
    too_big = base + " " * (MAX_TEXT_MESSAGE - len(base) + 1)
    for wire in (too_big, too_big.encode()):
        with pytest.raises(RemoteProtocolError, match=f"over the limit of {MAX_TEXT_MESSAGE}"):
            decode_text(wire)
    # multi-byte characters count as bytes, not characters
    notice = '{"type":"message","code":"CONGESTED","text":"é"}'
    assert decode_text(notice, max_size=len(notice) + 1) == Notice(code="CONGESTED", text="é")
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        decode_text(notice, max_size=len(notice))
    with pytest.raises(LocalProtocolError, match="over the limit of 10 bytes"):
        encode(Status(), max_size=10)


def _start(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "start",
        "capture_id": "c1",
        "target": {"kind": "cf", "app": "a", "instances": [0]},
        "options": {"device": "eth0", "filter": "", "snaplen": 100},
        "limits": {"max_packets": 1, "max_duration": 1.0},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = doc
        for key in parents:
            node = node[key]
        node[leaf] = value
    return doc


MAX_INT = 2**63 - 1
# (changes to a valid start, value just inside, value just outside, field path in the error)
START_LIMITS = [
    ("options__filter", "x" * 8192, "x" * 8193, "$.options.filter"),
    ("options__device", "d" * 256, "d" * 257, "$.options.device"),
    ("options__device", "d", "", "$.options.device"),
    ("options__snaplen", 262144, 262145, "$.options.snaplen"),
    ("options__snaplen", 1, 0, "$.options.snaplen"),
    ("target__app", "a" * 256, "a" * 257, "$.target.app"),
    ("target__instances", list(range(1024)), list(range(1025)), "$.target.instances"),
    ("target__instances", [2**31 - 1], [2**31], "$.target.instances[0]"),
    ("target__instances", [0], [-1], "$.target.instances[0]"),
    ("limits__max_packets", MAX_INT, MAX_INT + 1, "$.limits.max_packets"),
    ("limits__max_packets", 0, -1, "$.limits.max_packets"),
    ("limits__max_bytes", MAX_INT, 2**64, "$.limits.max_bytes"),
    ("limits__max_duration", 1e9, 1.000001e9, "$.limits.max_duration"),
    ("limits__max_duration", 1e-9, 0, "$.limits.max_duration"),
    ("capture_id", "c" * 64, "c" * 65, "$.capture_id"),
    ("capture_id", "a.b_c-1", "../etc", "$.capture_id"),
    ("capture_id", "abc", "abc\n", "$.capture_id"),
    ("capture_id", "abc", "-abc", "$.capture_id"),
]


@pytest.mark.parametrize(("path", "inside", "outside", "where"), START_LIMITS)
def test_start_limits(path: str, inside: Any, outside: Any, where: str) -> None:
    assert isinstance(decode_text(json.dumps(_start(**{path: inside}))), Start)
    with pytest.raises(RemoteProtocolError, match=re.escape(f"at `{where}`")):
        decode_text(json.dumps(_start(**{path: outside})))


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"type": "message", "code": "CONGESTED", "text": "t" * 4097}, "$.text"),
        ({"type": "message", "code": "CONGESTED", "text": "", "origin": "o" * 257}, "$.origin"),
        (
            {"type": "started", "capture_id": "c", "sources": [{"id": 2**32, "name": "n"}]},
            "$.sources[0].id",
        ),
        (
            {
                "type": "started",
                "capture_id": "c",
                "sources": [{"id": 0, "name": "n", "description": "d" * 257}],
            },
            "$.sources[0].description",
        ),
        (
            {
                "type": "hello",
                "protocol": 65536,
                "min_protocol": 1,
                "software": "s",
                "role": "client",
            },
            "$.protocol",
        ),
        (
            {
                "type": "start",
                "target": {"kind": "local", "netns": ["n" * 257]},
                "options": {"device": "lo"},
            },
            "$.target.netns[0]",
        ),
        (
            {
                "type": "start",
                "target": {"kind": "bosh", "deployment": "d", "groups": []},
                "options": {"device": "lo"},
            },
            "$.target.groups",
        ),
        (
            {"type": "statistics", "sources": [{"source": 0, "state": "capturing", "packets": -1}]},
            "$.sources[0].packets",
        ),
        (
            {
                "type": "status_reply",
                "healthy": True,
                "draining": False,
                "software": "s",
                "protocol": 1,
                "min_protocol": 1,
                "server_id": "x",
                "captures": 0,
                "capture_ids": ["c"] * 1025,
            },
            "$.capture_ids",
        ),
    ],
)
def test_other_limits(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(f"at `{where}`")):
        decode_text(json.dumps(doc))


# pcapd's own words, and the field it names: never the JSON library's wording, which changes
# between its releases (msgspec 0.23 started rejecting invalid UTF-8 itself, in its words).
NOT_JSON = "invalid message: not well-formed JSON ("
INVALID = "invalid message: "
NOT_UTF8 = "text message is not valid UTF-8 (at byte "


@pytest.mark.parametrize(
    ("wire", "words", "where"),
    [
        ("", NOT_JSON, None),
        ("{", NOT_JSON, None),
        ("{]", NOT_JSON, None),
        ('{"type":"status"} x', NOT_JSON, None),
        ("[]", INVALID, "$"),
        ("42", INVALID, "$"),
        ("{}", INVALID, "$"),
        ('{"type":"bogus"}', INVALID, "$.type"),
        ('{"type":7}', INVALID, "$.type"),
        ('{"type":"status","extra":1}', "extra", "$"),
        ('{"type":"stop","reason":"bored"}', INVALID, "$.reason"),
        ('{"type":"message","code":"NOPE","text":""}', INVALID, "$.code"),
        (
            '{"type":"start","target":{"kind":"cf","app":"a"},"options":{"device":"e",'
            '"snaplength":5}}',
            "snaplength",
            "$.options",
        ),
        (
            '{"type":"start","target":{"kind":"cf","app":"a"},"options":{"device":"e",'
            '"snaplen":"5"}}',
            INVALID,
            "$.options.snaplen",
        ),
        (
            '{"type":"start","target":{"kind":"cf","app":"a"},"options":{"device":"e",'
            '"snaplen":true}}',
            INVALID,
            "$.options.snaplen",
        ),
        (
            '{"type":"start","target":{"kind":"mars"},"options":{"device":"e"}}',
            INVALID,
            "$.target.kind",
        ),
        (
            '{"type":"start","target":{"kind":"cf"},"options":{"device":"e"}}',
            "app",
            "$.target",
        ),
        (
            '{"type":"start","target":{"kind":"cf","app":"a"},"options":{"device":"e"},'
            '"limits":{"max_duration":NaN}}',
            NOT_JSON,
            None,
        ),
        (
            '{"type":"start","target":{"kind":"cf","app":"a"},"options":{"device":"e"},'
            '"limits":{"max_duration":1e999}}',
            INVALID,
            "$.limits.max_duration",
        ),
        ('{"type":"message","code":"CONGESTED","text":"\\ud800"}', NOT_JSON, None),
        ('{"type":"message","code":"CONGESTED","text":"\ud800"}', "lone surrogate", None),
        (b'{"type":"message","code":"CONGESTED","text":"\xff"}', NOT_UTF8 + "45)", None),
        (b'{"type":"message","code":"CONGESTED","text":"\xed\xa0\x80"}', NOT_UTF8 + "45)", None),
        (b"\xef\xbb\xbf{}", NOT_JSON, None),
        ("[" * 100_000, INVALID, "$"),
        ('{"type":"error","code":"INVALID_REQUEST","text":' + "[" * 100_000, INVALID, "$.text"),
    ],
)
def test_malformed_input_is_a_remote_error(
    wire: str | bytes, words: str, where: str | None
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_text(wire)
    assert words in str(info.value)
    if where is not None:
        assert str(info.value).endswith(f" - at `{where}`"), str(info.value)
    assert info.value.code == "INVALID_REQUEST"


def test_peer_values_are_clipped_in_errors() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_text('{"type":"' + "x" * 100_000 + '\\n"}')
    assert len(str(info.value)) < 300
    assert str(info.value).endswith("- at `$.type`")
    with pytest.raises(RemoteProtocolError) as info:
        decode_text('{"type":"a\\nb"}')
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (Start(target=CfTarget(app="a"), options=CaptureOptions(device="")), "$.options.device"),
        (Notice(code="CONGESTED", text="t" * 4097), "$.text"),
        (Started(capture_id="../x", sources=[]), "$.capture_id"),
        (Notice(code="NOPE", text=""), "$.code"),  # type: ignore[arg-type]
        (
            Start(
                target=CfTarget(app="a"),
                options=CaptureOptions(device="e"),
                limits=CaptureLimits(max_duration=float("inf")),
            ),
            "does not survive",
        ),
        (
            Start(
                target=CfTarget(app="a", instances=(1,)),  # type: ignore[arg-type]
                options=CaptureOptions(device="e"),
            ),
            "does not survive",
        ),
        (Notice(code="CONGESTED", text="x", count=2**64), "$.count"),
        (Notice(code="CONGESTED", text="\ud800"), "cannot encode"),
    ],
)
def test_encode_refuses_what_a_peer_would_refuse(msg: Message, words: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(words)):
        encode(msg)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(LocalProtocolError, match="not a protocol message"):
        encode(CaptureOptions(device="e"))  # type: ignore[arg-type]


def test_docs_examples_are_valid_and_complete() -> None:
    """Every ```json block in docs/protocol.md decodes; every message type has one."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.S)
    seen = {type_code(decode_text(block)) for block in blocks}
    assert seen == {type_code(t) for t in MESSAGE_TYPES}
