"""The flight recorder on the api: ``pcapd record start|list|save|stop``, and its triggers.

Theory of operation. A recording is armed on the agents (each instance's agent keeps a ring,
:mod:`pcapd.agent.recorder`) and remembered in the store (:mod:`pcapd.store.recordings`): who
armed what, where, until when, which agent holds which ring. Nothing about it lives in one api
process, so any api VM — and an api after a restart — lists, saves and stops it alike.

- **start**: the token is verified, the target resolved by the platform with the user's token
  (exactly as a capture: :meth:`Api._admit`, which also compiles the filter in the limited
  child), the trigger filter compiled likewise, the request held to the api's policy
  (:mod:`pcapd.api.recording_policy`, refused naming the flag) and to ``recorder.per_user`` /
  ``recorder.total`` (counted over the store's records: all api VMs). Each instance's agent is
  asked to arm its ring (``record``); instances whose agent refused or did not answer are
  reported as a partial capture's are. The record is written only when at least one ring
  runs; the answer comes at once — the recording does not need the user.
- **list**: the caller's records (by owner key, so another user's are never read), each asked
  of its agents (``list_recordings``): what every ring holds, what aged out, which triggers
  fired. A ring its agent no longer knows (the agent restarted) is shown ``lost``.
- **save**: the token *and the permission* are checked again by resolving the target anew with
  the user's token: a user who lost access gets nothing. The rings' windows (``record_save``)
  are merged exactly as a capture's streams (:class:`~pcapd.api.capture.ApiCapture`), to the
  user or into the store.
- **stop**: owner only; every ring is freed (``record_stop``) and the record marked stopped.

Another user's recording answers exactly as one that does not exist: ids do not leak.

Triggers. Each api process keeps one *watching* link (``list_recordings`` with ``watch``) to
every agent that holds a ring of an armed recording with a trigger — the recordings it armed
itself at once, everyone's from the store every :data:`WATCH_REFRESH` seconds (so after a
restart, and those armed through another api VM). On ``triggered`` (or, after a link was down,
on a complete trigger the agent lists) the api saves the window from every instance into the
store as the owner's capture, rate-limited by :class:`~pcapd.api.recording_policy.TriggerLimiter`
rebuilt from the record. With several api VMs every one of them watches: the stored capture's id
is derived from the recording, the instance and the trigger's time, so the second VM to handle
a trigger finds it saved (or writes the same object again) and the record lists it once.
A triggered save runs under the authorization given at the start (tokens are not kept); the
user still needs a valid token of their own to list or download it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import msgspec
import trio
from prometheus_client import Counter, Gauge

from pcapd.agent.bpf import InvalidFilter
from pcapd.agent.bpf_worker import check_filter
from pcapd.api.agents import AgentJob, AgentRefused, open_agent_link
from pcapd.api.capture import START_TIMEOUT, ApiCapture, NoSourceStarted
from pcapd.api.recording_policy import (
    RecordingRefused,
    RecordingRequest,
    TriggerLimiter,
    check_room,
    effective_parameters,
)
from pcapd.api.resolve import Resolution, Unavailable
from pcapd.api.upload import finish_upload, owner_key
from pcapd.errors import PcapdError, ProtocolError
from pcapd.proto import (
    Absent,
    AgentTarget,
    BoshTarget,
    CaptureOptions,
    CfTarget,
    Data,
    Error,
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
    Start,
    Started,
    Statistics,
    Trigger,
    Triggered,
    TriggerFired,
)
from pcapd.proto.messages import MAX_TRIGGERS_LISTED, RecordingEnd, RecordingState
from pcapd.store import CaptureInfo, Store, Upload
from pcapd.store.recording_store import RecordingStore, recordings_of
from pcapd.store.recordings import (
    BoshRecordingTarget,
    CfRecordingTarget,
    FiredTrigger,
    LocalRecordingTarget,
    RecordingAgent,
    RecordingRecordError,
    RecordingTarget,
    armed_owners,
    current_state,
    expire,
    new_recording_id,
    record_fired,
    record_suppressed,
)
from pcapd.store.recordings import Recording as Record_
from pcapd.store.recordings import Trigger as StoredTrigger
from pcapd.store.recordings import stop as stopped_record
from pcapd.tokens import Identity
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.service import Refusal
from pcapd.transport.ws import Headers

if TYPE_CHECKING:
    from pcapd.api.server import Api

log = logging.getLogger(__name__)

ASK_TIMEOUT = START_TIMEOUT
"""Seconds an agent gets to answer a ``record``, ``list_recordings`` or ``record_stop``."""
WATCH_REFRESH = 30.0
"""Seconds between two reads of the store for recordings with triggers to watch (another api
VM's, or all of them after a restart)."""
WATCH_RETRY = 5.0
"""Seconds before a lost watching link to an agent is opened again."""
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 10.0
_NS = 1_000_000_000


class RecorderMetrics:
    """The flight recorder's Prometheus metrics, in the api's registry. Bytes held and packets
    aged out are what the agents last reported to this api (``record list``, a watching link
    opening); triggers are counted as this api handled them."""

    def __init__(self, registry: object) -> None:
        r = registry
        self.bytes_held = Gauge("pcapd_recording_bytes_held", "Bytes the rings of armed "
                                "recordings hold, as their agents last reported",
                                registry=r)  # type: ignore[arg-type]
        self.aged_out = Gauge("pcapd_recording_packets_aged_out", "Packets the rings of armed "
                              "recordings let go (older than keep, or over max_bytes), as "
                              "their agents last reported", registry=r)  # type: ignore[arg-type]
        self.triggers = Counter("pcapd_recording_triggers", "Triggers this api handled, by "
                                "outcome (saved, suppressed, failed)", ["outcome"],
                                registry=r)  # type: ignore[arg-type]
        self.recordings = Counter("pcapd_recordings", "Recordings started, saved and stopped "
                                  "through this api", ["event"],
                                  registry=r)  # type: ignore[arg-type]
        self._rings: dict[str, tuple[int, int]] = {}

    def rings(self, statuses: Mapping[str, tuple[int, int]]) -> None:
        """(bytes held, packets aged out) of rings, by the agent's recording id."""
        self._rings.update(statuses)
        self._update()

    def forget(self, agent_ids: list[str]) -> None:
        for rid in agent_ids:
            self._rings.pop(rid, None)
        self._update()

    def _update(self) -> None:
        self.bytes_held.set(sum(b for b, _ in self._rings.values()))
        self.aged_out.set(sum(a for _, a in self._rings.values()))


class _StoreOutput:
    """A triggered save's output: the pcapng into the upload; messages go nowhere (no user
    waits: the record and the audit log say what happened)."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.bytes = 0
        self.notices: list[str] = []

    async def send_data(self, payload: bytes) -> None:
        await self.upload.write(payload)
        self.bytes += len(payload)

    async def send_message(self, msg: Started | Notice | Statistics) -> None:
        if isinstance(msg, Notice):
            self.notices.append(msg.text)


class ApiRecorder:
    """The api's side of ``pcapd record``: requests from users, and the trigger watch."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.config = api.config
        self.metrics = RecorderMetrics(api.metrics.registry)
        self._watched: dict[str, dict[str, tuple[str, str]]] = {}
        """address → {agent's recording id → (owner, recording id)}: rings with triggers."""
        self._watchers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._locks: dict[str, trio.Lock] = {}

    # --- the store ---------------------------------------------------------------------------

    @property
    def records(self) -> RecordingStore:
        store = self.api.store
        if store is None:
            raise Refusal("INVALID_REQUEST", f"the api {self.config.id} keeps no recordings "
                          "(no storage configured)")
        return recordings_of(store)

    def _store(self) -> Store:
        assert self.api.store is not None
        return self.api.store

    async def _owned(self, identity: Identity, recording_id: str) -> Record_:
        """The caller's recording; missing and someone else's answer alike (no probing)."""
        owner = owner_key(identity)
        rec = None
        if re.fullmatch(r"[a-f0-9]{32}", recording_id):
            rec = await self.records.get(owner, recording_id)
        if rec is None:
            raise Refusal("INVALID_REQUEST", f"no recording {recording_id} of yours "
                          "(`pcapd record list` shows yours)")
        return rec

    # --- requests from a user's link ---------------------------------------------------------

    async def answer(self, link: Link, msg: Record | ListRecordings | RecordStop,
                     identity: Identity, token: str | None) -> None:
        """Answer ``record``, ``list_recordings`` or ``record_stop`` (Refusal: refused)."""
        with store_refusals():
            if isinstance(msg, Record):
                answer: RecordingStarted | RecordingList = await self.start(msg, identity, token)
            elif isinstance(msg, ListRecordings):
                answer = RecordingList(recordings=await self.listing(identity,
                                                                     msg.recording_ids))
            else:
                answer = await self.stop(msg.recording_id, identity)
        await link.send(answer)

    async def start(self, msg: Record, identity: Identity, token: str | None
                    ) -> RecordingStarted:
        """Arm a recording on every instance of the target (see the module's docstring)."""
        records = self.records
        trigger = msg.trigger
        try:
            params = effective_parameters(RecordingRequest(
                keep=msg.ring.keep, until=msg.ring.until, max_bytes=msg.ring.max_bytes,
                trigger=trigger is not None, after=trigger.after if trigger else None,
                once=trigger.once if trigger else False), self.config.recorder)
        except RecordingRefused as exc:
            raise Refusal(exc.code, exc.text) from None
        if isinstance(msg.target, AgentTarget):
            raise Refusal("INVALID_REQUEST", "target kind `agent` is for the api's own links")
        start = Start(target=msg.target, options=msg.options)
        resolution = await self.api._admit(start, token)
        if trigger is not None:
            try:
                await check_filter(trigger.filter, msg.options.snaplen)
            except InvalidFilter as exc:
                raise Refusal("INVALID_REQUEST", f"--trigger: {exc}") from None
        owner = owner_key(identity)
        now = time.time()
        try:
            check_room(owner, armed_owners(await records.list_all(), now), self.config.recorder)
        except RecordingRefused as exc:
            raise Refusal(exc.code, exc.text) from None
        recording_id = new_recording_id()
        ring = RecordRing(keep=params.keep, max_bytes=params.max_bytes, until=params.until)
        wire_trigger = None if trigger is None else Trigger(
            filter=trigger.filter, after=params.after, once=params.once)
        armed, absent = await self._arm(recording_id, resolution, msg.options, ring,
                                        wire_trigger)
        if not armed:
            raise Refusal("START_CAPTURE_FAILED", "no instance could keep a ring: " + "; ".join(
                a.reason for a in absent))
        rec = Record_(
            recording_id=recording_id, owner=owner, user_name=identity.user_name[:256],
            target=_record_target(msg.target, resolution), label=resolution.target[:256],
            device=msg.options.device, filter=msg.options.filter,
            snaplen=msg.options.snaplen, keep=params.keep, max_bytes=params.max_bytes,
            created_at=now, ends_at=params.ends_at(now),
            trigger=None if trigger is None else StoredTrigger(
                filter=trigger.filter, after=params.after or 0.0, once=params.once),
            agents=[agent for agent, _ in armed])
        try:
            await records.put(rec)
        except PcapdError as exc:
            await self._free(rec)
            raise Refusal("START_CAPTURE_FAILED", f"cannot keep the recording's record: {exc}"
                          ) from None
        self.metrics.recordings.labels("started").inc()
        self._audit("recording_started", rec, "started", sources=[
            a.origin for a in rec.agents], absent=[a.name for a in absent], **resolution.audit)
        if rec.trigger is not None:
            self._watch(rec)
        return RecordingStarted(recording_id=recording_id, sources=[
            Source(id=i, name=source.name, description=source.description)
            for i, (_, source) in enumerate(armed)], ring=ring, ends_at=rec.ends_at,
            absent=absent[:1024])

    async def _arm(self, recording_id: str, resolution: Resolution, options: CaptureOptions,
                   ring: RecordRing, trigger: Trigger | None
                   ) -> tuple[list[tuple[RecordingAgent, Source]], list[Absent]]:
        """Ask every instance's agent to keep a ring; (armed, absent) in the target's order."""
        results: dict[int, tuple[RecordingAgent, Source] | Absent] = {}

        async def arm(index: int, job: AgentJob) -> None:
            agent_rid = f"{recording_id}-{index}"
            request = Record(recording_id=agent_rid, target=job.target, options=options,
                             ring=ring, trigger=trigger)
            try:
                answer = await self._ask(job, request)
            except _NoAnswer as exc:
                results[index] = Absent(name=job.origin, reason=str(exc), partial=True)
                return
            if isinstance(answer, RecordingStarted) and answer.sources:
                results[index] = (RecordingAgent(
                    origin=job.origin, address=job.address, namespace=job.target.namespace,
                    recording_id=agent_rid), answer.sources[0])
            else:
                text = answer.text if isinstance(answer, Error) else "an unexpected answer"
                results[index] = Absent(name=job.origin, reason=f"{job.origin}: {text}",
                                        partial=True)

        async with open_nursery() as nursery:
            for index, job in enumerate(resolution.jobs):
                nursery.start_soon(arm, index, job)
        armed = [r for _, r in sorted(results.items()) if isinstance(r, tuple)]
        absent = [r for _, r in sorted(results.items()) if isinstance(r, Absent)]
        absent += [Absent(name=u.origin, reason=u.text) for u in resolution.unavailable]
        return armed, absent

    async def listing(self, identity: Identity, recording_ids: list[str]) -> list[Recording]:
        """The caller's recordings (those named, or all), each with its agents' rings."""
        records = self.records
        found = await records.list_owned(owner_key(identity))
        if recording_ids:
            found = [r for r in found if r.recording_id in recording_ids]
        now = time.time()
        armed = [r for r in found if current_state(r, now) == "armed"]
        rings = await self._rings([a for r in armed for a in r.agents])
        listed = []
        for stored in found[:1024]:
            rec = stored
            if current_state(rec, now) != "armed":
                if rec.state == "armed":  # expired meanwhile: write it down
                    rec = expire(rec, now)
                    await _quietly(records.put(rec))
                    self._unwatch(rec)
            else:
                rec = await self._note_lost(rec, rings, now)
            listed.append(self._listed(rec, rings, now))
        return listed

    async def stop(self, recording_id: str, identity: Identity) -> RecordingList:
        """Stop one of the caller's recordings: every ring freed, the record marked."""
        rec = await self._owned(identity, recording_id)
        if current_state(rec, time.time()) != "armed":
            return RecordingList(recordings=[self._listed(expire(rec, time.time()), {},
                                                          time.time())])
        finals = await self._free(rec)
        async with self._lock(rec.recording_id):
            rec = await self.records.get(rec.owner, rec.recording_id) or rec
            rec = stopped_record(rec, time.time())
            await self.records.put(rec)
        self._unwatch(rec)
        self.metrics.recordings.labels("stopped").inc()
        self._audit("recording_stopped", rec, "stopped by its owner")
        return RecordingList(recordings=[self._listed(rec, finals, time.time())])

    async def save(self, link: Link, msg: RecordSave, identity: Identity,
                   token: str | None, headers: Headers, capture_id: str) -> None:
        """``record save``: re-authorize, then merge the rings' windows as a capture into the
        user's link or the store (``upload``), through the api's capture path."""
        with store_refusals():
            rec = await self._owned(identity, msg.recording_id)
        if current_state(rec, time.time()) != "armed":
            raise Refusal("INVALID_REQUEST", f"recording {rec.recording_id} has "
                          f"{current_state(rec, time.time())}: its rings are freed, there is "
                          "nothing to save")
        start = Start(target=_target_of(rec.target), options=_options(rec), upload=msg.upload)
        fresh = await self.api.resolver.resolve(start, token)  # the permission, asked again
        allowed = {j.origin for j in fresh.jobs} | {u.origin for u in fresh.unavailable}
        resolution = _saved_resolution(rec, fresh, allowed)
        if not resolution.jobs:
            raise Refusal("START_CAPTURE_FAILED", "no instance of the recording can be saved: "
                          + "; ".join(u.text for u in resolution.unavailable))
        window = RecordSave(recording_id="-", last=msg.last, start=msg.start, end=msg.end)
        saves = {a.origin: msgspec.structs.replace(window, recording_id=a.recording_id)
                 for a in rec.agents}
        self.metrics.recordings.labels("saved").inc()
        self._audit("recording_saved", rec, "saved by its owner", capture_id=capture_id,
                    last=msg.last, upload=msg.upload,
                    sources=[j.origin for j in resolution.jobs], **fresh.audit)
        await self.api._admitted(link, start, token, headers, capture_id,
                                 resolution=resolution, saves=saves)

    # --- agents ------------------------------------------------------------------------------

    async def _ask(self, job: AgentJob, request: Record | ListRecordings | RecordStop
                   ) -> Message:
        """One request to one agent, its answer; :class:`_NoAnswer` saying why not."""
        with trio.move_on_after(ASK_TIMEOUT):
            try:
                async with open_agent_link(job, ssl_context=self.api.agent_tls,
                                           server_name=self.config.agents.server_name,
                                           connect_timeout=ASK_TIMEOUT) as link:
                    await link.send(request)
                    answer = await link.receive()
                    if isinstance(answer, Data):
                        raise _NoAnswer(f"{job.origin}: its agent answered with data")
                    return answer
            except AgentRefused as exc:
                return Error(code="START_CAPTURE_FAILED", text=exc.text)
            except (LinkClosed, PcapdError, OSError) as exc:  # (ProtocolError: an odd agent)
                raise _NoAnswer(f"{job.origin}: cannot reach its agent at {job.address}: "
                                f"{exc}") from None
        raise _NoAnswer(f"{job.origin}: its agent at {job.address} did not answer within "
                        f"{ASK_TIMEOUT:g}s")

    async def _rings(self, agents: list[RecordingAgent]) -> dict[str, RingStatus | str]:
        """Each ring's status by the agent's recording id: a :class:`RingStatus`, or why it
        is not known (its agent did not answer: text; no longer held: ``""``)."""
        by_address: dict[str, list[RecordingAgent]] = {}
        for agent in agents:
            by_address.setdefault(agent.address, []).append(agent)
        rings: dict[str, RingStatus | str] = {}

        async def ask(address: str, held: list[RecordingAgent]) -> None:
            job = _job_of(held[0])
            ids = [a.recording_id for a in held]
            try:
                answer = await self._ask(job, ListRecordings(recording_ids=ids[:1024]))
            except _NoAnswer as exc:
                for a in held:
                    rings[a.recording_id] = str(exc)
                return
            listed = answer.recordings if isinstance(answer, RecordingList) else []
            known = {r.recording_id: r for r in listed}
            for a in held:
                rings[a.recording_id] = _ring_of(known.get(a.recording_id))

        async with open_nursery() as nursery:
            for address, held in by_address.items():
                nursery.start_soon(ask, address, held)
        self.metrics.rings({rid: (s.bytes, s.aged_out_time + s.aged_out_size)
                            for rid, s in rings.items() if isinstance(s, RingStatus)})
        return rings

    async def _free(self, rec: Record_) -> dict[str, RingStatus | str]:
        """``record_stop`` to every agent of the recording; their final states."""
        finals: dict[str, RingStatus | str] = {}

        async def free(agent: RecordingAgent) -> None:
            try:
                answer = await self._ask(_job_of(agent), RecordStop(
                    recording_id=agent.recording_id))
            except _NoAnswer as exc:
                finals[agent.recording_id] = str(exc)
                return
            listed = answer.recordings if isinstance(answer, RecordingList) else []
            finals[agent.recording_id] = _ring_of(listed[0] if listed else None)

        async with open_nursery() as nursery:
            for agent in rec.agents:
                nursery.start_soon(free, agent)
        self.metrics.forget([a.recording_id for a in rec.agents])
        return finals

    async def _note_lost(self, rec: Record_, rings: Mapping[str, RingStatus | str],
                         now: float) -> Record_:
        """Write down rings their agents no longer hold (a restart lost them)."""
        lost = [a for a in rec.agents if a.lost_at is None and rings.get(a.recording_id) == ""]
        if not lost:
            return rec
        async with self._lock(rec.recording_id):
            current = await self.records.get(rec.owner, rec.recording_id) or rec
            agents = [msgspec.structs.replace(a, lost_at=now) if a in lost else a
                      for a in current.agents]
            current = msgspec.structs.replace(current, agents=agents)
            await _quietly(self.records.put(current))
        for agent in lost:
            log.warning("recording %s: %s no longer holds its ring (its agent restarted)",
                        rec.recording_id, agent.origin, extra={
                            "event": "recording_lost", "recording_id": rec.recording_id,
                            "origin": agent.origin})
        return current

    def _listed(self, rec: Record_, rings: Mapping[str, RingStatus | str],
                now: float) -> Recording:
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
            recording_id=rec.recording_id, target=rec.label, options=_options(rec),
            ring=RecordRing(keep=rec.keep, max_bytes=rec.max_bytes,
                            until=max(rec.ends_at - rec.created_at, 1e-3)),
            trigger=None if rec.trigger is None else Trigger(
                filter=rec.trigger.filter, after=rec.trigger.after, once=rec.trigger.once),
            started_at=rec.created_at, ends_at=ended if state != "armed" else rec.ends_at,
            state=wire_state, end_reason=end_reason, sources=sources[:1024],
            triggers_saved=rec.triggers_fired, triggers_suppressed=rec.triggers_suppressed,
            saved=[f.capture_id for f in rec.fired if f.capture_id][-MAX_TRIGGERS_LISTED:])

    # --- triggers ----------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the agents of every armed recording with a trigger, until cancelled."""
        async with open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._refresh()
                await trio.sleep(WATCH_REFRESH)

    async def _refresh(self) -> None:
        """Watch what the store says is armed with a trigger; forget what ended."""
        if self.api.store is None:
            return
        try:
            records = await self.records.list_all()
        except PcapdError as exc:
            log.warning("recordings: cannot read the store to watch triggers: %s", exc)
            return
        now = time.time()
        live = [r for r in records if r.trigger is not None and current_state(r, now) == "armed"]
        wanted: dict[str, dict[str, tuple[str, str]]] = {}
        for rec in live:
            for agent in rec.agents:
                if agent.lost_at is None:
                    wanted.setdefault(agent.address, {})[agent.recording_id] = (
                        rec.owner, rec.recording_id)
        self._watched = wanted
        for address in list(self._watchers):
            if address not in wanted:
                self._watchers.pop(address).cancel()
        for address in wanted:
            self._ensure_watcher(address)

    def _watch(self, rec: Record_) -> None:
        for agent in rec.agents:
            self._watched.setdefault(agent.address, {})[agent.recording_id] = (
                rec.owner, rec.recording_id)
            self._ensure_watcher(agent.address)

    def _unwatch(self, rec: Record_) -> None:
        for agent in rec.agents:
            held = self._watched.get(agent.address)
            if held is not None:
                held.pop(agent.recording_id, None)
                if not held:
                    del self._watched[agent.address]
                    scope = self._watchers.pop(agent.address, None)
                    if scope is not None:
                        scope.cancel()

    def _ensure_watcher(self, address: str) -> None:
        if address in self._watchers or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._watchers[address] = scope
        self._nursery.start_soon(self._watcher, address, scope)

    async def _watcher(self, address: str, scope: trio.CancelScope) -> None:
        """One watching link to the agent at ``address``, opened again when lost."""
        host, port = _split_address(address)
        job = AgentJob(host, port, AgentTarget(namespace="host", source="watch"), address)
        with scope:
            while address in self._watched:
                try:
                    await self._watch_link(job, address)
                except (LinkClosed, ProtocolError, AgentRefused, OSError) as exc:
                    log.info("recordings: watching %s: %s (again in %gs)", address, exc,
                             WATCH_RETRY)
                except Exception as exc:  # a watch must never take the api down with it
                    log.warning("recordings: watching %s failed: %s: %s (again in %gs)",
                                address, type(exc).__name__, exc, WATCH_RETRY)
                await trio.sleep(WATCH_RETRY)
        if self._watchers.get(address) is scope:
            del self._watchers[address]

    async def _watch_link(self, job: AgentJob, address: str) -> None:
        async with open_agent_link(job, ssl_context=self.api.agent_tls,
                                   server_name=self.config.agents.server_name,
                                   connect_timeout=ASK_TIMEOUT) as link:
            await link.send(ListRecordings(watch=True))
            caught_up = False
            async with open_nursery() as nursery:
                nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                while True:
                    msg = await link.receive()
                    if isinstance(msg, RecordingList) and not caught_up:
                        caught_up = True
                        self._catch_up(address, msg.recordings)
                    elif isinstance(msg, Triggered):
                        self._on_trigger(address, msg.recording_id, msg.trigger, live=True)
                    elif isinstance(msg, Error):
                        return

    def _catch_up(self, address: str, listed: list[Recording]) -> None:
        """Complete triggers an agent lists that the api may have missed (link down, restart):
        saved unless the record already names them; the limiter decides as it would have."""
        statuses = {}
        for recording in listed:
            if recording.recording_id not in self._watched.get(address, {}):
                continue
            for ring in recording.sources[:1]:
                statuses[recording.recording_id] = (ring.bytes,
                                                    ring.aged_out_time + ring.aged_out_size)
                for fired in ring.triggers:
                    if fired.complete:
                        self._on_trigger(address, recording.recording_id, fired, live=False)
        self.metrics.rings(statuses)

    def _on_trigger(self, address: str, agent_rid: str, fired: TriggerFired, *,
                    live: bool) -> None:
        which = self._watched.get(address, {}).get(agent_rid)
        if which is None or self._nursery is None or not fired.complete:
            return
        self._nursery.start_soon(self._triggered, which[0], which[1], agent_rid, fired, live)

    async def _triggered(self, owner: str, recording_id: str, agent_rid: str,
                         fired: TriggerFired, live: bool) -> None:
        """A trigger's window is whole: save it into the store (rate-limited), note it in the
        record; ``--once``: stop the recording."""
        try:
            await self._handle_trigger(owner, recording_id, agent_rid, fired, live)
        except Exception as exc:  # (a store or agent fault) never the api's end
            self.metrics.triggers.labels("failed").inc()
            log.warning("recording %s: trigger not handled: %s: %s", recording_id,
                        type(exc).__name__, exc, extra={
                            "event": "recording_trigger_failed",
                            "recording_id": recording_id})

    async def _handle_trigger(self, owner: str, recording_id: str, agent_rid: str,
                              fired: TriggerFired, live: bool) -> None:
        records = self.records
        async with self._lock(recording_id):
            rec = await records.get(owner, recording_id)
            if rec is None or rec.trigger is None or current_state(rec, time.time()) != "armed":
                return
            agent = next((a for a in rec.agents if a.recording_id == agent_rid), None)
            if agent is None:
                return
            capture_id = trigger_capture_id(recording_id, agent.origin, fired.at)
            if any(f.capture_id == capture_id for f in rec.fired):
                return  # handled already (by this api, or another api VM)
            at = max(fired.at / _NS, rec.created_at)
            limiter = TriggerLimiter.resumed(
                self.config.recorder.trigger_interval, once=rec.trigger.once,
                fired_at=[f.at for f in rec.fired], triggers_fired=rec.triggers_fired)
            decision = limiter.offer(at)
            if not decision.save:
                if live:
                    await records.put(record_suppressed(rec))
                    self.metrics.triggers.labels("suppressed").inc()
                    self._audit("recording_trigger_suppressed", rec, "trigger rate-limited "
                                "(recorder.trigger_interval)", origin=agent.origin)
                return
            saved = await self._save_window(rec, agent.origin, fired, capture_id)
            rec = await records.get(owner, recording_id) or rec
            if not any(f.capture_id == capture_id for f in rec.fired):
                rec = record_fired(rec, msgspec.structs.replace(saved, at=at))
            stopping = decision.stop and current_state(rec, time.time()) == "armed"
            if stopping:
                rec = stopped_record(rec, time.time())
            await records.put(rec)
        self.metrics.triggers.labels("saved" if saved.capture_id else "failed").inc()
        self._audit("recording_triggered", rec, "trigger fired: its window was "
                    + ("saved" if saved.capture_id else f"not saved: {saved.problem}"),
                    origin=agent.origin, capture_id=saved.capture_id,
                    window_start=fired.window_start, window_end=fired.window_end)
        if stopping:
            await self._free(rec)
            self._unwatch(rec)
            self._audit("recording_stopped", rec, "stopped after its trigger (--once)")

    async def _save_window(self, rec: Record_, origin: str, fired: TriggerFired,
                           capture_id: str) -> FiredTrigger:
        """Every instance's window around the trigger, merged into the owner's store."""
        at = max(fired.at / _NS, rec.created_at)
        store = self._store()
        if await store.get(rec.owner, capture_id) is not None:
            return FiredTrigger(at=at, origin=origin, capture_id=capture_id)
        agents = [a for a in rec.agents if a.lost_at is None]
        saves = {a.origin: RecordSave(recording_id=a.recording_id, start=fired.window_start,
                                      end=fired.window_end) for a in agents}
        resolution = Resolution([_job_of(a) for a in agents], target=rec.label)
        start = Start(target=_target_of(rec.target), options=_options(rec), upload=True)
        now = time.time()
        info = CaptureInfo(
            capture_id=capture_id, user_id=rec.owner, user_name=rec.user_name,
            target=f"{rec.label} (trigger of recording {rec.recording_id[:8]})"[:256],
            filter=rec.filter, started_at=now, ended_at=None, packets=0, dropped=0, size=0,
            reason="running", expires_at=now + self.config.storage.retention_days * 86400)
        upload = await store.open_upload(info)
        output = _StoreOutput(upload)
        capture = ApiCapture(self.config, capture_id, start, resolution, output,
                             self.api.agent_tls, saves=saves)
        try:
            end = await capture.run()
        except NoSourceStarted as exc:
            await upload.abort()
            return FiredTrigger(at=at, origin=origin, problem=exc.text[:1024])
        except BaseException:
            with trio.CancelScope(shield=True):
                await upload.abort()
            raise
        with trio.CancelScope(shield=True):
            await finish_upload(store, upload, info, end, output.bytes, self.api._base_url())
        return FiredTrigger(at=at, origin=origin, capture_id=capture_id)

    # --- helpers -----------------------------------------------------------------------------

    def _lock(self, recording_id: str) -> trio.Lock:
        return self._locks.setdefault(recording_id, trio.Lock())

    def _audit(self, event: str, rec: Record_, what: str, **more: object) -> None:
        """One audit line: who, which target (org/space or deployment), which instances, the
        filter."""
        where = _audit_of(rec.target)
        log.info("recording %s of %s (%s): %s: %s, filter %r", rec.recording_id, rec.user_name,
                 rec.owner, what, rec.label, rec.filter, extra={
                     "event": event, "recording_id": rec.recording_id, "user": rec.user_name,
                     "owner": rec.owner, "target": rec.label, "filter": rec.filter,
                     "trigger": rec.trigger.filter if rec.trigger else None,
                     "instances": [a.origin for a in rec.agents], **where, **more})


