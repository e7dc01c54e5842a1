"""Recording records: what the api remembers of each ``pcapd record`` flight recorder (pure).

The rings themselves live on the agents; the record is who armed what, where and until when,
which agent holds which ring, and which triggers fired. It is kept in the store beside stored
captures — ``recordings/<owner>/<recording id>.json`` — so every api VM, and an api after a
restart, sees the same recordings. Owners are the store's owner keys
(:func:`pcapd.api.upload.owner_key`: ``<realm>.user.<id>``, ``<realm>.client.<id>``, or
``local`` in local mode), so a recording is found only under the key of the identity that made
it: another user's listing never reads it.

A record read back is hostile until checked: a bucket is writable by whoever holds its keys,
and a file on disk by whoever has the api's uid. :func:`decode_recording` takes bytes and gives
a :class:`Recording` or raises :class:`RecordingRecordError` (a message, never a traceback);
:func:`read_recording` also checks that the record is the one its key names, so a record copied
into another owner's folder is refused, not served to that owner.

No I/O, no clock (callers pass ``now``), no Trio: the store backends
(:mod:`pcapd.store.recording_store`) do the reading and writing.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from pcapd.errors import PcapdError

RECORDINGS_PREFIX = "recordings"
FORMAT: Final = 1
"""The record layout's version; a record of another version is refused by name."""
MAX_RECORD_BYTES = 1 << 20
"""A record is a few kB (1024 instances at most); anything larger is not one of ours."""
MAX_FIRED = 100
"""Fired triggers a record lists (the newest); ``triggers_fired`` counts them all."""

RECORDING_ID = re.compile(r"[a-f0-9]{32}")
OWNER = re.compile(r"local|[a-f0-9]{12}\.(?:user|client)\.[A-Za-z0-9_-]{1,100}")
"""What :func:`pcapd.api.upload.owner_key` makes (and local mode's ``local``); nothing else."""

_MAX_NAME = 256
_MAX_LIST = 1024
_MAX_FILTER = 8192
_MAX_SECONDS = 1e9  # far beyond any policy; keeps ``seconds * 1e9`` inside 64 bits
_MAX_BYTES = 2**63 - 1

Name = Annotated[str, Meta(min_length=1, max_length=_MAX_NAME)]
Label = Annotated[str, Meta(max_length=_MAX_NAME)]
Filter = Annotated[str, Meta(max_length=_MAX_FILTER)]
Seconds = Annotated[float, Meta(gt=0, le=_MAX_SECONDS)]
Moment = Annotated[float, Meta(ge=0, le=1e11)]  # a wall-clock time (year 5138 at most)
Bytes = Annotated[int, Meta(ge=1, le=_MAX_BYTES)]
Counter = Annotated[int, Meta(ge=0, le=_MAX_BYTES)]
Index = Annotated[int, Meta(ge=0, le=2**31 - 1)]
AgentRecordingId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")]
"""The agent's own name for its ring; safe in a log line whatever the agent sent."""
CaptureId = Annotated[str, Meta(pattern=r"^[a-f0-9]{32}\Z")]

State = Literal["armed", "stopped", "expired"]
STATES: tuple[State, ...] = ("armed", "stopped", "expired")


