"""Hypothesis properties of the codec and the session.

Strategies are derived from the message types themselves (``msgspec.inspect``), constraints
included, so a field added to a message is fuzzed without touching this file.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import msgspec.inspect as mi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd.errors import LocalProtocolError, RemoteProtocolError
from pcapd.proto import (
    MESSAGE_TYPES,
    AgentTarget,
    CaptureOptions,
    CfTarget,
    Data,
    End,
    Error,
    InitiatorSession,
    ListRecordings,
    Message,
    Notice,
    Record,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    ResponderSession,
    Source,
    SourceStatistics,
    Start,
    Started,
    State,
    Statistics,
    Status,
    StatusReply,
    Stop,
    Triggered,
    TriggerFired,
    decode_binary,
    decode_text,
    encode,
    encode_data,
)

SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
ANY_MESSAGE = "message"


def strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of a msgspec type that satisfy its constraints (lengths capped for speed)."""
    if isinstance(t, mi.StructType):
        return _struct(t.cls)
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        return st.integers(min_value=low, max_value=t.le)
    if isinstance(t, mi.FloatType):
        return st.floats(
            min_value=t.ge if t.ge is not None else t.gt,
            max_value=t.le,
            exclude_min=t.gt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.StrType):
        if t.pattern is not None:
            return st.from_regex(t.pattern)
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 30, 30))
    if isinstance(t, mi.ListType):
        return st.lists(
            strategy(t.item_type), min_size=t.min_length or 0, max_size=min(t.max_length or 4, 4)
        )
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(strategy(member) for member in t.types))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    raise NotImplementedError(t)


