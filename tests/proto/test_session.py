"""The per-link state machine: every transition of the spec table, allowed and refused, on both
links; the version handshake; the in-flight races a correct peer causes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import msgspec
import pytest

from pcapd.errors import LocalProtocolError, RemoteProtocolError
from pcapd.proto import (
    AgentTarget,
    CaptureList,
    CaptureOptions,
    CfTarget,
    Data,
    DeviceList,
    Download,
    End,
    Error,
    GetDownload,
    Hello,
    InitiatorSession,
    ListCaptures,
    ListDevices,
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
    SourceDevices,
    SourceStatistics,
    Start,
    Started,
    State,
    Statistics,
    Status,
    StatusReply,
    Stop,
    StoredCapture,
    Token,
    Triggered,
    TriggerFired,
    Welcome,
    encode,
    encode_data,
    type_code,
)

S = State


@dataclass(frozen=True)
class Link:
    initiator: Literal["client", "api"]
    responder: Literal["api", "agent"]

    def pair(self) -> tuple[InitiatorSession, ResponderSession]:
        return InitiatorSession(self.initiator), ResponderSession(self.responder)

    def start(self) -> Start:
        if self.responder == "agent":
            return Start(
                capture_id="c1",
                target=AgentTarget(namespace="host", source="router/0"),
                options=CaptureOptions(device="eth0"),
            )
        return Start(target=CfTarget(app="my-app"), options=CaptureOptions(device="eth0"))


LINKS = [Link("client", "api"), Link("api", "agent")]

STARTED = Started(capture_id="c1", sources=[Source(id=0, name="a/0:eth0")])
STATS = Statistics(sources=[SourceStatistics(source=0, state="capturing", packets=1)])
NOTICE = Notice(code="INSTANCE_UNAVAILABLE", text="a/1 is gone", origin="a/1")
END = End(reason="stopped")
REPLY = StatusReply(
    healthy=True,
    draining=False,
    software="x",
    protocol=1,
    min_protocol=1,
    server_id="s",
    captures=0,
)
ERROR = Error(code="INVALID_REQUEST", text="no")
DATA = Data(watermark=10, payload=b"blocks")

# The spec, written out independently of the implementation's tables: which messages each
# side may send in each state (along the ordinary path that led there: no status pending,
# started already received in STOPPING).
UP_ALLOWED: dict[State, set[str]] = {
    S.IDLE: {"hello"},
    S.HELLO: set(),
    S.READY: {"status", "start"},
    S.STARTING: {"stop"},
    S.CAPTURING: {"stop"},
    S.STOPPING: set(),
    S.DONE: set(),
    S.ERROR: set(),
}
DOWN_ALLOWED: dict[State, set[str]] = {
    S.IDLE: set(),
    S.HELLO: {"welcome"},
    S.READY: set(),
    S.STARTING: {"message", "started", "end"},
    S.CAPTURING: {"message", "statistics", "end", "data"},
    S.STOPPING: {"message", "statistics", "end", "data"},
    S.DONE: set(),
    S.ERROR: set(),
}
NEXT: dict[tuple[State, str], State] = {
    (S.IDLE, "hello"): S.HELLO,
    (S.HELLO, "welcome"): S.READY,
    (S.READY, "status"): S.READY,
    (S.READY, "start"): S.STARTING,
    (S.STARTING, "stop"): S.STOPPING,
    (S.CAPTURING, "stop"): S.STOPPING,
    (S.STARTING, "started"): S.CAPTURING,
    (S.STARTING, "end"): S.DONE,
    (S.CAPTURING, "end"): S.DONE,
    (S.STOPPING, "end"): S.DONE,
    (S.STARTING, "error"): S.ERROR,
}


def upstream(link: Link, i: InitiatorSession) -> dict[str, Message]:
    return {"hello": i.make_hello(), "status": Status(), "start": link.start(), "stop": Stop()}


def downstream(r: ResponderSession) -> dict[str, Message | Data]:
    return {
        "welcome": r.make_welcome("server/0"),
        "status_reply": REPLY,
        "started": STARTED,
        "message": NOTICE,
        "statistics": STATS,
        "end": END,
        "data": DATA,
    }


def deliver(wire: str | bytes, to: InitiatorSession | ResponderSession) -> Message | Data:
    return to.receive_text(wire) if isinstance(wire, str) else to.receive_binary(wire)


def pair_in(link: Link, state: State) -> tuple[InitiatorSession, ResponderSession]:
    """Both ends of a link, driven along the ordinary path to ``state``."""
    i, r = link.pair()
    path: list[tuple[str, Message]] = [
        ("up", i.make_hello()),
        ("down", r.make_welcome("server/0")),
        ("up", link.start()),
        ("down", STARTED),
        ("up", Stop()),
        ("down", END),
    ]
    order = [S.IDLE, S.HELLO, S.READY, S.STARTING, S.CAPTURING, S.STOPPING, S.DONE]
    if state is S.ERROR:
        deliver(i.send(ERROR), r)
        return i, r
    for direction, msg in path[: order.index(state)]:
        if direction == "up":
            deliver(i.send(msg), r)
        else:
            deliver(r.send(msg), i)
    assert i.state is r.state is state
    return i, r


@pytest.mark.parametrize("link", LINKS, ids=str)
@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_upstream_transitions(link: Link, state: State) -> None:
    for code, msg in upstream(link, InitiatorSession(link.initiator)).items():
        i, r = pair_in(link, state)
        if code in UP_ALLOWED[state]:
            deliver(i.send(msg), r)
            assert i.state is r.state is NEXT.get((state, code), state)
            continue
        with pytest.raises(LocalProtocolError, match=f"`{code}`"):
            i.send(msg)
        assert i.state is state  # a refused send changes nothing
        expected_r_state = r.state
        wire = encode(msg)
        if state is S.DONE and code == "stop":
            continue  # a stop crossing the end: tested in test_stop_crossing_end
        with pytest.raises(RemoteProtocolError, match=f"`{code}`"):
            r.receive_text(wire)
        assert r.state is S.ERROR, (expected_r_state, code)


@pytest.mark.parametrize("link", LINKS, ids=str)
@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_downstream_transitions(link: Link, state: State) -> None:
    for code, msg in downstream(ResponderSession(link.responder)).items():
        i, r = pair_in(link, state)
        if code in DOWN_ALLOWED[state]:
            deliver(r.send(msg), i)
            assert i.state is r.state is NEXT.get((state, code), state)
            continue
        with pytest.raises(LocalProtocolError):
            r.send(msg)
        assert r.state is state
        wire = encode_data(DATA.watermark, DATA.payload) if isinstance(msg, Data) else encode(msg)
        with pytest.raises(RemoteProtocolError):
            deliver(wire, i)
        assert i.state is S.ERROR


@pytest.mark.parametrize("link", LINKS, ids=str)
@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_error_is_allowed_once_from_either_side(link: Link, state: State) -> None:
    for sender in ("initiator", "responder"):
        i, r = pair_in(link, state)
        a, b = (i, r) if sender == "initiator" else (r, i)
        if state is S.ERROR:  # an error was already exchanged
            with pytest.raises(LocalProtocolError, match="already exchanged"):
                a.send(ERROR)
            assert a.error_reply(RemoteProtocolError("x")) is None
            continue
        assert b.receive_text(a.send(ERROR)) == ERROR
        assert a.state is b.state is S.ERROR
        with pytest.raises(LocalProtocolError):
            b.send(ERROR)  # no error answering an error
        with pytest.raises(RemoteProtocolError, match="second error"):
            b.receive_text(encode(ERROR))


@pytest.mark.parametrize("link", LINKS, ids=str)
def test_binary_from_initiator_is_refused(link: Link) -> None:
    i, r = pair_in(link, S.CAPTURING)
    with pytest.raises(LocalProtocolError, match="sends no binary"):
        i.send(DATA)
    with pytest.raises(RemoteProtocolError, match="sends no binary"):
        r.receive_binary(encode_data(1, b""))
    assert r.state is S.ERROR


def test_full_capture_and_statistics() -> None:
    link = LINKS[0]
    i, r = pair_in(link, S.CAPTURING)
    assert i.capture_id == r.capture_id == "c1"
    assert i.protocol == r.protocol == 1
    assert i.welcome is not None and i.welcome.server_id == "server/0"
    assert r.hello is not None and r.hello.role == "client"
    for watermark in (5, 5, 0, 9):  # 0 = no watermark; equal ones are fine
        assert i.receive_binary(r.send(Data(watermark=watermark, payload=b"ab"))).payload == b"ab"
    deliver(r.send(STATS), i)
    deliver(r.send(END), i)
    assert i.end == END and i.state is S.DONE
    stats = i.statistics()
    assert (stats.data_received, stats.payload_bytes_received, stats.watermark) == (4, 8, 9)
    assert r.statistics().data_sent == 4
    assert stats.text_received == 4  # welcome, started, statistics, end


def test_watermark_must_not_go_back() -> None:
    i, r = pair_in(LINKS[1], S.CAPTURING)
    i.receive_binary(r.send(Data(watermark=100)))
    with pytest.raises(LocalProtocolError, match="went back from 100 to 99"):
        r.send(Data(watermark=99))
    with pytest.raises(RemoteProtocolError, match="went back from 100 to 99"):
        i.receive_binary(encode_data(99))


def test_status_request_and_reply() -> None:
    i, r = pair_in(LINKS[0], S.READY)
    with pytest.raises(LocalProtocolError, match="without an outstanding"):
        r.send(REPLY)
    deliver(i.send(Status()), r)
    deliver(i.send(Status()), r)
    deliver(i.send(LINKS[0].start()), r)  # a start may follow before the replies arrive
    deliver(r.send(REPLY), i)
    deliver(r.send(REPLY), i)
    with pytest.raises(LocalProtocolError, match="without an outstanding"):
        r.send(REPLY)
    with pytest.raises(RemoteProtocolError, match="without an outstanding"):
        i.receive_text(encode(REPLY))


def test_stop_crossing_end() -> None:
    i, r = pair_in(LINKS[0], S.CAPTURING)
    stop = i.send(Stop())
    end = r.send(END)
    assert r.receive_text(stop) == Stop()  # tolerated: the end was already on its way
    assert r.state is S.DONE
    i.receive_text(end)
    assert i.state is S.DONE
    with pytest.raises(RemoteProtocolError, match="second `stop`"):
        r.receive_text(encode(Stop()))


def test_started_crossing_stop() -> None:
    i, r = pair_in(LINKS[1], S.STARTING)
    stop = i.send(Stop())
    started = r.send(STARTED)
    i.receive_text(started)  # started in STOPPING: fine
    r.receive_text(stop)
    assert i.state is r.state is S.STOPPING
    data = r.send(Data(watermark=1, payload=b"x"))
    assert i.receive_binary(data).payload == b"x"
    with pytest.raises(LocalProtocolError, match="second `started`"):
        r.send(STARTED)


def test_stop_before_started_then_end() -> None:
    i, r = pair_in(LINKS[0], S.STARTING)
    deliver(i.send(Stop()), r)
    with pytest.raises(LocalProtocolError, match="before `started`"):
        r.send(STATS)
    with pytest.raises(LocalProtocolError, match="before `started`"):
        r.send(DATA)
    deliver(r.send(NOTICE), i)
    deliver(r.send(END), i)
    assert i.state is r.state is S.DONE and i.started is None


def test_refused_start_via_error() -> None:
    i, r = pair_in(LINKS[0], S.STARTING)
    refusal = Error(code="PERMISSION_DENIED", text="you may not see my-app")
    assert i.receive_text(r.send(refusal)) == refusal
    assert i.state is S.ERROR
    with pytest.raises(LocalProtocolError, match="after the link failed"):
        i.send(Stop())


@pytest.mark.parametrize(
    ("started", "words"),
    [
        (Started(capture_id="other", sources=[]), "names capture 'other'"),
        (
            Started(capture_id="c1", sources=[Source(id=1, name="a"), Source(id=1, name="b")]),
            "source id twice",
        ),
    ],
)
def test_started_is_checked(started: Started, words: str) -> None:
    i, r = pair_in(LINKS[1], S.STARTING)
    with pytest.raises(LocalProtocolError, match=words):
        r.send(started)
    with pytest.raises(RemoteProtocolError, match=words):
        i.receive_text(encode(started))


def test_start_targets_match_the_link() -> None:
    client_start, agent_start = LINKS[0].start(), LINKS[1].start()
    for link, wrong, words in [
        (LINKS[0], agent_start, "only for the api's links to agents"),
        (LINKS[1], client_start, "needs target kind `agent`"),
        (
            LINKS[1],
            Start(target=agent_start.target, options=agent_start.options),
            "needs `$.capture_id`",
        ),
    ]:
        i, r = pair_in(link, S.READY)
        with pytest.raises(LocalProtocolError, match=re.escape(words)):
            i.send(wrong)
        with pytest.raises(RemoteProtocolError, match=re.escape(words)):
            r.receive_text(encode(wrong))


def test_version_refusal_of_an_old_client() -> None:
    old = InitiatorSession("client", protocol=0, min_protocol=0)
    api = ResponderSession("api")
    with pytest.raises(RemoteProtocolError) as info:
        api.receive_text(old.send(old.make_hello()))
    text = "this api speaks protocol 1 (accepts 1\N{EN DASH}1); your client speaks 0: upgrade pcapd"
    assert str(info.value) == text
    assert info.value.code == "INVALID_REQUEST"
    reply = api.error_reply(info.value)
    assert reply is not None
    assert old.receive_text(reply) == Error(code="INVALID_REQUEST", text=text)
    assert api.state is old.state is S.ERROR
    assert api.error_reply(info.value) is None


def test_version_refusal_of_a_too_new_client() -> None:
    new = InitiatorSession("client", protocol=3, min_protocol=2)
    with pytest.raises(RemoteProtocolError, match="your client needs at least 2: upgrade pcapd on"):
        ResponderSession("api").receive_text(new.send(new.make_hello()))


def test_newer_compatible_peer_is_accepted_at_the_common_level() -> None:
    new = InitiatorSession("api", protocol=2, min_protocol=1)
    agent = ResponderSession("agent")
    agent.receive_text(new.send(new.make_hello()))
    new.receive_text(agent.send(agent.make_welcome("router/0")))
    assert new.protocol == agent.protocol == 1


def test_initiator_checks_the_welcome() -> None:
    def welcome(**fields: object) -> str:
        base: dict[str, object] = dict(
            protocol=0, min_protocol=0, software="old", role="agent", server_id="r/0"
        )
        return encode(Welcome(**{**base, **fields}))  # type: ignore[arg-type]

    cases = [
        (
            welcome(),
            "this api speaks protocol 1 (accepts 1\N{EN DASH}1); the agent speaks 0: "
            "upgrade pcapd on the agent",
        ),
        (
            welcome(protocol=4, min_protocol=2),
            "the agent needs at least 2: upgrade pcapd on the api",
        ),
        (welcome(protocol=1, min_protocol=1, role="api"), "it talks to an agent, not to an api"),
        (welcome(protocol=1, min_protocol=2), "min_protocol 2 is above protocol 1"),
    ]
    for wire, words in cases:
        api = InitiatorSession("api")
        api.send(api.make_hello())
        with pytest.raises(RemoteProtocolError, match=re.escape(words)):
            api.receive_text(wire)
        assert api.state is S.ERROR


def test_client_talking_to_an_agent_is_refused() -> None:
    client = InitiatorSession("client")
    with pytest.raises(
        RemoteProtocolError, match="pcapd agent: it talks to an api, not to a client"
    ):
        ResponderSession("agent").receive_text(client.send(client.make_hello()))


def test_own_handshake_must_match_the_session() -> None:
    i = InitiatorSession("client")
    with pytest.raises(LocalProtocolError, match="make_hello"):
        i.send(Hello(protocol=1, min_protocol=1, software="x", role="api"))
    r = ResponderSession("agent")
    r.receive_text(encode(InitiatorSession("api").make_hello()))
    with pytest.raises(LocalProtocolError, match="make_welcome"):
        r.send(Welcome(protocol=2, min_protocol=1, software="x", role="agent", server_id="a"))
    assert r.state is S.HELLO


def test_error_reply_clips_long_text_and_maps_unknown_codes() -> None:
    r = ResponderSession("api")
    reply = r.error_reply(RemoteProtocolError("x" * 10_000, code="WHATEVER"))
    assert reply is not None
    msg = InitiatorSession("client").receive_text(reply)
    assert isinstance(msg, Error) and msg.code == "INVALID_REQUEST" and len(msg.text) == 4096


def test_garbage_moves_to_error_and_later_input_is_refused() -> None:
    i, r = pair_in(LINKS[0], S.CAPTURING)
    with pytest.raises(RemoteProtocolError):
        i.receive_text("{not json")
    assert i.state is S.ERROR
    with pytest.raises(RemoteProtocolError, match="after the link failed"):
        i.receive_text(encode(STATS))
    with pytest.raises(RemoteProtocolError):
        i.receive_binary(encode_data(1))
    reply = i.error_reply(RemoteProtocolError("bad"))
    assert reply is not None and r.receive_text(reply).__class__ is Error


def test_type_codes() -> None:
    assert [type_code(t) for t in (Notice, StatusReply, End)] == ["message", "status_reply", "end"]


@pytest.mark.parametrize("state", [S.STARTING, S.CAPTURING, S.STOPPING], ids=lambda s: s.value)
def test_refreshed_token_travels_only_from_client_to_api(state: State) -> None:
    for link in LINKS:
        i, r = pair_in(link, state)
        token = Token(token="eyJ.e30.sig")
        if link.initiator == "client":
            assert deliver(i.send(token), r) == token
            assert r.state is state
        else:
            with pytest.raises(LocalProtocolError, match="client to the api"):
                i.send(token)


def test_token_before_start_is_refused() -> None:
    i, _ = pair_in(LINKS[0], S.READY)
    with pytest.raises(LocalProtocolError):
        i.send(Token(token="eyJ.e30.sig"))


def test_capture_queries_are_answered_once_each_before_start() -> None:
    i, r = pair_in(LINKS[0], S.READY)
    stored = StoredCapture(capture_id="a1", started_at=1.0, expires_at=2.0)
    with pytest.raises(LocalProtocolError, match="without an outstanding request"):
        r.send(CaptureList(captures=[]))
    deliver(i.send(ListCaptures()), r)
    deliver(i.send(GetDownload(capture_id="a1")), r)
    deliver(r.send(CaptureList(captures=[stored])), i)
    deliver(r.send(Download(capture=stored, url="https://x/d/a1", url_expires_at=2.0)), i)
    assert i.state is r.state is S.READY
    with pytest.raises(RemoteProtocolError, match="without an outstanding request"):
        i.receive_text(encode(CaptureList(captures=[])))


def test_list_devices_names_an_agent_target_only_toward_an_agent() -> None:
    """A client cannot hand the api a resolved target (a container of someone else's app):
    ``list_devices`` from a client names a cf, bosh or local target; toward an agent, the api
    names the agent target it resolved itself. Both ends answer with ``device_list``."""
    client, api = InitiatorSession("client"), ResponderSession("api")
    api.receive_text(client.send(client.make_hello()))
    client.receive_text(api.send(api.make_welcome("api/0")))
    forged = ListDevices(target=AgentTarget(namespace="other-apps-guid", source="x"))
    with pytest.raises(LocalProtocolError, match="list_devices"):
        client.send(forged)
    with pytest.raises(RemoteProtocolError, match="list_devices"):
        api.receive_text(encode(forged))
    to_agent, agent = InitiatorSession("api"), ResponderSession("agent")
    agent.receive_text(to_agent.send(to_agent.make_hello()))
    to_agent.receive_text(agent.send(agent.make_welcome("cell/0")))
    agent.receive_text(to_agent.send(forged))
    answer = DeviceList(sources=[SourceDevices(origin="x", devices=["lo", "eth0"])])
    assert to_agent.receive_text(agent.send(answer)) == answer
    assert agent.state is to_agent.state is S.READY
    with pytest.raises(RemoteProtocolError, match="without an outstanding request"):
        to_agent.receive_text(encode(answer))


# --- the flight recorder ----------------------------------------------------------------------

RING = RecordRing(keep=60.0, max_bytes=1 << 20, until=3600.0)
AGENT_RECORD = Record(recording_id="r1", target=AgentTarget(namespace="host", source="router/0"),
                      options=CaptureOptions(device="eth0"), ring=RING)
CLIENT_RECORD = Record(target=CfTarget(app="my-app"), options=CaptureOptions(device="eth0"),
                       ring=RecordRing(keep=60.0))
RECORDING_STARTED = RecordingStarted(recording_id="r1", sources=[Source(id=0, name="a/0:eth0")],
                                     ring=RING, ends_at=2.0)
FIRED = Triggered(recording_id="r1", source="router/0:eth0",
                  trigger=TriggerFired(number=1, at=5, window_start=1, window_end=9))


def ready(link: Link) -> tuple[InitiatorSession, ResponderSession]:
    return pair_in(link, S.READY)


@pytest.mark.parametrize("link", LINKS, ids=str)
def test_a_recording_is_armed_by_a_query_and_the_link_stays_ready(link: Link) -> None:
    i, r = ready(link)
    deliver(i.send(AGENT_RECORD if link.responder == "agent" else CLIENT_RECORD), r)
    deliver(r.send(RECORDING_STARTED), i)
    deliver(i.send(RecordStop(recording_id="r1")), r)
    deliver(i.send(ListRecordings(recording_ids=["r1"])), r)
    deliver(r.send(RecordingList(recordings=[])), i)
    deliver(r.send(RecordingList(recordings=[])), i)
    assert i.state is r.state is S.READY
    with pytest.raises(LocalProtocolError, match="without an outstanding request"):
        r.send(RecordingList(recordings=[]))


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (CLIENT_RECORD, "needs target kind `agent`"),
        (msgspec.structs.replace(AGENT_RECORD, recording_id=None), "needs `$.recording_id`"),
        (msgspec.structs.replace(AGENT_RECORD, ring=RecordRing(keep=1.0, until=2.0)),
         "needs `$.ring.max_bytes`"),
        (msgspec.structs.replace(AGENT_RECORD, ring=RecordRing(keep=1.0, max_bytes=1)),
         "needs `$.ring.until`"),
    ],
)
def test_a_record_toward_an_agent_is_complete(record: Record, words: str) -> None:
    i, r = ready(LINKS[1])
    with pytest.raises(LocalProtocolError, match=re.escape(words)):
        i.send(record)
    with pytest.raises(RemoteProtocolError, match=re.escape(words)):
        r.receive_text(encode(record))


def test_a_client_cannot_name_an_agent_target_in_a_record() -> None:
    i, r = ready(LINKS[0])
    with pytest.raises(LocalProtocolError, match="only for the api's links to agents"):
        i.send(AGENT_RECORD)
    with pytest.raises(RemoteProtocolError, match="only for the api's links to agents"):
        r.receive_text(encode(AGENT_RECORD))


@pytest.mark.parametrize("link", LINKS, ids=str)
def test_a_saved_window_streams_as_a_capture(link: Link) -> None:
    i, r = ready(link)
    save = RecordSave(recording_id="r1", last=300.0)
    deliver(i.send(save), r)
    assert (i.state, r.state, r.save) == (S.STARTING, S.STARTING, save)
    deliver(r.send(Started(capture_id="r1", sources=[Source(id=0, name="a/0:eth0")])), i)
    assert i.receive_binary(r.send(Data(watermark=3, payload=b"epbs"))).payload == b"epbs"
    deliver(r.send(Statistics(sources=[SourceStatistics(source=0, state="stopped")], final=True)),
            i)
    deliver(r.send(END), i)
    assert i.state is r.state is S.DONE


@pytest.mark.parametrize(
    ("save", "words", "links"),
    [
        (RecordSave(recording_id="r1", last=5.0, start=1), "`last` or `start`/`end`", LINKS),
        (RecordSave(recording_id="r1", start=5, end=4), "ends (4) before it starts (5)", LINKS),
        (RecordSave(recording_id="r1", upload=True), "not an agent", LINKS[1:]),
    ],
)
def test_a_save_window_is_checked(save: RecordSave, words: str, links: list[Link]) -> None:
    for link in links:
        i, r = ready(link)
        with pytest.raises(LocalProtocolError, match=re.escape(words)):
            i.send(save)
        with pytest.raises(RemoteProtocolError, match=re.escape(words)):
            r.receive_text(encode(save))
    i, r = ready(LINKS[0])
    deliver(i.send(RecordSave(recording_id="r1", upload=True, start=4, end=4)), r)


def test_triggers_reach_the_api_only_on_a_watching_agent_link() -> None:
    i, r = ready(LINKS[1])
    with pytest.raises(LocalProtocolError, match="did not ask to watch"):
        r.send(FIRED)
    with pytest.raises(RemoteProtocolError, match="did not ask to watch"):
        i.receive_text(encode(FIRED))
    i, r = ready(LINKS[1])
    deliver(i.send(ListRecordings(watch=True)), r)
    deliver(r.send(FIRED), i)  # before the answer: fine, the watch was asked
    deliver(r.send(RecordingList(recordings=[])), i)
    deliver(r.send(FIRED), i)
    deliver(i.send(Status()), r)  # queries go on
    deliver(r.send(REPLY), i)
    for capture in (LINKS[1].start(), RecordSave(recording_id="r1")):
        with pytest.raises(LocalProtocolError, match="watches recordings: open another"):
            i.send(capture)
    assert i.state is r.state is S.READY


def test_a_client_link_carries_no_watch_and_no_triggers() -> None:
    i, r = ready(LINKS[0])
    with pytest.raises(LocalProtocolError, match="only for the api's links to agents"):
        i.send(ListRecordings(watch=True))
    with pytest.raises(LocalProtocolError, match="only travels from an agent"):
        r.send(FIRED)
    with pytest.raises(RemoteProtocolError, match="only travels from an agent"):
        i.receive_text(encode(FIRED))
