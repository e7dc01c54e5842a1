"""What every capture target prepares before the event loop: the start message from the common
flags (a wrong value refused naming its flag and the allowed range), and the output opened
early — a bad ``-w`` fails before anyone is contacted, a capture that never started leaves no
file, ``--upload`` opens none and refuses ``-w``, and notices ride on the next packet."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from pcapd.client.notes import with_comments
from pcapd.client.plan import capture_request, opened_output
from pcapd.errors import UsageError
from pcapd.pcapng import encode_enhanced_packet
from pcapd.proto import CaptureLimits, CaptureOptions, LocalTarget, Notice, Start

TARGET = LocalTarget(netns=["a"])


def args(**given: Any) -> argparse.Namespace:
    """The common flags as the parser leaves them when none is given, then ``given``."""
    values: dict[str, Any] = {"interface": "eth0", "filter": "", "snaplen": 262144,
                              "count": None, "duration": None, "max_bytes": None,
                              "upload": False}
    return argparse.Namespace(**{**values, **given})


def test_the_start_message_carries_every_common_flag() -> None:
    start = capture_request(args(interface="lo", filter="udp port 53", snaplen=96, count=10,
                                 duration=2.5, max_bytes=4096, upload=True), TARGET)
    assert start == Start(target=TARGET,
                          options=CaptureOptions(device="lo", filter="udp port 53", snaplen=96),
                          limits=CaptureLimits(max_duration=2.5, max_packets=10, max_bytes=4096),
                          upload=True)
    assert capture_request(args(), TARGET).limits == CaptureLimits()  # no limit unless asked


@pytest.mark.parametrize(("given", "refusal"), [
    ({"snaplen": 0}, "-s/--snaplen 0: must be between 1 and 262144"),
    ({"snaplen": 262145}, "-s/--snaplen 262145: must be between 1 and 262144"),
    ({"count": 0}, "-c/--count 0: must be at least 1"),
    ({"duration": 0.0}, "--duration 0: must be more than 0 seconds"),
    ({"duration": -1.5}, "--duration -1.5: must be more than 0 seconds"),
    ({"max_bytes": 0}, "--max-bytes 0: must be at least 1"),
    ({"interface": ""}, "-i/--interface: name a device, e.g. -i eth0"),
])
def test_a_wrong_value_is_refused_naming_its_flag(given: dict[str, Any], refusal: str) -> None:
    with pytest.raises(UsageError) as refused:
        capture_request(args(**given), TARGET)
    assert str(refused.value) == refusal


def test_the_bounds_themselves_are_allowed() -> None:
    for given in ({"snaplen": 1}, {"snaplen": 262144}, {"count": 1}, {"max_bytes": 1},
                  {"duration": 0.001}):
        capture_request(args(**given), TARGET)


def test_a_capture_that_never_started_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.pcapng"
    with pytest.raises(ConnectionError), opened_output(str(target)) as output:
        assert output.writing_to == str(tmp_path / ".out.pcapng.partial")
        raise ConnectionError("the api could not be reached")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_path_fails_on_opening_before_the_capture_body_runs(tmp_path: Path) -> None:
    ran = False
    with pytest.raises(UsageError, match=r"^-w .*/missing/out\.pcapng: no directory"), \
            opened_output(str(tmp_path / "missing" / "out.pcapng")):
        ran = True
    assert not ran


async def test_what_was_written_is_in_place_with_notices_on_the_next_packet(
        tmp_path: Path) -> None:
    target = tmp_path / "out.pcapng"
    packet = encode_enhanced_packet(interface_id=0, timestamp=1, data=b"x" * 60)
    note = Notice(code="CONGESTED", text="the agent dropped 12 packets", origin="router/0")
    with opened_output(str(target)) as output:
        output.notes.add(note)  # type: ignore[attr-defined]
        await output.write(packet)
        await output.write(packet)
    assert target.read_bytes() == with_comments(
        packet, ["pcapd CONGESTED router/0: the agent dropped 12 packets"]) + packet


def test_upload_opens_no_file_and_refuses_a_file_too(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with opened_output(None, upload=True) as output:
        assert output.target == os.devnull
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError) as refused, opened_output("x.pcapng", upload=True):
        pass
    assert str(refused.value) == ("--upload stores the capture on the api; -w x.pcapng writes "
                                  "it here: choose one")
