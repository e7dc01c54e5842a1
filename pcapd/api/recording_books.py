"""The flight recorder's books on the api (pure): records, listing rows, triggers, audit fields.

Everything the api's recorder decides without waiting on an agent or the store lives here, so
it is tested with numbers: the record a ``record start`` writes (from the request, its
resolution's audit facts and the armed rings), what the agents' ``recording_list`` answers
make of each ring (held, lost, ended) and of the recording as its owner sees it, which rings a
``record save`` may still read, which agents a trigger watch must keep a link to, what a
trigger's save should do (its stored capture's id, the rate limit, ``--once``), and the fields
of an audit line. The Trio side (:mod:`pcapd.api.recordings`, :mod:`pcapd.api.trigger_watch`)
asks the agents and the store and hands the answers in; the caller passes ``now``.

No I/O, no Trio.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from pcapd.api.recording_policy import RecordingParameters, TriggerDecision, TriggerLimiter
from pcapd.proto import (
    Absent,
    BoshTarget,
    CaptureOptions,
    CfTarget,
    Error,
    LocalTarget,
    Message,
    Recording,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RingStatus,
    Source,
    Trigger,
    TriggerFired,
)
from pcapd.proto.messages import MAX_TRIGGERS_LISTED, RecordingEnd, RecordingState
from pcapd.proto.messages import absent as fitted_absent
from pcapd.store.recordings import (
    BoshRecordingTarget,
    CfRecordingTarget,
    FiredTrigger,
    LocalRecordingTarget,
    RecordingAgent,
    RecordingTarget,
    current_state,
    record_fired,
)
from pcapd.store.recordings import Recording as Record_
from pcapd.store.recordings import Trigger as StoredTrigger
from pcapd.store.recordings import stop as stopped_record

NS = 1_000_000_000

RingAnswer = RingStatus | str
"""A ring as its agent last told: a :class:`RingStatus`, or why it is not known (its agent did
not answer: the reason; no longer held: ``""``)."""

Watched = dict[str, dict[str, tuple[str, str]]]
"""address → {agent's recording id → (owner, recording id)}: the rings a trigger watch follows."""


# --- ids and targets --------------------------------------------------------------------------


def trigger_capture_id(recording_id: str, origin: str, at_ns: int) -> str:
    """The stored capture of one trigger: the same on every api VM (32 hex digits)."""
    return hashlib.sha256(f"{recording_id}\0{origin}\0{at_ns}".encode()).hexdigest()[:32]


_NAME_GUID = re.compile(r".*\(([^()]+)\)\s*\Z")


def guid_in(text: str | None) -> str:
    """``org (guid)`` → ``guid`` (the audit's form); ``?`` when Cloud Controller did not say."""
    match = _NAME_GUID.fullmatch(text or "")
    return match[1][:256] if match else "?"


def record_target(target: CfTarget | BoshTarget | LocalTarget, audit: Mapping[str, str],
                  app_guids: Iterable[str | None] = ()) -> RecordingTarget:
    """The target as the record keeps it: a CF app by its guids (from the resolution's audit
    facts, else the first job's app guid), so a later save asks for the same app."""
    if isinstance(target, CfTarget):
        app_guid = audit.get("app_guid") or next((g for g in app_guids if g), None)
        return CfRecordingTarget(
            org_guid=guid_in(audit.get("org")), space_guid=guid_in(audit.get("space")),
            app_guid=app_guid or target.app, app_name=target.app,
            process_type=target.process_type, instances=list(target.instances))
    if isinstance(target, BoshTarget):
        return BoshRecordingTarget(deployment=target.deployment, groups=list(target.groups),
                                   instances=list(target.instances))
    return LocalRecordingTarget(netns=list(target.netns))


def target_of(target: RecordingTarget) -> CfTarget | BoshTarget | LocalTarget:
    """The request a recording's target is authorized as again (a CF app by its guid: the
    same app, whatever it is called now)."""
    if isinstance(target, CfRecordingTarget):
        return CfTarget(app=target.app_guid, instances=list(target.instances),
                        process_type=target.process_type)
    if isinstance(target, BoshRecordingTarget):
        return BoshTarget(deployment=target.deployment, groups=list(target.groups),
                          instances=list(target.instances))
    return LocalTarget(netns=list(target.netns))


def options_of(rec: Record_) -> CaptureOptions:
    return CaptureOptions(device=rec.device, filter=rec.filter, snaplen=rec.snaplen)


# --- start ------------------------------------------------------------------------------------


def wire_ring(params: RecordingParameters) -> RecordRing:
    return RecordRing(keep=params.keep, max_bytes=params.max_bytes, until=params.until)


def wire_trigger(trigger: Trigger | None, params: RecordingParameters) -> Trigger | None:
    """The trigger the agents arm: the user's filter, the policy's ``after`` and ``once``."""
    return None if trigger is None else Trigger(filter=trigger.filter, after=params.after,
                                                once=params.once)


def arm_result(origin: str, address: str, namespace: str, agent_rid: str, answer: Message
               ) -> tuple[RecordingAgent, Source] | Absent:
    """One agent's answer to ``record``: its ring (and the source it names), or why not."""
    if isinstance(answer, RecordingStarted) and answer.sources:
        return (RecordingAgent(origin=origin, address=address, namespace=namespace,
                               recording_id=agent_rid), answer.sources[0])
    text = answer.text if isinstance(answer, Error) else "an unexpected answer"
    return fitted_absent(origin, f"{origin}: {text}", partial=True)


def new_record(*, recording_id: str, owner: str, user_name: str,
               target: CfTarget | BoshTarget | LocalTarget, label: str,
               audit: Mapping[str, str], app_guids: Iterable[str | None],
               options: CaptureOptions, params: RecordingParameters, trigger: Trigger | None,
               agents: list[RecordingAgent], now: float) -> Record_:
    """The record a ``record start`` keeps: who, what, where, until when, which rings."""
    return Record_(
        recording_id=recording_id, owner=owner, user_name=user_name[:256],
        target=record_target(target, audit, app_guids), label=label[:256],
        device=options.device, filter=options.filter, snaplen=options.snaplen,
        keep=params.keep, max_bytes=params.max_bytes, created_at=now, ends_at=params.ends_at(now),
        trigger=None if trigger is None else StoredTrigger(
            filter=trigger.filter, after=params.after or 0.0, once=params.once),
        agents=agents)


def started_answer(rec: Record_, ring: RecordRing, armed: list[tuple[RecordingAgent, Source]],
                   absent: list[Absent]) -> RecordingStarted:
    return RecordingStarted(recording_id=rec.recording_id, sources=[
        Source(id=i, name=source.name, description=source.description)
        for i, (_, source) in enumerate(armed)], ring=ring, ends_at=rec.ends_at,
        absent=absent[:1024])


# --- list, stop, save -------------------------------------------------------------------------


def ring_of(recording: Recording | None) -> RingAnswer:
    """An agent's listed recording as one ring (``""``: the agent no longer holds it)."""
    if recording is None or not recording.sources:
        return ""
    ring = recording.sources[0]
    if recording.state == "ended":
        return msgspec.structs.replace(ring, state="ended", text=recording.end_text)
    return ring


def rings_answered(agent_rids: Iterable[str], answer: Message) -> dict[str, RingAnswer]:
    """An agent's answer to ``list_recordings``, by the agent's recording id asked."""
    listed = answer.recordings if isinstance(answer, RecordingList) else []
    known = {r.recording_id: r for r in listed}
    return {rid: ring_of(known.get(rid)) for rid in agent_rids}


def final_ring(answer: Message) -> RingAnswer:
    """An agent's answer to ``record_stop``: the ring as it was freed."""
    listed = answer.recordings if isinstance(answer, RecordingList) else []
    return ring_of(listed[0] if listed else None)


def ring_figures(rings: Mapping[str, RingAnswer]) -> dict[str, tuple[int, int]]:
    """(bytes held, packets aged out) of the rings whose status is known, for the metrics."""
    return {rid: (s.bytes, s.aged_out_time + s.aged_out_size)
            for rid, s in rings.items() if isinstance(s, RingStatus)}


def lost_agents(rec: Record_, rings: Mapping[str, RingAnswer]) -> list[RecordingAgent]:
    """The recording's rings their agents answered they no longer hold (a restart lost them)."""
    return [a for a in rec.agents if a.lost_at is None and rings.get(a.recording_id) == ""]


def note_lost(rec: Record_, lost: list[RecordingAgent], now: float) -> Record_:
    agents = [msgspec.structs.replace(a, lost_at=now) if a in lost else a for a in rec.agents]
    return msgspec.structs.replace(rec, agents=agents)


def listed(rec: Record_, rings: Mapping[str, RingAnswer], now: float) -> Recording:
    """The record as ``recording_list`` shows it to its owner."""
    state = current_state(rec, now)
    sources: list[RingStatus] = []
    for index, agent in enumerate(rec.agents):
        source = Source(id=index, name=f"{agent.origin}:{rec.device}",
                        description=agent.namespace)
        found = rings.get(agent.recording_id)
        if state != "armed":
            sources.append(RingStatus(source=source, state="ended"))
        elif isinstance(found, RingStatus):
            sources.append(msgspec.structs.replace(found, source=source))
        elif agent.lost_at is not None or found == "":
            sources.append(RingStatus(source=source, state="lost", text=(
                "its agent no longer holds the ring (it restarted, or the instance "
                "moved): what it held is gone")))
        else:
            sources.append(RingStatus(source=source, state="lost",
                                      text=found or "its agent was not asked"))
    wire_state: RecordingState
    end_reason: RecordingEnd | None = None
    if state != "armed":
        wire_state, end_reason = "ended", state
    elif sources and all(s.state == "lost" for s in sources):
        wire_state = "lost"
    elif sources and all(s.state in ("held", "lost") for s in sources):
        wire_state = "held"
    else:
        wire_state = "recording"
    ended = rec.stopped_at if rec.stopped_at is not None else rec.ends_at
    return Recording(
        recording_id=rec.recording_id, target=rec.label, options=options_of(rec),
        ring=RecordRing(keep=rec.keep, max_bytes=rec.max_bytes,
                        until=max(rec.ends_at - rec.created_at, 1e-3)),
        trigger=None if rec.trigger is None else Trigger(
            filter=rec.trigger.filter, after=rec.trigger.after, once=rec.trigger.once),
        started_at=rec.created_at, ends_at=ended if state != "armed" else rec.ends_at,
        state=wire_state, end_reason=end_reason, sources=sources[:1024],
        triggers_saved=rec.triggers_fired, triggers_suppressed=rec.triggers_suppressed,
        saved=[f.capture_id for f in rec.fired if f.capture_id][-MAX_TRIGGERS_LISTED:])


def saved_agents(rec: Record_, allowed: set[str]
                 ) -> tuple[list[RecordingAgent], list[tuple[str, str]]]:
    """The rings a ``record save`` reads: the recording's instances the platform still lets
    the user see, and (origin, why not) for the others. A ring noted lost (its agent
    restarted) is asked all the same: its agent's refusal makes the save partial (exit
    status 3), as it does when no listing noticed the loss first — the file lacks what the
    user armed it for, unlike an instance the platform removed."""
    agents, unavailable = [], []
    for agent in rec.agents:
        if agent.origin not in allowed:
            unavailable.append((agent.origin, f"{agent.origin}: no longer part of the target "
                                "(removed, or no longer yours to see)"))
        else:
            agents.append(agent)
    return agents, unavailable


# --- triggers ---------------------------------------------------------------------------------


def watched_of(records: Iterable[Record_], now: float) -> Watched:
    """The rings to watch: every armed recording's with a trigger, whose agent still holds it."""
    wanted: Watched = {}
    for rec in records:
        if rec.trigger is None or current_state(rec, now) != "armed":
            continue
        for agent in rec.agents:
            if agent.lost_at is None:
                wanted.setdefault(agent.address, {})[agent.recording_id] = (
                    rec.owner, rec.recording_id)
    return wanted


def watch(watched: Watched, rec: Record_) -> list[str]:
    """Add a recording's rings; the addresses of its agents."""
    for agent in rec.agents:
        watched.setdefault(agent.address, {})[agent.recording_id] = (rec.owner, rec.recording_id)
    return [agent.address for agent in rec.agents]


def unwatch(watched: Watched, rec: Record_) -> list[str]:
    """Forget a recording's rings; the addresses no longer watched for anything."""
    emptied = []
    for agent in rec.agents:
        held = watched.get(agent.address)
        if held is not None:
            held.pop(agent.recording_id, None)
            if not held:
                del watched[agent.address]
                emptied.append(agent.address)
    return emptied


def caught_up(watched_here: Mapping[str, object], listed: Iterable[Recording]
              ) -> tuple[dict[str, tuple[int, int]], list[tuple[str, TriggerFired]]]:
    """What an agent's first ``recording_list`` on a watching link says of the watched rings:
    their figures for the metrics, and the complete triggers it lists (the api may have missed
    them: link down, restart) as (agent's recording id, trigger)."""
    statuses, fired = {}, []
    for recording in listed:
        if recording.recording_id not in watched_here:
            continue
        for ring in recording.sources[:1]:
            statuses[recording.recording_id] = (ring.bytes,
                                                ring.aged_out_time + ring.aged_out_size)
            fired += [(recording.recording_id, f) for f in ring.triggers if f.complete]
    return statuses, fired


@dataclass(frozen=True, slots=True)
class TriggerPlan:
    """What to do with one complete trigger of an armed recording."""

    agent: RecordingAgent
    capture_id: str
    """The stored capture's id (:func:`trigger_capture_id`)."""
    at: float
    """When it fired (seconds; never before the recording began)."""
    decision: TriggerDecision


def plan_trigger(rec: Record_, agent_rid: str, fired: TriggerFired, interval: float,
                 now: float) -> TriggerPlan | None:
    """The plan for a trigger, or None when there is nothing to do: the recording is not armed
    or has no trigger, the ring is not its, or the trigger is already in the record (handled
    by this api, or another api VM). The limiter is rebuilt from the record."""
    if rec.trigger is None or current_state(rec, now) != "armed":
        return None
    agent = next((a for a in rec.agents if a.recording_id == agent_rid), None)
    if agent is None:
        return None
    capture_id = trigger_capture_id(rec.recording_id, agent.origin, fired.at)
    if any(f.capture_id == capture_id for f in rec.fired):
        return None
    limiter = TriggerLimiter.resumed(interval, once=rec.trigger.once,
                                     fired_at=[f.at for f in rec.fired],
                                     triggers_fired=rec.triggers_fired)
    at = fired_at(rec, fired)
    return TriggerPlan(agent, capture_id, at, limiter.offer(at))


def fired_at(rec: Record_, fired: TriggerFired) -> float:
    return max(fired.at / NS, rec.created_at)


def after_save(rec: Record_, plan: TriggerPlan, saved: FiredTrigger, now: float
               ) -> tuple[Record_, bool]:
    """The record once a trigger's window was saved (or not) into ``rec`` as it is now in the
    store; True when ``--once`` stops the recording."""
    if not any(f.capture_id == plan.capture_id for f in rec.fired):
        rec = record_fired(rec, msgspec.structs.replace(saved, at=plan.at))
    stopping = plan.decision.stop and current_state(rec, now) == "armed"
    if stopping:
        rec = stopped_record(rec, now)
    return rec, stopping


# --- audit ------------------------------------------------------------------------------------


def audit_fields(event: str, rec: Record_, **more: object) -> dict[str, object]:
    """One audit line's fields: who, which target (org/space or deployment), which instances,
    the filter."""
    return {"event": event, "recording_id": rec.recording_id, "user": rec.user_name,
            "owner": rec.owner, "target": rec.label, "filter": rec.filter,
            "trigger": rec.trigger.filter if rec.trigger else None,
            "instances": [a.origin for a in rec.agents], **_audit_of(rec.target), **more}


def _audit_of(target: RecordingTarget) -> dict[str, str]:
    if isinstance(target, CfRecordingTarget):
        return {"org_guid": target.org_guid, "space_guid": target.space_guid,
                "app_guid": target.app_guid, "process_type": target.process_type}
    if isinstance(target, BoshRecordingTarget):
        return {"deployment": target.deployment, "groups": ",".join(target.groups)}
    return {}
