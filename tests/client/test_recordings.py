"""``pcapd record list``: each recording's row as a person reads it (the window held, the ring's
use, triggers, when it ends or ended), the table aligned under its header, raw values and JSON
for scripts, and recording ids by their unique prefix. Pure: rows in, lines out."""

from __future__ import annotations

import json

import pytest

from pcapd.client.recordings import (
    COLUMNS,
    RecordingRow,
    json_text,
    row_cells,
    script_lines,
    table_lines,
    unique_recording_id,
)
from pcapd.errors import UsageError

RID = "3f2a" + "0" * 28
NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def row(**fields: object) -> RecordingRow:
    values: dict[str, object] = {
        "recording_id": RID, "target": "cf:my-org/my-space/my-app", "state": "armed",
        "keep": 600.0, "held": 600.0, "bytes_held": 12_300_000, "max_bytes": 256_000_000,
        "instances": 2, "instances_lost": 0, "trigger": "tcp[tcpflags] & tcp-rst != 0",
        "triggers_fired": 2, "triggers_suppressed": 0, "ends_at": NOW + 8 * 3600,
    }
    values.update(fields)
    return RecordingRow(**values)  # type: ignore[arg-type]


def test_a_full_ring_with_triggers() -> None:
    assert row_cells(row(), NOW) == (
        RID, "cf:my-org/my-space/my-app", "10m of 10m", "12.3MB of 2×256MB", "2",
        "2025-06-15 23:06 (in 8h)")


def test_a_young_ring_a_lost_instance_and_rate_limited_triggers() -> None:
    cells = row_cells(row(held=192.4, instances_lost=1, triggers_suppressed=5,
                          ends_at=NOW + 5400, bytes_held=0), NOW)
    assert cells[2:] == ("3m12s of 10m (1 of 2 instances lost)", "0B of 2×256MB",
                         "2 (+5 rate-limited)", "2025-06-15 16:36 (in 1h30m)")


def test_ended_recordings_hold_nothing_and_say_when_they_ended() -> None:
    stopped = row_cells(row(state="stopped", stopped_at=NOW - 60), NOW)
    assert stopped[2:] == ("-", "-", "2", "stopped 2025-06-15 15:05")
    expired = row_cells(row(state="expired", ends_at=NOW - 3600, trigger=None,
                            triggers_fired=0), NOW)
    assert expired[2:] == ("-", "-", "-", "expired 2025-06-15 14:06")
    # armed, but its end has passed and no api has said so yet
    late = row_cells(row(ends_at=NOW - 1), NOW)
    assert late[5] == "expired 2025-06-15 15:06"


def test_the_table_aligns_columns_under_a_header() -> None:
    other = "9c" + "1" * 30
    lines = table_lines([row(), row(recording_id=other, target="bosh:cf/router",
                                    trigger=None)], NOW)
    assert lines[0].split("  ")[0].strip() == "id"
    assert [c for c in COLUMNS if c not in lines[0]] == []
    starts = [line.index("10m of 10m") for line in lines[1:]]
    assert starts[0] == starts[1] == lines[0].index("window held")
    assert lines[2].startswith(other + "  bosh:cf/router")
    assert all(line == line.rstrip() for line in lines)
    assert table_lines([row()], NOW, headers=False)[0].startswith(RID)


def test_no_recordings_says_how_to_make_one() -> None:
    assert table_lines([], NOW) == ["no recordings (arm one with `pcapd record start cf APP "
                                    "--keep 10m`)"]


def test_scripts_get_raw_values_and_json() -> None:
    assert script_lines([row()]) == [
        f"{RID}\tcf:my-org/my-space/my-app\tarmed\t600.0\t12300000\t2\t0\t{NOW + 8 * 3600}"]
    [document] = json.loads(json_text([row()]))
    assert document["recording_id"] == RID and document["ends_at"] == NOW + 8 * 3600


def test_recording_ids_by_unique_prefix() -> None:
    ids = ["3f2a0001", "3f2b0002", "9c"]
    assert unique_recording_id("3f2a", ids) == "3f2a0001"
    assert unique_recording_id("9c", ids) == "9c"
    assert unique_recording_id("77", ids) == "77"
    with pytest.raises(UsageError, match="recording id 3f2 is ambiguous; it starts 2 "
                                         "recordings: 3f2a0001, 3f2b0002"):
        unique_recording_id("3f2", ids)
