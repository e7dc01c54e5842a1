"""The message types of the pcapd wire protocol: the contract between client, api and agent.

Every control message is one JSON object in a WebSocket TEXT message, tagged by ``"type"``; packet
data travels in BINARY messages (see :mod:`pcapd.proto.codec`). The types below *are* the schema:
field limits live in the annotations (``msgspec.Meta``), so the decoder enforces them while it
parses and a peer can never hand us a 10 MB filter or a negative snaplen. They are part of the
wire contract and therefore module constants, not per-session settings: two peers that disagreed
about them would refuse each other's messages. Structs are frozen and reject unknown fields, so a
typo in a field name is an error at the peer instead of a silently ignored option.

Both links (client→api and api→agent) use the same set; which side may send what, and when, is
the session's business (:mod:`pcapd.proto.session`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, Literal, get_args

import msgspec
from msgspec import Meta

from pcapd import __version__

PROTOCOL_VERSION: Final = 1
"""The protocol level this build speaks. Bump it for any change a level-1 peer cannot read."""
MIN_COMPATIBLE_VERSION: Final = 1
"""The oldest peer level this build still talks to; older peers are refused at ``hello``."""
SOFTWARE: Final = f"pcapd {__version__}"

MAX_NAME: Final = 256
"""Characters in a name: app, netns, device, group, instance id, source, origin, software."""
MAX_TEXT: Final = 4096
"""Characters in a human-readable text."""
MAX_FILTER: Final = 8192
"""Characters in a BPF filter expression."""
MAX_LIST: Final = 1024
"""Items in any list: instances, groups, namespaces, sources, capture ids."""
MAX_UINT: Final = 2**63 - 1
"""Every counter and size fits a signed 64-bit integer, so no peer language needs bignums."""
MAX_SOURCE_ID: Final = 2**32 - 1
"""Source ids become pcapng interface ids, which are 32 bits."""
MAX_SNAPLEN: Final = 262144
"""libpcap's own maximum snapshot length."""
MAX_DURATION: Final = 1e9
"""Seconds; far beyond any policy, yet ``duration * 1e9`` still fits a signed 64-bit int."""
MAX_LEVEL: Final = 65535
MAX_URL: Final = 8192
"""Characters in a download URL (presigned S3 URLs are long)."""
MAX_TOKEN: Final = 16384
"""Characters in an access token (UAA JWTs are a few kB)."""

Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
Label = Annotated[str, Meta(max_length=MAX_NAME)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Filter = Annotated[str, Meta(max_length=MAX_FILTER)]
Count = Annotated[int, Meta(ge=0, le=MAX_UINT)]
Level = Annotated[int, Meta(ge=0, le=MAX_LEVEL)]
SourceId = Annotated[int, Meta(ge=0, le=MAX_SOURCE_ID)]
Index = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Snaplen = Annotated[int, Meta(ge=1, le=MAX_SNAPLEN)]
Seconds = Annotated[float, Meta(gt=0, le=MAX_DURATION)]
CaptureId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
"""Safe in a file name, an object-store key and a log line (``\\Z``: ``$`` would let "id\\n" in)."""

Code = Literal[
    "INSTANCE_UNAVAILABLE",
    "START_CAPTURE_FAILED",
    "INVALID_REQUEST",
    "CONGESTED",
    "LIMIT_REACHED",
    "CAPTURE_STOPPED",
    "CAPTURE_RESUMED",
    "CONNECTION_ERROR",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
]
"""The message codes users see (SPEC §6, as in pcap-release)."""
CODES: Final[tuple[Code, ...]] = get_args(Code)

InitiatorRole = Literal["client", "api"]
ResponderRole = Literal["api", "agent"]
SourceState = Literal["starting", "capturing", "stopped", "unavailable"]
EndReason = Literal["completed", "stopped", "limit", "drained", "failed"]
StopReason = Literal["requested", "limit", "drained", "client_gone"]
Party = Literal["agent", "api"]


class _Wire(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Shared struct config: immutable, keyword-only, strict; optional fields left out of JSON."""


class _Tagged(_Wire, tag_field="type", frozen=True):
    """A top-level message: the ``type`` member picks the class."""


# --- nested parts ------------------------------------------------------------------------------


class LocalTarget(_Wire, tag_field="kind", tag="local", frozen=True, kw_only=True):
    """Namespaces on the machine of an embedded api; an empty list means the host namespace."""

    netns: Annotated[list[Name], Meta(max_length=MAX_LIST)] = []


class CfTarget(_Wire, tag_field="kind", tag="cf", frozen=True, kw_only=True):
    """Instances of a Cloud Foundry app; an empty ``instances`` list means all of them."""

    app: Name
    """App name (resolved in ``space``) or app guid."""
    space: Name | None = None
    instances: Annotated[list[Index], Meta(max_length=MAX_LIST)] = []
    process_type: Name = "web"


class BoshTarget(_Wire, tag_field="kind", tag="bosh", frozen=True, kw_only=True):
    """VMs of a BOSH deployment; an empty ``instances`` list means every VM of the groups."""

    deployment: Name
    groups: Annotated[list[Name], Meta(min_length=1, max_length=MAX_LIST)]
    instances: Annotated[list[Name], Meta(max_length=MAX_LIST)] = []


class AgentTarget(_Wire, tag_field="kind", tag="agent", frozen=True, kw_only=True):
    """What the api asks one agent to capture: exactly one namespace, resolved already."""

    namespace: Name
    """``host`` or the instance guid naming a container's network namespace."""
    app_guid: Name | None = None
    source: Name
    """The ``if_name`` prefix, e.g. ``my-app/2`` or ``router/d55b…``; the device is appended."""


Target = LocalTarget | CfTarget | BoshTarget | AgentTarget


class CaptureOptions(_Wire, frozen=True, kw_only=True):
    """What libpcap is asked for."""

    device: Name
    filter: Filter = ""
    snaplen: Snaplen = 65535


class CaptureLimits(_Wire, frozen=True, kw_only=True):
    """Limits the initiator asks for; the server may lower them to its policy, never raise."""

    max_duration: Seconds | None = None
    max_packets: Count | None = None
    max_bytes: Count | None = None


class Source(_Wire, frozen=True, kw_only=True):
    """One captured interface of a capture; ``id`` becomes its pcapng interface id."""

    id: SourceId
    name: Name
    """The pcapng ``if_name``, e.g. ``my-app/2:eth0``."""
    description: Label = ""
    """The pcapng ``if_description``: instance guid or agent id."""


class Absent(_Wire, frozen=True, kw_only=True):
    """An instance or source the capture does not hold, and why.

    ``partial``: pcapd should have captured it and could not (its agent unreachable, its start
    failed, lost and not back within the grace) — the capture is partial. Not partial: the
    platform reports it not running (CF ``DOWN``/``CRASHED``, a BOSH instance without a VM).
    """

    name: Name
    reason: Text
    partial: bool = False


class Counters(_Wire, frozen=True, kw_only=True):
    """Packet accounting: ``packets == written + agent_dropped + api_dropped + discarded``
    once a capture ends.

    ``packets``/``bytes`` count what libpcap handed to pcapd; ``kernel_*`` and
    ``interface_dropped`` are libpcap's own statistics; ``late`` counts packets the merge wrote
    out of timestamp order (they are part of ``written``, never lost).
    """

    packets: Count = 0
    bytes: Count = 0
    kernel_received: Count = 0
    kernel_dropped: Count = 0
    interface_dropped: Count = 0
    agent_dropped: Count = 0
    api_dropped: Count = 0
    written: Count = 0
    late: Count = 0
    discarded: Count = 0
    """Captured after the capture was complete (a count or size limit reached) and not
    written: they complete the identity ``packets == written + agent_dropped + api_dropped +
    discarded``."""


class SourceStatistics(Counters, frozen=True, kw_only=True):
    """Counters of one source plus its state."""

    source: SourceId
    state: SourceState


# --- messages ----------------------------------------------------------------------------------


class Hello(_Tagged, tag="hello", frozen=True, kw_only=True):
    """Initiator → responder, first message on every link: who I am and what I speak."""

    protocol: Level
    min_protocol: Level
    software: Name
    role: InitiatorRole


class Welcome(_Tagged, tag="welcome", frozen=True, kw_only=True):
    """Responder → initiator, answer to ``hello`` when the levels are compatible."""

    protocol: Level
    min_protocol: Level
    software: Name
    role: ResponderRole
    server_id: Name


class Start(_Tagged, tag="start", frozen=True, kw_only=True):
    """Initiator → responder: start the one capture of this link."""

    capture_id: CaptureId | None = None
    """Optional from a client (the api assigns one); required from the api to an agent."""
    target: Target
    options: CaptureOptions
    limits: CaptureLimits = CaptureLimits()
    upload: bool = False


class Stop(_Tagged, tag="stop", frozen=True, kw_only=True):
    """Initiator → responder: stop the capture gracefully; an ``end`` follows."""

    reason: StopReason = "requested"


class Token(_Tagged, tag="token", frozen=True, kw_only=True):
    """Client → api, during a capture: a refreshed access token for a capture that outlives
    the one it started with. Only on the client's link; never logged, never echoed."""

    token: Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN)]