class RecordingRecordError(PcapdError, ValueError):
    """A recording record or id that cannot be one of ours: damaged, tampered with, written by
    another program or version, or stored under a key that is not its own."""


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Immutable, keyword-only, strict: an unknown field is a foreign record, not a default."""


class CfRecordingTarget(_Record, tag_field="kind", tag="cf", frozen=True, kw_only=True):
    """App instances, resolved at the start: ``save`` asks Cloud Controller again with these
    guids (an app renamed since is still the same app; a space role removed is noticed)."""

    org_guid: Name
    space_guid: Name
    app_guid: Name
    app_name: Name  # as the user named it at the start, for the listing
    process_type: Name = "web"
    instances: Annotated[list[Index], Meta(max_length=_MAX_LIST)] = []  # empty: all at the start


class BoshRecordingTarget(_Record, tag_field="kind", tag="bosh", frozen=True, kw_only=True):
    """VMs of a deployment; ``instances`` empty means every VM of the groups at the start."""

    deployment: Name
    groups: Annotated[list[Name], Meta(min_length=1, max_length=_MAX_LIST)]
    instances: Annotated[list[Name], Meta(max_length=_MAX_LIST)] = []


class LocalRecordingTarget(_Record, tag_field="kind", tag="local", frozen=True, kw_only=True):
    """Network namespaces on the machine of an embedded api (local mode, tests)."""

    netns: Annotated[list[Name], Meta(max_length=_MAX_LIST)] = []


RecordingTarget = CfRecordingTarget | BoshRecordingTarget | LocalRecordingTarget


class Trigger(_Record, frozen=True, kw_only=True):
    """``--trigger BPF [--after D] [--once]``: save ``keep`` before a matching packet to
    ``after`` after it into the store, by itself."""

    filter: Annotated[str, Meta(min_length=1, max_length=_MAX_FILTER)]
    after: Annotated[float, Meta(ge=0, le=_MAX_SECONDS)]
    once: bool = False


class RecordingAgent(_Record, frozen=True, kw_only=True):
    """One instance's ring: which agent holds it, under which id of the agent's own."""

    origin: Name  # the instance as users see it: my-app/2, router/d55baeba-...
    address: Name  # host:port the api dials
    namespace: Name  # the agent's capture target: host, or the container's instance guid
    recording_id: AgentRecordingId  # the agent's id for the ring
    lost_at: Moment | None = None  # the agent no longer had the ring (restart): when noticed


class FiredTrigger(_Record, frozen=True, kw_only=True):
    """One trigger that fired: when, where, and the stored capture it saved (None while the
    window after it is still being recorded, or when the save failed: ``problem`` says why)."""

    at: Moment
    origin: Name
    capture_id: CaptureId | None = None
    problem: Annotated[str, Meta(max_length=1024)] | None = None


class Recording(_Record, frozen=True, kw_only=True):
    """One flight recorder, as the store keeps it (see the module's docstring)."""

    format: Literal[1] = 1  # FORMAT
    recording_id: Annotated[str, Meta(pattern=r"^[a-f0-9]{32}\Z")]
    owner: Annotated[str, Meta(pattern=rf"^(?:{OWNER.pattern})\Z")]
    user_name: Label
    target: RecordingTarget
    label: Label  # how listings and the audit log name the target, e.g. cf:org/space/my-app
    device: Name
    filter: Filter = ""
    snaplen: Annotated[int, Meta(ge=1, le=262144)]
    keep: Seconds  # seconds of packets each ring holds
    max_bytes: Bytes  # bytes each instance's ring holds at most
    created_at: Moment
    ends_at: Moment  # the recording frees itself then (--until)
    trigger: Trigger | None = None
    agents: Annotated[list[RecordingAgent], Meta(max_length=_MAX_LIST)] = []
    state: State = "armed"
    stopped_at: Moment | None = None  # when stopped or found expired
    triggers_fired: Counter = 0  # triggers whose window was saved (or is being saved)
    triggers_suppressed: Counter = 0  # triggers the rate limit (recorder.trigger_interval) skipped
    fired: Annotated[list[FiredTrigger], Meta(max_length=MAX_FIRED)] = []  # the newest


# -- ids and keys --------------------------------------------------------------------------------


def new_recording_id() -> str:
    """128 random bits as 32 hex digits: unguessable, and safe in a key and a log line."""
    return secrets.token_hex(16)


def check_recording_id(recording_id: object) -> str:
    if not isinstance(recording_id, str) or not RECORDING_ID.fullmatch(recording_id):
        raise RecordingRecordError(
            f"not a recording id: {recording_id!r:.80} (expected 32 hex digits, as "
            "`pcapd record list` shows them)")
    return recording_id


def check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not OWNER.fullmatch(owner):
        raise RecordingRecordError(
            f"owner {owner!r:.80} is not an owner key (<realm>.user.<id>, "
            "<realm>.client.<id> or local)")
    return owner


def owner_prefix(owner: str) -> str:
    """``recordings/<owner>/``."""
    return f"{RECORDINGS_PREFIX}/{check_owner(owner)}/"


def recording_key(owner: str, recording_id: str) -> str:
    """``recordings/<owner>/<recording id>.json``, both checked."""
    return f"{owner_prefix(owner)}{check_recording_id(recording_id)}.json"


def parse_key(key: str) -> tuple[str, str] | None:
    """(owner, recording id) of a key :func:`recording_key` could have made; None otherwise
    (a stray object, a temporary file, anything foreign under the prefix)."""
    top, _, rest = key.partition("/")
    owner, _, name = rest.partition("/")
    recording_id, dot, ext = name.partition(".")
    if top != RECORDINGS_PREFIX or not dot or ext != "json" or "/" in name:
        return None
    if not OWNER.fullmatch(owner) or not RECORDING_ID.fullmatch(recording_id):
        return None
    return owner, recording_id


# -- records -------------------------------------------------------------------------------------


def check_recording(rec: Recording) -> Recording:
    """The rules between fields that the types cannot say; RecordingRecordError naming the
    first one broken."""
    check_owner(rec.owner)
    check_recording_id(rec.recording_id)
    problem = None
    if rec.ends_at <= rec.created_at:
        problem = "ends_at is not after created_at"
    elif (rec.state == "armed") != (rec.stopped_at is None):
        problem = f"state {rec.state} with stopped_at {rec.stopped_at}"
    elif rec.stopped_at is not None and rec.stopped_at < rec.created_at:
        problem = "stopped_at is before created_at"
    elif len(rec.fired) > rec.triggers_fired:
        problem = f"lists {len(rec.fired)} fired triggers but counts {rec.triggers_fired}"
    elif rec.trigger is None and (rec.triggers_fired or rec.triggers_suppressed):
        problem = "triggers fired without a trigger"
    elif len({a.origin for a in rec.agents}) != len(rec.agents):
        problem = "an instance is listed twice"
    elif any(f.at < rec.created_at for f in rec.fired):
        problem = "a trigger fired before the recording was created"
    if problem is not None:
        raise RecordingRecordError(f"recording {rec.recording_id}: inconsistent record "
                                   f"({problem})")
    return rec


def encode_recording(rec: Recording) -> bytes:
    """The JSON stored for a recording (checked first: the store never holds a bad one)."""
    return msgspec.json.encode(check_recording(rec))


_decoder = msgspec.json.Decoder(Recording)


def decode_recording(data: bytes) -> Recording:
    """A stored record back; RecordingRecordError saying what is wrong when it is not one."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordingRecordError(
            f"not a recording record: {len(data)} bytes (a record is at most "
            f"{MAX_RECORD_BYTES})")
    try:
        rec = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RecordingRecordError(f"not a recording record: {exc}") from None
    return check_recording(rec)


def read_recording(data: bytes, owner: str, recording_id: str) -> Recording:
    """:func:`decode_recording` for the record stored under ``owner``/``recording_id``:
    one that names another owner or id (copied, or tampered with) is refused."""
    rec = decode_recording(data)
    if (rec.owner, rec.recording_id) != (owner, recording_id):
        raise RecordingRecordError(
            f"{recording_key(owner, recording_id)} holds the record of another recording "
            f"({rec.recording_id} of {rec.owner}): refused")
    return rec


# -- what time does to a record ------------------------------------------------------------------


def current_state(rec: Recording, now: float) -> State:
    """The state a listing shows: an armed recording past ``ends_at`` has expired, whether
    or not an api has written that down yet."""
    if rec.state == "armed" and now >= rec.ends_at:
        return "expired"
    return rec.state


def expire(rec: Recording, now: float) -> Recording:
    """The record with its expiry written down (unchanged when not yet expired)."""
    if current_state(rec, now) != "expired" or rec.state == "expired":
        return rec
    return msgspec.structs.replace(rec, state="expired", stopped_at=rec.ends_at)


def stop(rec: Recording, now: float) -> Recording:
    """The record of a recording stopped now (an expired one keeps its expiry)."""
    rec = expire(rec, now)
    if rec.state != "armed":
        return rec
    return msgspec.structs.replace(rec, state="stopped", stopped_at=max(now, rec.created_at))


def record_fired(rec: Recording, fired: FiredTrigger) -> Recording:
    """The record with one more fired trigger (the list keeps the newest :data:`MAX_FIRED`)."""
    listed = [*rec.fired, fired][-MAX_FIRED:]
    return msgspec.structs.replace(rec, fired=listed, triggers_fired=rec.triggers_fired + 1)


def record_suppressed(rec: Recording, count: int = 1) -> Recording:
    """The record with ``count`` more triggers skipped by the rate limit."""
    return msgspec.structs.replace(rec, triggers_suppressed=rec.triggers_suppressed + count)


def forgettable(rec: Recording, now: float, retention: float) -> bool:
    """Whether the record may go: ended ``retention`` ago (the stored captures its triggers
    saved expire after the same retention, so ``record list`` names them while they exist)."""
    if current_state(rec, now) == "armed":
        return False
    ended = rec.stopped_at if rec.stopped_at is not None else rec.ends_at
    return now >= ended + retention


def armed_owners(records: list[Recording], now: float) -> list[str]:
    """The owner of every recording still armed (to count against ``recorder.per_user`` and
    ``recorder.total``)."""
    return [r.owner for r in records if current_state(r, now) == "armed"]