@contextmanager
def store_refusals() -> Iterator[None]:
    """The store's faults as a refusal for the user (one line naming the store's problem):
    a damaged record is refused, never served."""
    try:
        yield
    except RecordingRecordError as exc:
        raise Refusal("INVALID_REQUEST", str(exc)) from None
    except PcapdError as exc:
        raise Refusal("START_CAPTURE_FAILED", f"the recordings' store: {exc}") from None


class _NoAnswer(Exception):
    """An agent that could not be reached or did not answer in time."""


def trigger_capture_id(recording_id: str, origin: str, at_ns: int) -> str:
    """The stored capture of one trigger: the same on every api VM (32 hex digits)."""
    return hashlib.sha256(f"{recording_id}\0{origin}\0{at_ns}".encode()).hexdigest()[:32]


def _ring_of(recording: Recording | None) -> RingStatus | str:
    if recording is None or not recording.sources:
        return ""
    ring = recording.sources[0]
    if recording.state == "ended":
        return msgspec.structs.replace(ring, state="ended", text=recording.end_text)
    return ring


def _options(rec: Record_) -> CaptureOptions:
    return CaptureOptions(device=rec.device, filter=rec.filter, snaplen=rec.snaplen)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _job_of(agent: RecordingAgent) -> AgentJob:
    host, port = _split_address(agent.address)
    return AgentJob(host, port, AgentTarget(namespace=agent.namespace, source=agent.origin),
                    agent.origin)


