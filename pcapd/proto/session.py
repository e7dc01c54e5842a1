"""The per-link state machine of the pcapd protocol, sans I/O (h11 style).

Theory of operation. A link carries one handshake and at most one capture; the side that opened
the WebSocket is the *initiator* (the CLI toward the api, the api toward an agent), the other the
*responder*. Both ends run the same transition tables: a message moves the sender's session when
it is sent and the receiver's when it arrives, so the two agree except for messages in flight.
The tables therefore accept the in-flight races a correct peer can cause (a ``stop`` crossing an
``end``, a ``started`` crossing a ``stop``) and refuse everything else. The I/O layer feeds
``receive_text`` / ``receive_binary`` and puts what ``send`` returns on the wire; when a receive
raises :class:`RemoteProtocolError`, ``error_reply(exc)`` gives the ``error`` to answer with
(``exc.code`` and text), and the link is closed. A refused ``send`` changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypedDict, Unpack, overload

import msgspec

from pcapd.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from pcapd.proto.codec import (
    MAX_BINARY_MESSAGE,
    MAX_TEXT_MESSAGE,
    Buffer,
    data_header,
    decode_binary,
    decode_text,
    encode,
    nbytes,
)
from pcapd.proto.messages import (
    CODES,
    MAX_TEXT,
    MIN_COMPATIBLE_VERSION,
    PROTOCOL_VERSION,
    SOFTWARE,
    AgentTarget,
    CaptureList,
    Code,
    Data,
    DeviceList,
    Download,
    End,
    Error,
    GetDownload,
    Hello,
    InitiatorRole,
    ListCaptures,
    ListDevices,
    ListRecordings,
    Message,
    Notice,
    Record,
    RecordingList,
    RecordingStarted,
    RecordSave,
    RecordStop,
    ResponderRole,
    Start,
    Started,
    Statistics,
    Status,
    StatusReply,
    Stop,
    Token,
    Triggered,
    Welcome,
    fit_text,
    type_code,
)


class State(enum.Enum):
    """Where a link is. The same names on both ends; see docs/protocol.md for the diagram."""

    IDLE = "idle"
    HELLO = "hello"  # initiator: hello sent; responder: hello received, welcome due
    READY = "ready"  # handshake done; status or start may follow
    STARTING = "starting"  # start sent/received, neither started nor end yet
    CAPTURING = "capturing"  # started
    STOPPING = "stopping"  # stop sent/received (started may still come)
    DONE = "done"  # end sent/received: the capture is over
    ERROR = "error"  # error sent/received or a protocol violation: close the link


_S = State
_CAPTURE_STATES: Final = (_S.STARTING, _S.CAPTURING, _S.STOPPING)

# (state, message type) -> next state, for messages from the initiator (upstream) and from the
# responder (downstream). Guards that need more than the state are in _Session._guard.
_QUERIES: Final = (Status, ListCaptures, GetDownload, ListDevices, Record, RecordStop,
                   ListRecordings)
"""Requests answered by one reply each (``_REPLIES``), before any ``start``."""
_REPLIES: Final = (StatusReply, CaptureList, Download, DeviceList, RecordingStarted,
                   RecordingList)

_UPSTREAM: Final[dict[tuple[State, type[Message]], State]] = {
    (_S.IDLE, Hello): _S.HELLO,
    **{(_S.READY, query): _S.READY for query in _QUERIES},
    (_S.READY, Start): _S.STARTING,
    (_S.READY, RecordSave): _S.STARTING,  # a saved window streams as a capture does
    (_S.STARTING, Stop): _S.STOPPING,
    (_S.CAPTURING, Stop): _S.STOPPING,
    **{(s, Token): s for s in _CAPTURE_STATES},
}
_DOWNSTREAM: Final[dict[tuple[State, type[Message]], State]] = {
    (_S.HELLO, Welcome): _S.READY,
    (_S.READY, Triggered): _S.READY,  # only on a link that asked to watch (see _guard)
    (_S.STARTING, Notice): _S.STARTING,
    (_S.STARTING, Started): _S.CAPTURING,
    (_S.STARTING, End): _S.DONE,
    (_S.CAPTURING, Notice): _S.CAPTURING,
    (_S.CAPTURING, Statistics): _S.CAPTURING,
    (_S.CAPTURING, End): _S.DONE,
    (_S.STOPPING, Notice): _S.STOPPING,
    (_S.STOPPING, Started): _S.STOPPING,
    (_S.STOPPING, Statistics): _S.STOPPING,
    (_S.STOPPING, End): _S.DONE,
    **{(s, reply): s for s in (_S.READY, *_CAPTURE_STATES) for reply in _REPLIES},
}
# A stop may cross the end on the wire: the responder tolerates it (and only it) once done.
_UPSTREAM_RECEIVED: Final = {**_UPSTREAM, (_S.DONE, Stop): _S.DONE}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


class SessionOptions(TypedDict, total=False):
    """Constructor overrides: own levels (tests, staged upgrades) and message size limits.

    Defaults: ``PROTOCOL_VERSION``, ``MIN_COMPATIBLE_VERSION``, ``MAX_TEXT_MESSAGE``,
    ``MAX_BINARY_MESSAGE``.
    """

    protocol: int
    min_protocol: int
    max_text: int
    max_binary: int


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """A snapshot of one link's counters."""

    state: State
    text_sent: int
    text_received: int
    data_sent: int
    data_received: int
    payload_bytes_sent: int
    payload_bytes_received: int
    watermark: int


