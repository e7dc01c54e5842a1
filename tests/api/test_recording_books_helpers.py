"""The api's flight recorder helpers that need no agent: the id of a trigger's stored capture,
the record's target and back, what ``record list`` shows of the api's answer, and reasons
that fit the protocol's limits however long an agent's refusal was."""

from __future__ import annotations

from pcapd.api.recording_books import (
    arm_result,
    guid_in,
    record_target,
    target_of,
    trigger_capture_id,
)
from pcapd.api.resolve import Resolution
from pcapd.client.record import row_of
from pcapd.proto import (
    MAX_NAME,
    MAX_TEXT,
    Absent,
    CaptureOptions,
    CfTarget,
    DeviceList,
    Error,
    Recording,
    RecordingStarted,
    RecordRing,
    RingStatus,
    Source,
    Trigger,
    decode_text,
    encode,
    source_problem,
)
from pcapd.proto import absent as absent_of
from pcapd.store.recordings import CfRecordingTarget

RID = "3f2a9c0e" * 4


def test_every_api_vm_names_a_triggers_capture_alike() -> None:
    one = trigger_capture_id(RID, "my-app/0", 1_764_240_600_000_000_000)
    assert one == trigger_capture_id(RID, "my-app/0", 1_764_240_600_000_000_000)
    assert len(one) == 32 and int(one, 16) >= 0
    assert one != trigger_capture_id(RID, "my-app/1", 1_764_240_600_000_000_000)
    assert one != trigger_capture_id(RID, "my-app/0", 1_764_240_600_000_000_001)


def test_a_cf_target_is_kept_by_guid_and_asked_again_by_guid() -> None:
    resolution = Resolution([], audit={"org": "my-org (o-guid)", "space": "dev (s-guid)",
                                       "app_guid": "a-guid", "process_type": "web"})
    kept = record_target(CfTarget(app="my-app", instances=[0, 2]), resolution.audit)
    assert kept == CfRecordingTarget(org_guid="o-guid", space_guid="s-guid", app_guid="a-guid",
                                     app_name="my-app", instances=[0, 2])
    assert target_of(kept) == CfTarget(app="a-guid", instances=[0, 2])
    assert guid_in("?") == "?" and guid_in("a (b) (c-1)") == "c-1"


def test_the_listing_row_holds_the_least_window_and_counts_lost_rings() -> None:
    now = 1_764_240_600.0
    ns = 1_000_000_000

    def ring(index: int, **fields: object) -> RingStatus:
        return RingStatus(source=Source(id=index, name=f"my-app/{index}:eth0"),
                          **fields)  # type: ignore[arg-type]

    shown = Recording(
        recording_id=RID, target="cf:org/dev/my-app", options=CaptureOptions(device="eth0"),
        ring=RecordRing(keep=600, max_bytes=1000, until=3600),
        trigger=Trigger(filter="tcp", after=30), started_at=now - 900, ends_at=now + 2700,
        state="recording", triggers_saved=2, triggers_suppressed=5, sources=[
            ring(0, state="recording", bytes=300, first=int((now - 900) * ns)),
            ring(1, state="recording", bytes=200, first=int((now - 120) * ns)),
            ring(2, state="lost", text="restarted")])
    row = row_of(shown, now)
    assert (row.state, row.held, row.bytes_held) == ("armed", 120.0, 500)
    assert (row.instances, row.instances_lost) == (3, 1)
    assert (row.trigger, row.triggers_fired, row.triggers_suppressed) == ("tcp", 2, 5)
    ended = row_of(Recording(
        recording_id=RID, options=CaptureOptions(device="eth0"), ring=RecordRing(keep=600),
        started_at=now - 900, ends_at=now - 10, state="ended", end_reason="stopped"), now)
    assert (ended.state, ended.stopped_at) == ("stopped", now - 10)


def test_an_agents_longest_refusal_still_fits_the_answer() -> None:
    """An agent refuses with a text at the protocol's limit (a 4 KiB filter quoted); the api
    puts its origin before it: cut with "…", the answer is still sent (it used to fail to
    encode, and the user got no answer at all)."""
    origin = "router/d55b2a4e-41b8-4b4b-a0b6-51c4d44c7b4e"
    refusal = Error(code="INVALID_REQUEST", text="bad filter: " + "x" * (MAX_TEXT - 12))
    absent = arm_result(origin, "198.18.0.2:9494", "host", RID + "-0", refusal)
    assert isinstance(absent, Absent) and absent.partial and absent.name == origin
    assert len(absent.reason) == MAX_TEXT and absent.reason.endswith("x…")
    assert absent.reason.startswith(f"{origin}: bad filter: ")
    started = RecordingStarted(recording_id=RID, sources=[], ring=RecordRing(keep=60.0),
                               ends_at=1_764_240_600.0, absent=[absent])
    assert decode_text(encode(started)) == started


def test_a_long_reason_and_name_are_cut_to_fit_and_short_ones_kept() -> None:
    long_name = "an-app-with-a-very-long-name-" * 12 + "/0"
    kept = absent_of("my-app/0", "its cell is down", partial=True)
    assert (kept.name, kept.reason, kept.partial) == ("my-app/0", "its cell is down", True)
    cut = absent_of(long_name, "r" * (MAX_TEXT * 2))
    assert len(cut.name) == MAX_NAME and cut.name.endswith("…")
    assert len(cut.reason) == MAX_TEXT and cut.reason.endswith("r…")
    devices = source_problem(long_name, "cannot reach its agent: " + "e" * MAX_TEXT)
    assert len(devices.problem) == MAX_TEXT and devices.problem.endswith("e…")
    answer = DeviceList(sources=[devices])
    assert decode_text(encode(answer)) == answer