def _saved_resolution(rec: Record_, fresh: Resolution, allowed: set[str]) -> Resolution:
    """The rings to save: the recording's instances the platform still lets the user see."""
    jobs, unavailable = [], []
    for agent in rec.agents:
        if agent.origin not in allowed:
            unavailable.append(Unavailable(agent.origin, f"{agent.origin}: no longer part of "
                                           "the target (removed, or no longer yours to see)"))
        elif agent.lost_at is not None:
            unavailable.append(Unavailable(agent.origin, f"{agent.origin}: its agent lost the "
                                           "ring (it restarted)"))
        else:
            jobs.append(_job_of(agent))
    return Resolution(jobs, unavailable, fresh.names, fresh.identity, rec.label, fresh.audit)


_NAME_GUID = re.compile(r".*\(([^()]+)\)\s*\Z")


def _guid_in(text: str | None) -> str:
    """``org (guid)`` → ``guid`` (the audit's form); ``?`` when Cloud Controller did not say."""
    match = _NAME_GUID.fullmatch(text or "")
    return match[1][:256] if match else "?"


def _record_target(target: CfTarget | BoshTarget | LocalTarget,
                   resolution: Resolution) -> RecordingTarget:
    if isinstance(target, CfTarget):
        audit = resolution.audit
        app_guid = audit.get("app_guid") or next(
            (j.target.app_guid for j in resolution.jobs if j.target.app_guid), None)
        return CfRecordingTarget(
            org_guid=_guid_in(audit.get("org")), space_guid=_guid_in(audit.get("space")),
            app_guid=app_guid or target.app, app_name=target.app,
            process_type=target.process_type, instances=list(target.instances))
    if isinstance(target, BoshTarget):
        return BoshRecordingTarget(deployment=target.deployment, groups=list(target.groups),
                                   instances=list(target.instances))
    return LocalRecordingTarget(netns=list(target.netns))


def _target_of(target: RecordingTarget) -> CfTarget | BoshTarget | LocalTarget:
    """The request a recording's target is authorized as again (a CF app by its guid: the
    same app, whatever it is called now)."""
    if isinstance(target, CfRecordingTarget):
        return CfTarget(app=target.app_guid, instances=list(target.instances),
                        process_type=target.process_type)
    if isinstance(target, BoshRecordingTarget):
        return BoshTarget(deployment=target.deployment, groups=list(target.groups),
                          instances=list(target.instances))
    return LocalTarget(netns=list(target.netns))


def _audit_of(target: RecordingTarget) -> dict[str, str]:
    if isinstance(target, CfRecordingTarget):
        return {"org_guid": target.org_guid, "space_guid": target.space_guid,
                "app_guid": target.app_guid, "process_type": target.process_type}
    if isinstance(target, BoshRecordingTarget):
        return {"deployment": target.deployment, "groups": ",".join(target.groups)}
    return {}


async def _quietly(write: object) -> None:
    """A best-effort store write (a listing must not fail because a note could not be kept)."""
    try:
        await write  # type: ignore[misc]
    except PcapdError as exc:
        log.warning("recordings: could not update a record: %s", exc)
