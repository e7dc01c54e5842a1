"""The flight recorder's books on the api, with numbers: the record a start keeps, the rings
the agents' answers make, what a save may read, what the trigger watch follows and what a
trigger's save does (rate limit, ``--once``, handled once across api VMs)."""

from __future__ import annotations

from pcapd.api import recording_books as books
from pcapd.api.recording_policy import RecordingParameters
from pcapd.proto import (
    Absent,
    CaptureOptions,
    Error,
    LocalTarget,
    Recording,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RingStatus,
    Source,
    Trigger,
    TriggerFired,
)
from pcapd.store.recordings import (
    FiredTrigger,
    LocalRecordingTarget,
    RecordingAgent,
)
from pcapd.store.recordings import Recording as Record_
from pcapd.store.recordings import Trigger as StoredTrigger

RID = "3f2a9c0e" * 4
NOW = 1_764_240_600.0
NS = 1_000_000_000


def agent(index: int, **fields: object) -> RecordingAgent:
    return RecordingAgent(origin=f"ns{index}", address=f"10.0.0.{index}:9494",
                          namespace=f"ns{index}", recording_id=f"{RID}-{index}",
                          **fields)  # type: ignore[arg-type]


def record(*, trigger: StoredTrigger | None = None, agents: int = 2, **fields: object
           ) -> Record_:
    return Record_(recording_id=RID, owner="u" * 16, user_name="alice",
                   target=LocalRecordingTarget(netns=["ns0", "ns1"]), label="local:ns0,ns1",
                   device="eth0", filter="tcp", snaplen=262144, keep=600, max_bytes=10**6,
                   created_at=NOW - 100, ends_at=NOW + 3500, trigger=trigger,
                   agents=[agent(i) for i in range(agents)], **fields)  # type: ignore[arg-type]


def ring(index: int, **fields: object) -> RingStatus:
    return RingStatus(source=Source(id=0, name="x"), **fields)  # type: ignore[arg-type]


def fired(at: float, *, complete: bool = True) -> TriggerFired:
    return TriggerFired(number=1, at=int(at * NS), window_start=int((at - 10) * NS),
                        window_end=int((at + 10) * NS), complete=complete)


def test_a_start_keeps_the_policys_figures_and_the_armed_rings() -> None:
    params = RecordingParameters(keep=600, max_bytes=10**6, until=3600, after=30, once=True)
    started = RecordingStarted(recording_id="x", sources=[Source(id=0, name="ns0:eth0")],
                               ring=RecordRing(keep=1, max_bytes=1, until=1), ends_at=0)
    armed = books.arm_result("ns0", "10.0.0.0:9494", "ns0", f"{RID}-0", started)
    refused = books.arm_result("ns1", "10.0.0.1:9494", "ns1", f"{RID}-1",
                               Error(code="START_CAPTURE_FAILED", text="no such netns"))
    assert refused == Absent(name="ns1", reason="ns1: no such netns", partial=True)
    assert isinstance(armed, tuple)
    rec = books.new_record(
        recording_id=RID, owner="u" * 16, user_name="a" * 300,
        target=LocalTarget(netns=["ns0"]),
        label="local:ns0", audit={}, app_guids=[], options=CaptureOptions(device="eth0"),
        params=params, trigger=Trigger(filter="tcp[13] & 4 != 0"), agents=[armed[0]], now=NOW)
    assert (rec.created_at, rec.ends_at, len(rec.user_name)) == (NOW, NOW + 3600, 256)
    assert rec.trigger == StoredTrigger(filter="tcp[13] & 4 != 0", after=30, once=True)
    assert books.wire_trigger(Trigger(filter="tcp"), params) == Trigger(filter="tcp", after=30,
                                                                         once=True)
    answer = books.started_answer(rec, books.wire_ring(params), [armed], [refused])
    assert [s.name for s in answer.sources] == ["ns0:eth0"] and answer.absent == [refused]


def test_the_agents_answers_make_held_lost_and_unknown_rings() -> None:
    held = Recording(recording_id=f"{RID}-0", target="", options=CaptureOptions(device="eth0"),
                     ring=RecordRing(keep=1, max_bytes=1, until=1), started_at=0, ends_at=0,
                     state="recording", sources=[ring(0, state="recording", bytes=300,
                                                      aged_out_time=2, aged_out_size=3)])
    rings = books.rings_answered([f"{RID}-0", f"{RID}-1"], RecordingList(recordings=[held]))
    assert rings == {f"{RID}-0": held.sources[0], f"{RID}-1": ""}
    assert books.ring_figures({**rings, "x": "no answer"}) == {f"{RID}-0": (300, 5)}
    assert books.final_ring(Error(code="START_CAPTURE_FAILED", text="?")) == ""
    rec = record()
    lost = books.lost_agents(rec, rings)
    assert lost == [rec.agents[1]]
    noted = books.note_lost(rec, lost, NOW)
    assert [a.lost_at for a in noted.agents] == [None, NOW]
    shown = books.listed(noted, rings, NOW)
    assert shown.state == "recording"
    assert [(s.source.name, s.state, s.bytes) for s in shown.sources] == [
        ("ns0:eth0", "recording", 300), ("ns1:eth0", "lost", 0)]
    all_lost = books.listed(rec, {f"{RID}-0": "", f"{RID}-1": "timed out"}, NOW)
    assert all_lost.state == "lost" and all_lost.sources[1].text == "timed out"