class Status(_Tagged, tag="status", frozen=True, kw_only=True):
    """Initiator → responder, before ``start``: ask for a ``status_reply``."""


class StatusReply(_Tagged, tag="status_reply", frozen=True, kw_only=True):
    """Responder → initiator: health and compatibility of the server."""

    healthy: bool
    draining: bool
    software: Name
    protocol: Level
    min_protocol: Level
    server_id: Name
    captures: Count
    capture_ids: Annotated[list[CaptureId], Meta(max_length=MAX_LIST)] = []


class Started(_Tagged, tag="started", frozen=True, kw_only=True):
    """Responder → initiator: the capture runs; these are its sources (known so far)."""

    capture_id: CaptureId
    sources: Annotated[list[Source], Meta(max_length=MAX_LIST)]
    limits: CaptureLimits | None = None
    """The limits in force: the request's, lowered to the api's policy."""


class Notice(_Tagged, tag="message", frozen=True, kw_only=True):
    """Responder → initiator: something the user should read; the capture goes on."""

    code: Code
    text: Text
    origin: Name | None = None
    """Which instance or agent this is about."""
    source: SourceId | None = None
    party: Party | None = None
    """Who dropped packets (``CONGESTED``)."""
    count: Count | None = None
    limit: Name | None = None
    """Which limit was reached (``LIMIT_REACHED``), e.g. ``max_bytes``."""


