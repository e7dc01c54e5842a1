"""What ``pcapd record list`` prints, and which recording an id prefix means (pure).

The api answers with one :class:`RecordingRow` per recording of the caller; these functions
turn rows into the table a person reads on a terminal, the tab-separated lines a script reads
from a pipe (raw numbers: seconds since the epoch, bytes), or JSON. ``now`` is passed in, so
"in 7h59m" is tested with numbers. No I/O.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pcapd.errors import UsageError
from pcapd.units import display_size, format_duration, format_size

COLUMNS = ("id", "target", "window held", "size", "triggers fired", "ends (UTC)")


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One recording as ``record list`` shows it."""

    recording_id: str
    target: str
    state: str
    """armed, stopped or expired."""
    keep: float
    held: float
    """Seconds of traffic held now: from the oldest packet still held, the least over the
    instances (a ring younger than ``keep``, or cut by ``max_bytes``, holds less)."""
    bytes_held: int
    """All instances together."""
    max_bytes: int
    """Per instance."""
    instances: int
    instances_lost: int
    """Instances whose ring is gone (the agent restarted, the instance was removed)."""
    trigger: str | None
    triggers_fired: int
    triggers_suppressed: int
    ends_at: float
    stopped_at: float | None = None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _window(row: RecordingRow) -> str:
    if row.state != "armed":
        return "-"  # the rings are freed
    text = f"{format_duration(round(row.held))} of {format_duration(row.keep)}"
    if row.instances_lost:
        text += f" ({row.instances_lost} of {row.instances} instances lost)"
    return text


def _size(row: RecordingRow) -> str:
    if row.state != "armed":
        return "-"
    return f"{display_size(row.bytes_held)} of {row.instances}×{format_size(row.max_bytes)}"


def _triggers(row: RecordingRow) -> str:
    if row.trigger is None:
        return "-"
    text = str(row.triggers_fired)
    if row.triggers_suppressed:
        text += f" (+{row.triggers_suppressed} rate-limited)"
    return text


def _ends(row: RecordingRow, now: float) -> str:
    if row.state == "stopped":
        return f"stopped {_when(row.stopped_at if row.stopped_at is not None else row.ends_at)}"
    if row.state == "expired" or row.ends_at <= now:
        return f"expired {_when(row.ends_at)}"
    return f"{_when(row.ends_at)} (in {format_duration(max(1, round(row.ends_at - now)))})"


def row_cells(row: RecordingRow, now: float) -> tuple[str, ...]:
    """The table's cells for one recording, in :data:`COLUMNS` order."""
    return (row.recording_id, row.target, _window(row), _size(row), _triggers(row),
            _ends(row, now))


def table_lines(rows: Sequence[RecordingRow], now: float, *, headers: bool = True
                ) -> list[str]:
    """The terminal's table: columns padded to their widest cell, two spaces apart."""
    if not rows:
        return ["no recordings (arm one with `pcapd record start cf APP --keep 10m`)"]
    table = [row_cells(r, now) for r in rows]
    if headers:
        table.insert(0, COLUMNS)
    widths = [max(len(cells[i]) for cells in table) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            .rstrip() for cells in table]


def script_lines(rows: Sequence[RecordingRow]) -> list[str]:
    """For a pipe: tab-separated raw values, no header (as ``captures list`` does)."""
    return ["\t".join(str(v) for v in (
        r.recording_id, r.target, r.state, r.held, r.bytes_held, r.triggers_fired,
        r.triggers_suppressed, r.ends_at)) for r in rows]


def json_text(rows: Sequence[RecordingRow]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n"


def unique_recording_id(prefix: str, ids: Sequence[str]) -> str:
    """The one id starting with ``prefix`` (as git takes a commit's prefix); an exact id
    always wins. An unknown prefix is left to the api, which says it does not exist."""
    if prefix in ids:
        return prefix
    matches = sorted(i for i in ids if i.startswith(prefix))
    if len(matches) > 1:
        raise UsageError(f"recording id {prefix} is ambiguous; it starts {len(matches)} "
                         f"recordings: {', '.join(matches)}")
    return matches[0] if matches else prefix
