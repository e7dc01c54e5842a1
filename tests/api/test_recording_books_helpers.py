"""The api's flight recorder helpers that need no agent: the id of a trigger's stored capture,
the record's target and back, and what ``record list`` shows of the api's answer."""

from __future__ import annotations

from pcapd.api.recording_books import guid_in, record_target, target_of, trigger_capture_id
from pcapd.api.resolve import Resolution
from pcapd.client.record import row_of
from pcapd.proto import (
    CaptureOptions,
    CfTarget,
    Recording,
    RecordRing,
    RingStatus,
    Source,
    Trigger,
)
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