class Statistics(_Tagged, tag="statistics", frozen=True, kw_only=True):
    """Responder → initiator, periodic and once more (``final``) before ``end``."""

    sources: Annotated[list[SourceStatistics], Meta(max_length=MAX_LIST)]
    final: bool = False


class StoredCapture(_Wire, frozen=True, kw_only=True):
    """A capture kept in the api's store (``--upload``), as its owner sees it."""

    capture_id: CaptureId
    target: Label = ""
    filter: Filter = ""
    started_at: Annotated[float, Meta(ge=0)]
    ended_at: Annotated[float, Meta(ge=0)] | None = None
    packets: Count = 0
    dropped: Count = 0
    size: Count = 0
    reason: Label = ""
    expires_at: Annotated[float, Meta(ge=0)]


class Download(_Tagged, tag="download", frozen=True, kw_only=True):
    """Api → client: where to fetch a stored capture (answers ``get_download``, and ends an
    uploaded capture inside ``end``). The URL is short-lived and never outlives retention."""

    capture: StoredCapture
    url: Annotated[str, Meta(min_length=1, max_length=MAX_URL)]
    url_expires_at: Annotated[float, Meta(ge=0)]


class End(_Tagged, tag="end", frozen=True, kw_only=True):
    """Responder → initiator, the last message of a capture: why it ended, and totals."""

    reason: EndReason
    text: Text = ""
    limit: Name | None = None
    totals: Counters = Counters()
    stored: Download | None = None
    """With ``upload``: the stored capture and its download URL."""
    expected: Count = 0
    """Sources the capture should have held (captured ones plus the ``partial`` absent)."""
    absent: Annotated[list[Absent], Meta(max_length=MAX_LIST)] = []
    """Instances or sources not in the capture, and why."""