class _Session:
    """What both ends share; subclasses fix the direction and the role checks."""

    _upstream: bool  # True when this end sends the upstream (initiator) messages

    def __init__(self, role: str, peer_role: str, options: SessionOptions) -> None:
        self.role = role
        self.peer_role = peer_role
        self.own_protocol = options.get("protocol", PROTOCOL_VERSION)
        self.own_min_protocol = options.get("min_protocol", MIN_COMPATIBLE_VERSION)
        self.max_text = options.get("max_text", MAX_TEXT_MESSAGE)
        self.max_binary = options.get("max_binary", MAX_BINARY_MESSAGE)
        self.protocol: int | None = None
        """The level both ends speak, once the handshake is done."""
        self.start: Start | None = None
        self.save: RecordSave | None = None
        """The ``record_save`` this link streams, if it is one."""
        self.started: Started | None = None
        self.end: End | None = None
        self._state = State.IDLE
        self._status_pending = 0
        self._watching = False
        self._stop_seen = False
        self._error_sent = False
        self._error_received = False
        self._watermark = 0
        self._text_sent = self._text_received = self._data_sent = self._data_received = 0
        self._bytes_sent = self._bytes_received = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def capture_id(self) -> str | None:
        if self.started is not None:
            return self.started.capture_id
        return self.start.capture_id if self.start is not None else None

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            state=self._state,
            text_sent=self._text_sent,
            text_received=self._text_received,
            data_sent=self._data_sent,
            data_received=self._data_received,
            payload_bytes_sent=self._bytes_sent,
            payload_bytes_received=self._bytes_received,
            watermark=self._watermark,
        )

    # --- sending ---------------------------------------------------------------------------

    def send_data_header(self, msg: Data) -> bytes:
        """:meth:`send` of ``msg`` without its payload: the header that goes before it on the
        wire (a sender of large batches writes both out without joining them first)."""
        self._check_data(msg, LocalProtocolError, sending=True)
        header = data_header(msg.watermark, nbytes(msg.payload), max_size=self.max_binary)
        self._apply_data(msg)
        self._data_sent += 1
        self._bytes_sent += nbytes(msg.payload)
        return header

    @overload
    def send(self, msg: Data) -> bytes: ...
    @overload
    def send(self, msg: Message) -> str: ...
    def send(self, msg: Message | Data) -> str | bytes:
        """The wire payload for ``msg``; LocalProtocolError (and no change) if not allowed now.

        A text for people (``error``, ``message``, ``end``) too long for the field is cut to
        fit, with "…": the person still reads why, instead of the link breaking."""
        if isinstance(msg, Error | Notice | End) and len(msg.text) > MAX_TEXT:
            msg = msgspec.structs.replace(msg, text=fit_text(msg.text))
        if isinstance(msg, Data):
            return self.send_data_header(msg) + msg.payload
        if isinstance(msg, Error):
            if self._error_sent or self._error_received:
                raise LocalProtocolError("an error was already exchanged on this link; close it")
            wire = encode(msg, max_size=self.max_text)
            self._error_sent = True
            self._state = State.ERROR
            self._text_sent += 1
            return wire
        table = _UPSTREAM if self._upstream else _DOWNSTREAM
        nxt = self._next(table, msg, LocalProtocolError, "send")
        self._guard(msg, LocalProtocolError)
        wire = encode(msg, max_size=self.max_text)
        self._apply(msg, nxt)
        self._text_sent += 1
        return wire

    def error_reply(self, exc: ProtocolError) -> str | None:
        """The ``error`` answering ``exc``, or None if an error was already exchanged."""
        if self._error_sent or self._error_received:
            return None
        code: Code = exc.code if exc.code in CODES else "INVALID_REQUEST"
        return self.send(Error(code=code, text=str(exc)))

    # --- receiving -------------------------------------------------------------------------

    def receive_text(self, data: str | Buffer) -> Message:
        """Decode and account one TEXT message; RemoteProtocolError if malformed or out of turn."""
        try:
            msg = decode_text(data, max_size=self.max_text)
            self._text_received += 1
            if isinstance(msg, Error):
                if self._error_received:
                    raise RemoteProtocolError("a second error on this link")
                self._error_received = True
                self._state = State.ERROR
                return msg
            table = _DOWNSTREAM if self._upstream else _UPSTREAM_RECEIVED
            nxt = self._next(table, msg, RemoteProtocolError, "receive")
            self._guard(msg, RemoteProtocolError)
        except RemoteProtocolError:
            self._state = State.ERROR
            raise
        self._apply(msg, nxt)
        return msg

    def receive_binary(self, data: Buffer) -> Data:
        """Decode one BINARY message; the payload is a view into ``data``."""
        try:
            if not self._upstream:
                raise RemoteProtocolError(f"a {self.peer_role} sends no binary messages")
            msg = decode_binary(data, max_size=self.max_binary)
            self._check_data(msg, RemoteProtocolError, sending=False)
        except RemoteProtocolError:
            self._state = State.ERROR
            raise
        self._apply_data(msg)
        self._data_received += 1
        self._bytes_received += nbytes(msg.payload)
        return msg

    # --- the rules -------------------------------------------------------------------------

    def _next(
        self,
        table: dict[tuple[State, type[Message]], State],
        msg: Message,
        exc: type[ProtocolError],
        verb: str,
    ) -> State:
        nxt = table.get((self._state, type(msg)))
        if nxt is None:
            if self._state is State.ERROR:
                why = "after the link failed; close it"
            else:
                why = f"in state {self._state.value}"
            raise exc(f"cannot {verb} a `{type_code(msg)}` message {why} ({self.role} side)")
        return nxt

    def _guard(self, msg: Message, exc: type[ProtocolError]) -> None:
        """Checks beyond the state: version, roles, ids, outstanding requests."""
        if isinstance(msg, Hello | Welcome):
            self._check_handshake(msg, exc)
        elif isinstance(msg, _REPLIES) and self._status_pending == 0:
            raise exc(f"a `{type_code(msg)}` without an outstanding request")
        elif isinstance(msg, Start | RecordSave) and self._watching:
            raise exc(f"a `{type_code(msg)}` on a link that watches recordings: open another")
        elif isinstance(msg, Start):
            self._check_start(msg, exc)
        elif isinstance(msg, Record | RecordSave | ListRecordings | Triggered):
            self._check_recorder(msg, exc)
        elif isinstance(msg, ListDevices):
            to_agent = self.role == "agent" or (self._upstream and self.role == "api")
            if to_agent != isinstance(msg.target, AgentTarget):
                raise exc("`list_devices` names target kind `agent` exactly on the api's "
                          "links to agents")
        elif isinstance(msg, Started):
            if self.started is not None:
                raise exc("a second `started` message")
            if self.start is not None and self.start.capture_id not in (None, msg.capture_id):
                raise exc(
                    f"`started` names capture {msg.capture_id!r}, "
                    f"but {self.start.capture_id!r} was started"
                )
            ids = [source.id for source in msg.sources]
            if len(set(ids)) != len(ids):
                raise exc("`started` lists a source id twice")
        elif isinstance(msg, Statistics) and self.started is None:
            raise exc("`statistics` before `started`")
        elif isinstance(msg, Stop) and self._stop_seen:
            raise exc("a second `stop` message")
        elif isinstance(msg, Token) and "agent" in (self.role, self.peer_role):
            raise exc("a `token` only travels from a client to the api")

    def _check_handshake(self, msg: Hello | Welcome, exc: type[ProtocolError]) -> None:
        mine = isinstance(msg, Hello) == self._upstream
        if mine:  # what we send must say what this session is
            if (msg.protocol, msg.min_protocol, msg.role) != (
                self.own_protocol,
                self.own_min_protocol,
                self.role,
            ):
                code = type_code(msg)
                raise exc(
                    f"`{code}` must carry this session's role {self.role!r} and levels "
                    f"{self.own_protocol}/{self.own_min_protocol}: use session.make_{code}()"
                )
            return
        if msg.role != self.peer_role:
            raise exc(
                f"this is a pcapd {self.role}: it talks to {_a(self.peer_role)}, "
                f"not to {_a(msg.role)}"
            )
        if msg.min_protocol > msg.protocol:
            raise exc(f"min_protocol {msg.min_protocol} is above protocol {msg.protocol}")
        ours = (
            f"this {self.role} speaks protocol {self.own_protocol} "
            f"(accepts {self.own_min_protocol}\N{EN DASH}{self.own_protocol})"
        )
        theirs = "your" if isinstance(msg, Hello) else "the"
        if msg.protocol < self.own_min_protocol:
            upgrade = "pcapd" if self.peer_role == "client" else f"pcapd on the {self.peer_role}"
            raise exc(f"{ours}; {theirs} {self.peer_role} speaks {msg.protocol}: upgrade {upgrade}")
        if msg.min_protocol > self.own_protocol:
            upgrade = "pcapd" if self.role == "client" else f"pcapd on the {self.role}"
            raise exc(
                f"{ours}; {theirs} {self.peer_role} needs at least {msg.min_protocol}: "
                f"upgrade {upgrade}"
            )

    def _check_start(self, msg: Start, exc: type[ProtocolError]) -> None:
        to_agent = self.role == "agent" or (self._upstream and self.role == "api")
        if to_agent:
            if not isinstance(msg.target, AgentTarget):
                raise exc("a `start` to an agent needs target kind `agent` at `$.target.kind`")
            if msg.capture_id is None:
                raise exc("a `start` to an agent needs `$.capture_id`")
        elif isinstance(msg.target, AgentTarget):
            raise exc("target kind `agent` is only for the api's links to agents")

    def _check_recorder(
        self, msg: Record | RecordSave | ListRecordings | Triggered, exc: type[ProtocolError]
    ) -> None:
        to_agent = self.role == "agent" or (self._upstream and self.role == "api")
        code = type_code(msg)
        if isinstance(msg, Record):
            if to_agent:
                missing = [name for name, value in (
                    ("$.recording_id", msg.recording_id), ("$.ring.max_bytes", msg.ring.max_bytes),
                    ("$.ring.until", msg.ring.until)) if value is None]
                if not isinstance(msg.target, AgentTarget):
                    raise exc("a `record` to an agent needs target kind `agent` at `$.target.kind`")
                if missing:
                    raise exc(f"a `record` to an agent needs `{missing[0]}`")
            elif isinstance(msg.target, AgentTarget):
                raise exc("target kind `agent` is only for the api's links to agents")
        elif isinstance(msg, RecordSave):
            if msg.last is not None and (msg.start is not None or msg.end is not None):
                raise exc("`record_save` takes `last` or `start`/`end`, not both")
            if msg.start is not None and msg.end is not None and msg.start > msg.end:
                raise exc(f"`record_save` window ends ({msg.end}) before it starts ({msg.start})")
            if msg.upload and to_agent:
                raise exc("`upload` in a `record_save` is for the api, not an agent")
        elif isinstance(msg, ListRecordings):
            if msg.watch and not to_agent:
                raise exc("`watch` in `list_recordings` is only for the api's links to agents")
        elif not to_agent:  # Triggered
            raise exc(f"a `{code}` only travels from an agent to the api")
        elif not self._watching:
            raise exc(f"a `{code}` on a link that did not ask to watch (`list_recordings`)")

    def _check_data(self, msg: Data, exc: type[ProtocolError], *, sending: bool) -> None:
        if sending and self._upstream:
            raise exc(f"a {self.role} sends no binary messages")
        if self._state not in (State.CAPTURING, State.STOPPING) or self.started is None:
            raise exc(f"data in state {self._state.value}, before `started` or after `end`")
        if msg.watermark and msg.watermark < self._watermark:
            raise exc(f"watermark went back from {self._watermark} to {msg.watermark}")

    def _apply(self, msg: Message, nxt: State) -> None:
        """Commit a message that passed every check."""
        if isinstance(msg, Hello | Welcome):
            if isinstance(msg, Welcome) or not self._upstream:
                self.protocol = min(self.own_protocol, msg.protocol)
        elif isinstance(msg, _QUERIES):
            self._status_pending += 1
            if isinstance(msg, ListRecordings) and msg.watch:
                self._watching = True
        elif isinstance(msg, _REPLIES):
            self._status_pending -= 1
        elif isinstance(msg, Start):
            self.start = msg
        elif isinstance(msg, RecordSave):
            self.save = msg
        elif isinstance(msg, Started):
            self.started = msg
        elif isinstance(msg, Stop):
            self._stop_seen = True
        elif isinstance(msg, End):
            self.end = msg
        self._state = nxt

    def _apply_data(self, msg: Data) -> None:
        if msg.watermark:
            self._watermark = msg.watermark


