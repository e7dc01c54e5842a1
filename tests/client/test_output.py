"""The pure parts of the CLI's output side: where a file goes, and the words of the summary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcapd.client.output import PcapngOutput, check_target, partial_path, put_in_place
from pcapd.client.progress import limits_line, sources_text
from pcapd.errors import PcapdError, UsageError
from pcapd.proto import Absent, CaptureLimits, End


def test_a_fifo_is_written_in_place_and_never_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check_target(str(fifo), force=False) is None
    assert check_target(os.devnull, force=False) is None


def test_a_capture_that_never_started_leaves_nothing(tmp_path: Path) -> None:
    output = PcapngOutput(str(tmp_path / "x.pcapng"))
    output.open()
    assert (tmp_path / ".x.pcapng.partial").exists()
    output.close()
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_appeared_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "x.pcapng"
    partial = partial_path(target)
    partial.write_bytes(b"new")
    target.write_bytes(b"someone else's")
    with pytest.raises(PcapdError, match="appeared while pcapd was writing"):
        put_in_place(partial, target, force=False)
    assert target.read_bytes() == b"someone else's" and partial.read_bytes() == b"new"
    put_in_place(partial, target, force=True)
    assert target.read_bytes() == b"new" and not partial.exists()


def test_a_forced_symbolic_link_keeps_pointing_at_its_file(tmp_path: Path) -> None:
    real = tmp_path / "real.pcapng"
    real.write_bytes(b"old")
    link = tmp_path / "link.pcapng"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="the file exists"):
        check_target(str(link), force=False)
    assert check_target(str(link), force=True) == real


def test_limits_say_when_the_api_lowered_them() -> None:
    limits = CaptureLimits(max_duration=3600, max_bytes=1_000_000_000)
    assert limits_line(limits, CaptureLimits(max_duration=7200)) == (
        "limits: 1h (the api's maximum; you asked 2h), 1.0 GB (the api's maximum)")
    assert limits_line(CaptureLimits(max_duration=30, max_packets=1),
                       CaptureLimits(max_duration=30, max_packets=1)) == (
        "limits: 30s, 1 packet")


def test_sources_count_only_what_pcapd_should_have_captured() -> None:
    lost = Absent(name="my-app/1", reason="cannot connect to its agent", partial=True)
    crashed = Absent(name="my-app/3", reason="my-app/3 is CRASHED: not captured")
    assert sources_text(End(reason="completed", expected=3, absent=[lost, crashed]), 2) == (
        "2 of 3 sources; my-app/1 unavailable (cannot connect to its agent); "
        "my-app/3 is CRASHED: not captured")
    assert sources_text(End(reason="completed", expected=1, absent=[crashed]), 1) == (
        "1 source; my-app/3 is CRASHED: not captured")
