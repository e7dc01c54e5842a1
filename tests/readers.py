"""Wireshark's command-line tools as the independent readers of what pcapd writes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

ROOT_WARNING = 'Running as user "root" and group "root". This could be dangerous.'


def run_tool(*args: str | Path) -> str:
    """Run a Wireshark tool; it must exit 0 and print nothing on stderr but the root line."""
    result = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False
    )
    warnings = [line for line in result.stderr.splitlines() if line.strip() != ROOT_WARNING]
    assert result.returncode == 0, result.stderr
    assert warnings == [], result.stderr
    return result.stdout


def tshark_fields(path: Path, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    """One row per packet (in file order) with the given tshark fields."""
    args: list[str | Path] = ["tshark", "-r", path, "-T", "fields", "-E", "separator=\t"]
    if display_filter:
        args += ["-Y", display_filter]
    for field in fields:
        args += ["-e", field]
    return [line.split("\t") for line in run_tool(*args).splitlines()]


def inversions(stamps: Iterable[int | Decimal]) -> int:
    """Packets written below the greatest timestamp written before them: what pcapd's merge
    counts as ``reordered`` (late, out of order) and its summary as "written out of order"."""
    count, top = 0, None
    for ts in stamps:
        if top is not None and ts < top:
            count += 1
        top = ts if top is None else max(top, ts)
    return count
