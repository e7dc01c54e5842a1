"""The api's trigger watch: links kept to the agents of armed recordings with a trigger.

Theory of operation. Each api process keeps one *watching* link (``list_recordings`` with
``watch``) to every agent that holds a ring of an armed recording with a trigger — the
recordings it armed itself at once (:meth:`TriggerWatch.add`), everyone's from the store every
:data:`WATCH_REFRESH` seconds (so after a restart, and those armed through another api VM). A
lost link is opened again after :data:`WATCH_RETRY` seconds. On ``triggered`` (or, after a link
was down, on a complete trigger the agent lists) the api saves the window from every instance
into the store as the owner's capture, rate-limited as the record says
(:func:`~pcapd.api.recording_books.plan_trigger`). With several api VMs every one of them
watches: the stored capture's id is derived from the recording, the instance and the trigger's
time, so the second VM to handle a trigger finds it saved (or writes the same object again) and
the record lists it once. A triggered save runs under the authorization given at the start
(tokens are not kept); the user still needs a valid token of their own to list or download it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from pcapd.api import recording_books as books
from pcapd.api.agents import AgentJob, AgentRefused, open_agent_link
from pcapd.api.capture import START_TIMEOUT, ApiCapture, NoSourceStarted
from pcapd.api.resolve import Resolution
from pcapd.api.upload import finish_upload
from pcapd.errors import PcapdError, ProtocolError
from pcapd.proto import (
    AgentTarget,
    Error,
    ListRecordings,
    Notice,
    RecordingList,
    RecordSave,
    Start,
    Started,
    Statistics,
    Triggered,
    TriggerFired,
)
from pcapd.store import CaptureInfo, Upload
from pcapd.store.recordings import FiredTrigger, RecordingAgent, record_suppressed
from pcapd.store.recordings import Recording as Record_
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, LinkClosed

if TYPE_CHECKING:
    from pcapd.api.recordings import ApiRecorder

log = logging.getLogger("pcapd.api.recordings")

WATCH_REFRESH = 30.0
"""Seconds between two reads of the store for recordings with triggers to watch (another api
VM's, or all of them after a restart)."""
WATCH_RETRY = 5.0
"""Seconds before a lost watching link to an agent is opened again."""


def job_of(agent: RecordingAgent) -> AgentJob:
    """The job that reaches the agent holding one of a recording's rings."""
    return AgentJob.at(agent.address, AgentTarget(namespace=agent.namespace,
                                                  source=agent.origin), agent.origin)


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


class TriggerWatch:
    """One watching link per agent holding a ring with a trigger, and the triggered saves."""

    def __init__(self, recorder: ApiRecorder) -> None:
        self.recorder = recorder
        self.api = recorder.api
        self.config = recorder.config
        self._watched: books.Watched = {}
        self._watchers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the agents of every armed recording with a trigger, until cancelled."""
        async with open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._refresh()
                await trio.sleep(WATCH_REFRESH)

    def add(self, rec: Record_) -> None:
        """Watch a recording's agents (one this api just armed)."""
        for address in books.watch(self._watched, rec):
            self._ensure_watcher(address)

    def remove(self, rec: Record_) -> None:
        """Stop watching a recording's rings; close links left with nothing to watch."""
        for address in books.unwatch(self._watched, rec):
            scope = self._watchers.pop(address, None)
            if scope is not None:
                scope.cancel()

    async def _refresh(self) -> None:
        """Watch what the store says is armed with a trigger; forget what ended."""
        if self.api.store is None:
            return
        try:
            records = await self.recorder.records.list_all()
        except PcapdError as exc:
            log.warning("recordings: cannot read the store to watch triggers: %s", exc)
            return
        self._watched = books.watched_of(records, time.time())
        for address in list(self._watchers):
            if address not in self._watched:
                self._watchers.pop(address).cancel()
        for address in self._watched:
            self._ensure_watcher(address)

    def _ensure_watcher(self, address: str) -> None:
        if address in self._watchers or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._watchers[address] = scope
        self._nursery.start_soon(self._watcher, address, scope)

    async def _watcher(self, address: str, scope: trio.CancelScope) -> None:
        """One watching link to the agent at ``address``, opened again when lost."""
        job = AgentJob.at(address, AgentTarget(namespace="host", source="watch"), address)
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
                                   connect_timeout=START_TIMEOUT) as link:
            await link.send(ListRecordings(watch=True))
            caught_up = False
            async with open_nursery() as nursery:
                nursery.start_soon(link.keepalive, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                while True:
                    msg = await link.receive()
                    if isinstance(msg, RecordingList) and not caught_up:
                        caught_up = True
                        statuses, fired = books.caught_up(self._watched.get(address, {}),
                                                          msg.recordings)
                        for agent_rid, trigger in fired:
                            self._on_trigger(address, agent_rid, trigger, live=False)
                        self.recorder.metrics.rings(statuses)
                    elif isinstance(msg, Triggered):
                        self._on_trigger(address, msg.recording_id, msg.trigger, live=True)
                    elif isinstance(msg, Error):
                        return

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
            self.recorder.metrics.triggers.labels("failed").inc()
            log.warning("recording %s: trigger not handled: %s: %s", recording_id,
                        type(exc).__name__, exc, extra={
                            "event": "recording_trigger_failed",
                            "recording_id": recording_id})

    async def _handle_trigger(self, owner: str, recording_id: str, agent_rid: str,
                              fired: TriggerFired, live: bool) -> None:
        recorder = self.recorder
        records = recorder.records
        async with recorder.lock(recording_id):
            rec = await records.get(owner, recording_id)
            plan = None if rec is None else books.plan_trigger(
                rec, agent_rid, fired, self.config.recorder.trigger_interval, time.time())
            if rec is None or plan is None:
                return
            origin = plan.agent.origin
            if not plan.decision.save:
                if live:
                    await records.put(record_suppressed(rec))
                    recorder.metrics.triggers.labels("suppressed").inc()
                    recorder.audit("recording_trigger_suppressed", rec, "trigger rate-limited "
                                   "(recorder.trigger_interval)", origin=origin)
                return
            saved = await self._save_window(rec, origin, fired, plan.capture_id)
            rec = await records.get(owner, recording_id) or rec
            rec, stopping = books.after_save(rec, plan, saved, time.time())
            await records.put(rec)
        recorder.metrics.triggers.labels("saved" if saved.capture_id else "failed").inc()
        recorder.audit("recording_triggered", rec, "trigger fired: its window was "
                       + ("saved" if saved.capture_id else f"not saved: {saved.problem}"),
                       origin=origin, capture_id=saved.capture_id,
                       window_start=fired.window_start, window_end=fired.window_end)
        if stopping:
            await recorder.free(rec)
            self.remove(rec)
            recorder.audit("recording_stopped", rec, "stopped after its trigger (--once)")

    async def _save_window(self, rec: Record_, origin: str, fired: TriggerFired,
                           capture_id: str) -> FiredTrigger:
        """Every instance's window around the trigger, merged into the owner's store."""
        at = books.fired_at(rec, fired)
        store = self.recorder.store()
        if await store.get(rec.owner, capture_id) is not None:
            return FiredTrigger(at=at, origin=origin, capture_id=capture_id)
        agents = [a for a in rec.agents if a.lost_at is None]
        saves = {a.origin: RecordSave(recording_id=a.recording_id, start=fired.window_start,
                                      end=fired.window_end) for a in agents}
        resolution = Resolution([job_of(a) for a in agents], target=rec.label)
        start = Start(target=books.target_of(rec.target), options=books.options_of(rec),
                      upload=True)
        now = time.time()
        info = CaptureInfo(
            capture_id=capture_id, user_id=rec.owner, user_name=rec.user_name,
            target=f"{rec.label} (trigger of recording {rec.recording_id[:8]})"[:256],
            filter=rec.filter, started_at=now, ended_at=None, packets=0, dropped=0, size=0,
            reason="running", expires_at=now + self.config.storage.retention_days * 86400,
            reauthorize=rec.target)
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