# --- the flight recorder (``pcapd record``) ----------------------------------------------------

Timestamp = Annotated[int, Meta(ge=0, le=MAX_UINT)]
"""ns since the epoch: packet times and windows, exact to the packet (a float would not be)."""
Delay = Annotated[float, Meta(ge=0, le=MAX_DURATION)]
MAX_TRIGGERS_LISTED: Final = 20
"""Fired triggers listed per source (the newest; ``triggers_fired`` counts them all)."""
RecordingState = Literal["recording", "held", "ended", "lost"]
"""``recording``: capturing into its rings; ``held``: no longer capturing (a ``once`` trigger
fired), its rings kept for saving until stopped or ``ends_at``; ``ended``: rings freed;
``lost``: the agent no longer knows it (restarted)."""
RecordingEnd = Literal["stopped", "expired", "triggered", "failed", "drained", "lost"]


class RecordRing(_Wire, frozen=True, kw_only=True):
    """What each instance keeps: the last ``keep`` seconds, at most ``max_bytes`` (pcapng
    bytes held), for at most ``until`` seconds from the start. The api may lower them to its
    policy, never raise them; toward an agent ``max_bytes`` and ``until`` are required."""

    keep: Seconds
    max_bytes: Count | None = None
    until: Seconds | None = None


class Trigger(_Wire, frozen=True, kw_only=True):
    """A second BPF filter: a packet matching it fires a trigger, whose window (``keep``
    before it to ``after`` after it) the api saves on its own. ``once``: the recording stops
    capturing after the first trigger's window (its rings are kept for the save)."""

    filter: Annotated[str, Meta(min_length=1, max_length=MAX_FILTER)]
    after: Delay | None = None
    """Seconds after the matching packet; left out by a client: the api's default
    (``recorder.after.default``). The api always names it toward an agent."""
    once: bool = False


class Record(_Tagged, tag="record", frozen=True, kw_only=True):
    """Initiator → responder, in ``ready``: arm a recording (answered by
    ``recording_started``). It runs on without the link: the link may close at once."""

    recording_id: CaptureId | None = None
    """Optional from a client (the api assigns one); required from the api to an agent."""
    target: Target
    options: CaptureOptions
    ring: RecordRing
    trigger: Trigger | None = None


class RecordingStarted(_Tagged, tag="recording_started", frozen=True, kw_only=True):
    """Responder → initiator: the recording runs on these sources, until ``ends_at``."""

    recording_id: CaptureId
    sources: Annotated[list[Source], Meta(max_length=MAX_LIST)]
    ring: RecordRing
    """What is in force: the request's, lowered to policy."""
    ends_at: Annotated[float, Meta(ge=0)]
    """Seconds since the epoch: the recording frees itself then."""
    absent: Annotated[list[Absent], Meta(max_length=MAX_LIST)] = []


class RecordSave(_Tagged, tag="record_save", frozen=True, kw_only=True):
    """Initiator → responder, in ``ready``: the packets a recording holds in a window, answered
    as a capture is (``started``, data, ``statistics``, ``end``). The window is the ``last``
    seconds (by the responder's clock), or ``[start, end]`` (ns, both ends included; an end
    left out is open), or everything held."""

    recording_id: CaptureId
    last: Seconds | None = None
    start: Timestamp | None = None
    end: Timestamp | None = None
    upload: bool = False
    """From a client: store the file (as ``start``'s ``upload``)."""