class InitiatorSession(_Session):
    """The end that opened the link: the CLI toward the api, or the api toward an agent."""

    _upstream = True

    def __init__(self, role: InitiatorRole, **options: Unpack[SessionOptions]) -> None:
        super().__init__(role, "api" if role == "client" else "agent", options)
        self._role: InitiatorRole = role
        self.welcome: Welcome | None = None
        """The peer's ``welcome``, once received."""

    def make_hello(self, software: str = SOFTWARE) -> Hello:
        """The ``hello`` this session must send first."""
        return Hello(
            protocol=self.own_protocol,
            min_protocol=self.own_min_protocol,
            software=software,
            role=self._role,
        )

    def _apply(self, msg: Message, nxt: State) -> None:
        if isinstance(msg, Welcome):
            self.welcome = msg
        super()._apply(msg, nxt)


class ResponderSession(_Session):
    """The end that accepted the link: the api toward a client, or an agent toward the api."""

    _upstream = False

    def __init__(self, role: ResponderRole, **options: Unpack[SessionOptions]) -> None:
        super().__init__(role, "client" if role == "api" else "api", options)
        self._role: ResponderRole = role
        self.hello: Hello | None = None
        """The peer's ``hello``, once received."""

    def make_welcome(self, server_id: str, software: str = SOFTWARE) -> Welcome:
        """The ``welcome`` answering an acceptable ``hello``."""
        return Welcome(
            protocol=self.own_protocol,
            min_protocol=self.own_min_protocol,
            software=software,
            role=self._role,
            server_id=server_id,
        )

    def _apply(self, msg: Message, nxt: State) -> None:
        if isinstance(msg, Hello):
            self.hello = msg
        super()._apply(msg, nxt)