@cache
def _struct(cls: type) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.name: strategy(f.type) for f in info.fields if f.required}
    optional = {f.name: strategy(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


messages: st.SearchStrategy[Message] = st.one_of(*(_struct(t) for t in MESSAGE_TYPES))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@SETTINGS
@given(messages)
def test_every_valid_message_round_trips(msg: Message) -> None:
    assert decode_text(encode(msg)) == msg


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_decodes_or_raises_remote_error(data: bytes | str) -> None:
    try:
        assert isinstance(decode_text(data), MESSAGE_TYPES)
    except RemoteProtocolError:
        pass
    if isinstance(data, bytes):
        try:
            assert isinstance(decode_binary(data), Data)
        except RemoteProtocolError:
            pass


@SETTINGS
@given(st.integers(0, 2**64 - 1), st.binary(max_size=100))
def test_data_round_trips(watermark: int, payload: bytes) -> None:
    assert decode_binary(encode_data(watermark, payload)) == Data(watermark, payload)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@SETTINGS
@given(messages, st.data())
def test_mutated_json_is_a_valid_message_or_a_remote_error(
    msg: Message, data: st.DataObject
) -> None:
    doc = json.loads(encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            doc = data.draw(json_values) if action == "replace" else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(json_values)
    wire = json.dumps(doc)
    try:
        decoded = decode_text(wire)
    except RemoteProtocolError:
        return
    assert decode_text(encode(decoded)) == decoded


@SETTINGS
@given(
    st.sampled_from(["client", "api"]),
    st.lists(st.binary(max_size=60) | messages, max_size=8),
    st.booleans(),
)
def test_arbitrary_input_to_a_session_raises_only_remote_errors(
    role: str, inputs: list[bytes | Message], initiator: bool
) -> None:
    session: InitiatorSession | ResponderSession = (
        InitiatorSession("client" if role == "client" else "api")
        if initiator
        else ResponderSession("api" if role == "client" else "agent")
    )
    for item in inputs:
        try:
            if isinstance(item, bytes):
                session.receive_binary(item)
            else:
                session.receive_text(encode(item))
        except RemoteProtocolError:
            assert session.state is State.ERROR


# --- two honest peers, any interleaving ------------------------------------------------------

CLIENT_START = Start(target=CfTarget(app="a"), options=CaptureOptions(device="eth0"))
AGENT_START = Start(
    capture_id="c9",
    target=AgentTarget(namespace="host", source="router/0"),
    options=CaptureOptions(device="eth0"),
)
REPLY = StatusReply(
    healthy=True,
    draining=False,
    software="s",
    protocol=1,
    min_protocol=1,
    server_id="api/0",
    captures=0,
)
STARTED = Started(capture_id="c9", sources=[Source(id=0, name="a/0:eth0")])
NOTICE = Notice(code="CONGESTED", text="t", party="agent", count=1)
STATS = Statistics(sources=[SourceStatistics(source=0, state="capturing")])
ERROR = Error(code="CONNECTION_ERROR", text="bye")
RING = RecordRing(keep=1.0, max_bytes=10, until=5.0)
CLIENT_RECORD = Record(target=CfTarget(app="a"), options=CaptureOptions(device="eth0"),
                       ring=RING)
AGENT_RECORD = Record(recording_id="r9", target=AgentTarget(namespace="host", source="router/0"),
                      options=CaptureOptions(device="eth0"), ring=RING)
RECORDING_STARTED = RecordingStarted(recording_id="r9", sources=[], ring=RING, ends_at=5.0)
TRIGGERED = Triggered(recording_id="r9", source="router/0:eth0",
                      trigger=TriggerFired(number=1, at=2, window_start=1, window_end=3))


def sendable(session: InitiatorSession | ResponderSession, pool: list[Any]) -> list[Any]:
    """The messages of ``pool`` the session would send now (probed on copies)."""
    allowed = []
    for msg in pool:
        try:
            copy.deepcopy(session).send(msg)
        except LocalProtocolError:
            continue
        allowed.append(msg)
    return allowed


@settings(deadline=None, max_examples=400)
@given(st.data())
def test_honest_peers_never_see_a_remote_error(data: st.DataObject) -> None:
    """Whatever each side's session lets it send, in any interleaving of the two directions,
    the other side accepts, unless it has already sent an error (then it closes anyway)."""
    to_agent = data.draw(st.booleans(), label="api→agent link?")
    i = InitiatorSession("api" if to_agent else "client")
    r = ResponderSession("agent" if to_agent else "api")
    start = AGENT_START if to_agent else CLIENT_START
    record = AGENT_RECORD if to_agent else CLIENT_RECORD
    queues: dict[str, list[str | bytes]] = {"to_r": [], "to_i": []}
    watermark = 0
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        up = [i.make_hello(), Status(), start, Stop(), record, RecordSave(recording_id="r9"),
              RecordStop(recording_id="r9"), ListRecordings(watch=to_agent)]
        down = [
            r.make_welcome("api/0"),
            REPLY,
            STARTED,
            NOTICE,
            STATS,
            End(reason="stopped"),
            Data(watermark=watermark + 1, payload=b"x"),
            Data(watermark=0),
            RECORDING_STARTED,
            RecordingList(recordings=[]),
            TRIGGERED,
        ]
        choices = {
            "up": sendable(i, up),
            "down": sendable(r, down),
            **{name: [None] for name, queue in queues.items() if queue},
        }
        if data.draw(st.integers(0, 30), label="error?") == 0:  # rare: an error ends everything
            choices = {
                side: sendable(session, [ERROR]) for side, session in (("up", i), ("down", r))
            }
        possible = sorted(name for name, options in choices.items() if options)
        if not possible:
            continue
        action = data.draw(st.sampled_from(possible))
        if action in ("up", "down"):
            sender, queue = (i, queues["to_r"]) if action == "up" else (r, queues["to_i"])
            msg = data.draw(st.sampled_from(choices[action]))
            queue.append(sender.send(msg))
            if isinstance(msg, Data) and msg.watermark:
                watermark = msg.watermark
            continue
        receiver = r if action == "to_r" else i
        wire = queues[action].pop(0)
        errored = receiver.state is State.ERROR
        try:
            if isinstance(wire, str):
                receiver.receive_text(wire)
            else:
                receiver.receive_binary(wire)
        except RemoteProtocolError:
            assert errored, (wire, receiver.state)