class RecordStop(_Tagged, tag="record_stop", frozen=True, kw_only=True):
    """Initiator → responder, in ``ready``: stop a recording and free its rings at once.
    Answered by ``recording_list`` with its final state (empty: no such recording)."""

    recording_id: CaptureId


class ListRecordings(_Tagged, tag="list_recordings", frozen=True, kw_only=True):
    """Initiator → responder, in ``ready``: recordings and their rings (answered by
    ``recording_list``). ``watch`` (api → agent only): ``triggered`` messages may follow on
    this link, for as long as it is open."""

    recording_ids: Annotated[list[CaptureId], Meta(max_length=MAX_LIST)] = []
    """Empty: all of them (on a client link: the caller's)."""
    watch: bool = False


class TriggerFired(_Wire, frozen=True, kw_only=True):
    """One trigger: the matching packet's time and the window around it (ns)."""

    number: Annotated[int, Meta(ge=1, le=MAX_UINT)]
    at: Timestamp
    window_start: Timestamp
    window_end: Timestamp
    matches: Count = 1
    """Packets matching the trigger filter inside the window."""
    complete: bool = False
    """The window is whole (its end has passed): it can be saved."""


class RingStatus(_Wire, frozen=True, kw_only=True):
    """One source's ring of a recording: what it holds and what it let go."""

    source: Source
    state: RecordingState
    packets: Count = 0
    """Packets held now; ``bytes``: their pcapng bytes."""
    bytes: Count = 0
    first: Timestamp | None = None
    """ns of the oldest packet held; ``last``: of the newest."""
    last: Timestamp | None = None
    captured: Count = 0
    """Packets libpcap handed over since the start:
    ``captured == packets + aged_out_time + aged_out_size`` (until the rings are freed)."""
    aged_out_time: Count = 0
    aged_out_size: Count = 0
    kernel_dropped: Count = 0
    interface_dropped: Count = 0
    triggers: Annotated[list[TriggerFired], Meta(max_length=MAX_TRIGGERS_LISTED)] = []
    triggers_fired: Count = 0
    triggers_suppressed: Count = 0
    """Matches that fired no trigger: rate-limited (at most one a minute)."""
    text: Text = ""
    """Why it ended or was lost, for people."""


class Recording(_Wire, frozen=True, kw_only=True):
    """A recording as ``recording_list`` shows it."""

    recording_id: CaptureId
    target: Label = ""
    """For people, e.g. ``cf:my-org/dev/my-app`` (empty on an agent link)."""
    options: CaptureOptions
    ring: RecordRing
    trigger: Trigger | None = None
    started_at: Annotated[float, Meta(ge=0)]
    ends_at: Annotated[float, Meta(ge=0)]
    state: RecordingState
    end_reason: RecordingEnd | None = None
    end_text: Text = ""
    sources: Annotated[list[RingStatus], Meta(max_length=MAX_LIST)] = []
    absent: Annotated[list[Absent], Meta(max_length=MAX_LIST)] = []
    triggers_saved: Count = 0
    """(api → client) Triggers whose window the api saved into the store; ``saved`` names the
    newest stored captures (``pcapd captures download ID``)."""
    triggers_suppressed: Count = 0
    """(api → client) Triggers the api's rate limit (``recorder.trigger_interval``) skipped."""
    saved: Annotated[list[CaptureId], Meta(max_length=MAX_TRIGGERS_LISTED)] = []


class RecordingList(_Tagged, tag="recording_list", frozen=True, kw_only=True):
    """Answer to ``list_recordings`` and ``record_stop``."""

    recordings: Annotated[list[Recording], Meta(max_length=MAX_LIST)]


class Triggered(_Tagged, tag="triggered", frozen=True, kw_only=True):
    """Agent → api, on a link that asked ``list_recordings`` with ``watch``: a trigger's
    window is whole; save it. A link that was down meanwhile catches up with
    ``list_recordings`` (every source lists its fired triggers)."""

    recording_id: CaptureId
    source: Name
    """The source's ``if_name``, e.g. ``my-app/2:eth0``."""
    trigger: TriggerFired
    stopping: bool = False
    """``once``: the recording captures no more (its rings are kept for the save)."""