def test_an_ended_recording_lists_every_ring_ended() -> None:
    shown = books.listed(record(stopped_at=NOW - 5, state="stopped"), {}, NOW)
    assert (shown.state, shown.end_reason, shown.ends_at) == ("ended", "stopped", NOW - 5)
    assert {s.state for s in shown.sources} == {"ended"}


def test_a_save_reads_the_rings_still_allowed_and_asks_the_lost_ones_too() -> None:
    """A lost ring's agent answers that it holds nothing: the save is partial, whether or not
    a listing noted the loss first; an instance no longer in the target is only named."""
    rec = record(agents=3)
    rec = books.note_lost(rec, [rec.agents[2]], NOW)
    agents, unavailable = books.saved_agents(rec, {"ns0", "ns2"})
    assert agents == [rec.agents[0], rec.agents[2]]
    assert [origin for origin, _ in unavailable] == ["ns1"]
    assert "no longer part of the target" in unavailable[0][1]


def test_the_watch_follows_armed_recordings_with_a_trigger_whose_rings_are_held() -> None:
    with_trigger = record(trigger=StoredTrigger(filter="tcp", after=10))
    lost_one = books.note_lost(with_trigger, [with_trigger.agents[1]], NOW)
    plain = record()
    watched = books.watched_of([lost_one, plain], NOW)
    assert watched == {"10.0.0.0:9494": {f"{RID}-0": ("u" * 16, RID)}}
    assert books.watched_of([with_trigger], NOW + 4000) == {}
    assert books.watch(watched, with_trigger) == ["10.0.0.0:9494", "10.0.0.1:9494"]
    assert sorted(books.unwatch(watched, with_trigger)) == ["10.0.0.0:9494", "10.0.0.1:9494"]
    assert watched == {}


def test_catching_up_takes_the_complete_triggers_of_watched_rings() -> None:
    listed = [Recording(recording_id=rid, target="", options=CaptureOptions(device="eth0"),
                        ring=RecordRing(keep=1, max_bytes=1, until=1), started_at=0, ends_at=0,
                        state="recording", sources=[ring(0, state="recording", bytes=7,
                        triggers=[fired(NOW - 50), fired(NOW - 1, complete=False)])])
              for rid in (f"{RID}-0", "not-watched")]
    statuses, found = books.caught_up({f"{RID}-0": ("o", RID)}, listed)
    assert statuses == {f"{RID}-0": (7, 0)}
    assert found == [(f"{RID}-0", fired(NOW - 50))]


def test_a_trigger_is_saved_once_limited_and_stops_a_once_recording() -> None:
    rec = record(trigger=StoredTrigger(filter="tcp", after=10, once=True))
    assert books.plan_trigger(rec, "someone-elses", fired(NOW), 60.0, NOW) is None
    assert books.plan_trigger(record(), f"{RID}-0", fired(NOW), 60.0, NOW) is None
    plan = books.plan_trigger(rec, f"{RID}-0", fired(NOW - 500), 60.0, NOW)
    assert plan is not None and plan.decision.save and plan.decision.stop
    assert plan.at == rec.created_at  # never before the recording began
    assert plan.capture_id == books.trigger_capture_id(RID, "ns0", int((NOW - 500) * NS))
    saved = FiredTrigger(at=0, origin="ns0", capture_id=plan.capture_id)
    after, stopping = books.after_save(rec, plan, saved, NOW)
    assert stopping and after.state == "stopped" and after.triggers_fired == 1
    assert after.fired[-1].at == plan.at
    again, _ = books.after_save(after, plan, saved, NOW)
    assert again.triggers_fired == 1  # another api VM's save is not counted twice
    assert books.plan_trigger(
        record(trigger=StoredTrigger(filter="tcp", after=10), fired=after.fired,
               triggers_fired=1), f"{RID}-0", fired(NOW - 500), 60.0, NOW) is None


def test_a_second_trigger_within_the_interval_is_suppressed() -> None:
    rec = record(trigger=StoredTrigger(filter="tcp", after=10),
                 fired=[FiredTrigger(at=NOW - 30, origin="ns0", capture_id="a" * 32)],
                 triggers_fired=1)
    plan = books.plan_trigger(rec, f"{RID}-1", fired(NOW), 60.0, NOW)
    assert plan is not None and not plan.decision.save


def test_an_audit_line_names_who_where_and_the_instances() -> None:
    fields = books.audit_fields("recording_started", record(), origin="ns0")
    assert fields == {"event": "recording_started", "recording_id": RID, "user": "alice",
                      "owner": "u" * 16, "target": "local:ns0,ns1", "filter": "tcp",
                      "trigger": None, "instances": ["ns0", "ns1"], "origin": "ns0"}
