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

Triggers are watched by :mod:`pcapd.api.trigger_watch`; what the recorder decides without
waiting (the record, the listing, the trigger's plan, audit fields) is in the pure
:mod:`pcapd.api.recording_books`.
"""

from __future__ import annotations

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
from pcapd.api import recording_books as books
from pcapd.api.agents import AgentJob, AgentRefused, open_agent_link
from pcapd.api.capture import START_TIMEOUT
from pcapd.api.recording_books import RingAnswer
from pcapd.api.recording_policy import (
    RecordingParameters,
    RecordingRequest,
    check_room,
    effective_parameters,
)
from pcapd.api.resolve import Resolution, Unavailable
from pcapd.api.trigger_watch import TriggerWatch, job_of
from pcapd.api.upload import owner_key
from pcapd.errors import PcapdError, Refusal
from pcapd.proto import (
    Absent,
    AgentTarget,
    CaptureOptions,
    Data,
    Error,
    ListRecordings,
    Message,
    Record,
    Recording,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    Source,
    Start,
    Trigger,
)
from pcapd.proto.messages import absent as fitted_absent
from pcapd.store import CaptureInfo, Store
from pcapd.store.recording_store import RecordingStore, recordings_of
from pcapd.store.recordings import Recording as Record_
from pcapd.store.recordings import (
    RecordingAgent,
    RecordingRecordError,
    armed_owners,
    current_state,
    expire,
    new_recording_id,
)
from pcapd.store.recordings import stop as stopped_record
from pcapd.tokens import Identity
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import Headers

if TYPE_CHECKING:
    from pcapd.api.server import Api

log = logging.getLogger(__name__)

ASK_TIMEOUT = START_TIMEOUT
"""Seconds an agent gets to answer a ``record``, ``list_recordings`` or ``record_stop``."""


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


class ApiRecorder:
    """The api's side of ``pcapd record``: requests from users, and the trigger watch."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.config = api.config
        self.metrics = RecorderMetrics(api.metrics.registry)
        self.watch = TriggerWatch(self)
        self._locks: dict[str, trio.Lock] = {}
        self._arming: list[str] = []
        """Owners of the recordings this api is arming: not in the store yet, but counted
        toward ``recorder.per_user`` and ``total`` from the check on (check and reserve in one
        step, as for captures: the agents are asked in between)."""

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The trigger watch (:class:`~pcapd.api.trigger_watch.TriggerWatch`), until cancelled."""
        await self.watch.run(task_status=task_status)

    # --- the store ---------------------------------------------------------------------------

    @property
    def records(self) -> RecordingStore:
        store = self.api.store
        if store is None:
            raise Refusal("INVALID_REQUEST", f"the api {self.config.id} keeps no recordings "
                          "(no storage configured)")
        return recordings_of(store)

    def store(self) -> Store:
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
        params = effective_parameters(RecordingRequest(
            keep=msg.ring.keep, until=msg.ring.until, max_bytes=msg.ring.max_bytes,
            trigger=trigger is not None, after=trigger.after if trigger else None,
            once=trigger.once if trigger else False), self.config.recorder)
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
        armed_now = armed_owners(await records.list_all(), now)
        check_room(owner, [*armed_now, *self._arming], self.config.recorder)
        self._arming.append(owner)  # (no await since the check)
        try:
            return await self._start(msg, identity, owner, resolution, params, now)
        finally:
            self._arming.remove(owner)

    async def _start(self, msg: Record, identity: Identity, owner: str,
                     resolution: Resolution, params: RecordingParameters, now: float
                     ) -> RecordingStarted:
        """Arm the rings and keep the record: ``start`` once its room is reserved."""
        assert not isinstance(msg.target, AgentTarget)  # start refused it
        records, trigger = self.records, msg.trigger
        recording_id = new_recording_id()
        ring = books.wire_ring(params)
        armed, absent = await self._arm(recording_id, resolution, msg.options, ring,
                                        books.wire_trigger(trigger, params))
        if not armed:
            raise Refusal("START_CAPTURE_FAILED", "no instance could keep a ring: " + "; ".join(
                a.reason for a in absent))
        rec = books.new_record(
            recording_id=recording_id, owner=owner, user_name=identity.user_name,
            target=msg.target, label=resolution.target, audit=resolution.audit,
            app_guids=[j.target.app_guid for j in resolution.jobs], options=msg.options,
            params=params, trigger=trigger, agents=[agent for agent, _ in armed], now=now)
        try:
            await records.put(rec)
        except PcapdError as exc:
            await self.free(rec)
            raise Refusal("START_CAPTURE_FAILED", f"cannot keep the recording's record: {exc}"
                          ) from None
        self.metrics.recordings.labels("started").inc()
        self.audit("recording_started", rec, "started", sources=[
            a.origin for a in rec.agents], absent=[a.name for a in absent], **resolution.audit)
        if rec.trigger is not None:
            self.watch.add(rec)
        return books.started_answer(rec, ring, armed, absent)

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
                results[index] = fitted_absent(job.origin, str(exc), partial=True)
                return
            results[index] = books.arm_result(job.origin, job.address, job.target.namespace,
                                              agent_rid, answer)

        async with open_nursery() as nursery:
            for index, job in enumerate(resolution.jobs):
                nursery.start_soon(arm, index, job)
        armed = [r for _, r in sorted(results.items()) if isinstance(r, tuple)]
        absent = [r for _, r in sorted(results.items()) if isinstance(r, Absent)]
        absent += [fitted_absent(u.origin, u.text) for u in resolution.unavailable]
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
                    self.watch.remove(rec)
            else:
                rec = await self._note_lost(rec, rings, now)
            listed.append(books.listed(rec, rings, now))
        return listed

    async def stop(self, recording_id: str, identity: Identity) -> RecordingList:
        """Stop one of the caller's recordings: every ring freed, the record marked."""
        rec = await self._owned(identity, recording_id)
        if current_state(rec, time.time()) != "armed":
            return RecordingList(recordings=[books.listed(expire(rec, time.time()), {},
                                                          time.time())])
        finals = await self.free(rec)
        async with self.lock(rec.recording_id):
            rec = await self.records.get(rec.owner, rec.recording_id) or rec
            rec = stopped_record(rec, time.time())
            await self.records.put(rec)
        self.watch.remove(rec)
        self.metrics.recordings.labels("stopped").inc()
        self.audit("recording_stopped", rec, "stopped by its owner")
        return RecordingList(recordings=[books.listed(rec, finals, time.time())])

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
        start = Start(target=books.target_of(rec.target), options=books.options_of(rec),
                      upload=msg.upload)
        fresh = await self.api.resolver.resolve(start, token)  # the permission, asked again
        allowed = {j.origin for j in fresh.jobs} | {u.origin for u in fresh.unavailable}
        agents, unavailable = books.saved_agents(rec, allowed)
        resolution = Resolution([job_of(a) for a in agents],
                                [Unavailable(origin, text) for origin, text in unavailable],
                                fresh.names, fresh.identity, rec.label, fresh.audit)
        if not resolution.jobs:
            raise Refusal("START_CAPTURE_FAILED", "no instance of the recording can be saved: "
                          + "; ".join(u.text for u in resolution.unavailable))
        window = RecordSave(recording_id="-", last=msg.last, start=msg.start, end=msg.end)
        saves = {a.origin: msgspec.structs.replace(window, recording_id=a.recording_id)
                 for a in rec.agents}
        self.metrics.recordings.labels("saved").inc()
        self.audit("recording_saved", rec, "saved by its owner", capture_id=capture_id,
                    last=msg.last, upload=msg.upload,
                    sources=[j.origin for j in resolution.jobs], **fresh.audit)
        await self.api._admitted(link, start, token, headers, capture_id,
                                 resolution=resolution, saves=saves)

    async def reauthorize(self, info: CaptureInfo, token: str | None) -> None:
        """A capture a trigger stored is handed out only to an owner who may still capture
        its target, asked anew as ``save`` asks (:class:`Refusal` if not): the token that
        armed the recording was checked then, and the traffic may be from after its owner
        lost access."""
        if info.reauthorize is None:
            return
        start = Start(target=books.target_of(info.reauthorize), options=CaptureOptions(
            device="any"))
        try:
            await self.api.resolver.resolve(start, token)
        except Refusal as refusal:
            answer = ("you may not" if refusal.code == "PERMISSION_DENIED"
                      else "it could not tell")
            raise Refusal(refusal.code, f"capture {info.capture_id} was stored by a trigger of "
                          "your recording; pcapd asked again whether you may see its target's "
                          f"traffic, and {answer}: {refusal.text}") from None

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

    async def _rings(self, agents: list[RecordingAgent]) -> dict[str, RingAnswer]:
        """Each ring's status by the agent's recording id: a :class:`RingStatus`, or why it
        is not known (its agent did not answer: text; no longer held: ``""``)."""
        by_address: dict[str, list[RecordingAgent]] = {}
        for agent in agents:
            by_address.setdefault(agent.address, []).append(agent)
        rings: dict[str, RingAnswer] = {}

        async def ask(address: str, held: list[RecordingAgent]) -> None:
            ids = [a.recording_id for a in held]
            try:
                answer = await self._ask(job_of(held[0]),
                                         ListRecordings(recording_ids=ids[:1024]))
            except _NoAnswer as exc:
                rings.update(dict.fromkeys(ids, str(exc)))
                return
            rings.update(books.rings_answered(ids, answer))

        async with open_nursery() as nursery:
            for address, held in by_address.items():
                nursery.start_soon(ask, address, held)
        self.metrics.rings(books.ring_figures(rings))
        return rings

    async def free(self, rec: Record_) -> dict[str, RingAnswer]:
        """``record_stop`` to every agent of the recording; their final states."""
        finals: dict[str, RingAnswer] = {}

        async def free(agent: RecordingAgent) -> None:
            try:
                answer = await self._ask(job_of(agent), RecordStop(
                    recording_id=agent.recording_id))
            except _NoAnswer as exc:
                finals[agent.recording_id] = str(exc)
                return
            finals[agent.recording_id] = books.final_ring(answer)

        async with open_nursery() as nursery:
            for agent in rec.agents:
                nursery.start_soon(free, agent)
        self.metrics.forget([a.recording_id for a in rec.agents])
        return finals

    async def _note_lost(self, rec: Record_, rings: Mapping[str, RingAnswer],
                         now: float) -> Record_:
        """Write down rings their agents no longer hold (a restart lost them)."""
        lost = books.lost_agents(rec, rings)
        if not lost:
            return rec
        async with self.lock(rec.recording_id):
            current = await self.records.get(rec.owner, rec.recording_id) or rec
            current = books.note_lost(current, lost, now)
            await _quietly(self.records.put(current))
        for agent in lost:
            log.warning("recording %s: %s no longer holds its ring (its agent restarted)",
                        rec.recording_id, agent.origin, extra={
                            "event": "recording_lost", "recording_id": rec.recording_id,
                            "origin": agent.origin})
        return current

    # --- helpers -----------------------------------------------------------------------------

    def lock(self, recording_id: str) -> trio.Lock:
        """The recording's lock: read-modify-write of its record, one at a time here."""
        return self._locks.setdefault(recording_id, trio.Lock())

    def audit(self, event: str, rec: Record_, what: str, **more: object) -> None:
        """One audit line (:func:`~pcapd.api.recording_books.audit_fields`)."""
        log.info("recording %s of %s (%s): %s: %s, filter %r", rec.recording_id, rec.user_name,
                 rec.owner, what, rec.label, rec.filter,
                 extra=books.audit_fields(event, rec, **more))


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


async def _quietly(write: object) -> None:
    """A best-effort store write (a listing must not fail because a note could not be kept)."""
    try:
        await write  # type: ignore[misc]
    except PcapdError as exc:
        log.warning("recordings: could not update a record: %s", exc)