class ListCaptures(_Tagged, tag="list_captures", frozen=True, kw_only=True):
    """Client → api, before ``start``: the caller's stored captures (answered by
    ``capture_list``)."""


class CaptureList(_Tagged, tag="capture_list", frozen=True, kw_only=True):
    """Api → client: the caller's own stored captures, newest first."""

    captures: Annotated[list[StoredCapture], Meta(max_length=MAX_LIST)]


class GetDownload(_Tagged, tag="get_download", frozen=True, kw_only=True):
    """Client → api, before ``start``: a download URL for one of the caller's captures."""

    capture_id: CaptureId


class ListDevices(_Tagged, tag="list_devices", frozen=True, kw_only=True):
    """Before ``start``, as ``tcpdump -D``: the devices each source of ``target`` has. Client
    → api with a cf, bosh or local target (authenticated and authorized as a capture of it
    would be); api → agent with the resolved :class:`AgentTarget`. Answered by
    ``device_list``."""

    target: Target


class SourceDevices(_Wire, frozen=True, kw_only=True):
    """The devices of one source (``my-app/0``, ``router/d55b…``), or why they are unknown."""

    origin: Name
    devices: Annotated[list[Name], Meta(max_length=MAX_LIST)] = []
    problem: Text = ""


class DeviceList(_Tagged, tag="device_list", frozen=True, kw_only=True):
    """Answer to ``list_devices``: one entry per source, in the target's order."""

    sources: Annotated[list[SourceDevices], Meta(max_length=MAX_LIST)]


class Error(_Tagged, tag="error", frozen=True, kw_only=True):
    """Either side, any time: the link is over (refusal or protocol violation); close it."""

    code: Code
    text: Text
    origin: Name | None = None


Message = (
    Hello
    | Welcome
    | Start
    | Stop
    | Token
    | Status
    | StatusReply
    | ListCaptures
    | CaptureList
    | GetDownload
    | Download
    | ListDevices
    | DeviceList
    | Record
    | RecordingStarted
    | RecordSave
    | RecordStop
    | ListRecordings
    | RecordingList
    | Triggered
    | Started
    | Notice
    | Statistics
    | End
    | Error
)
"""Any control message."""
MESSAGE_TYPES: Final[tuple[type[Message], ...]] = get_args(Message)


def fit_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, ending with "…" when cut: a message for a person
    (a refusal quoting 1,024 instances, a long filter) must still reach them."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def absent(name: str, reason: str, *, partial: bool = False) -> Absent:
    """An :class:`Absent` whose name and reason fit the protocol's limits, cut with "…" (an
    agent's refusal quoting a 4 KiB filter, behind its origin): a message that does not fit
    is never sent, and the capture's answer with it."""
    return Absent(name=fit_text(name, MAX_NAME), reason=fit_text(reason), partial=partial)


def source_problem(origin: str, problem: str) -> SourceDevices:
    """A :class:`SourceDevices` saying why a source's devices are unknown, cut to fit like
    :func:`absent`."""
    return SourceDevices(origin=fit_text(origin, MAX_NAME), problem=fit_text(problem))


def type_code(msg: Message | type[Message]) -> str:
    """The wire ``type`` of a message or message class, e.g. ``status_reply``."""
    tag = msg.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


@dataclass(frozen=True, slots=True)
class Data:
    """A BINARY message: pcapng blocks (opaque here) and a watermark.

    ``watermark`` (ns since the epoch, 0 = none) promises that no later packet on this link has
    an earlier timestamp; it is what lets the api's merge move on past an idle source. An empty
    ``payload`` with a watermark is a heartbeat. Decoded, ``payload`` is a view into the received
    message (no copy), which it keeps alive: copy out with ``bytes(...)`` whatever is kept long.
    """

    watermark: int
    payload: bytes | memoryview = b""

    @property
    def is_heartbeat(self) -> bool:
        return not self.payload
