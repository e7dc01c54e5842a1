"""What every capture target prepares before the event loop starts.

The start message for the common flags (each checked with the flag named), and the output
opened early — a bad ``-w`` path fails before anyone is contacted — and removed again if the
capture could not start, so a failed run leaves no empty file behind. Shared by ``capture
local``, ``capture cf`` and ``capture bosh``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pcapd.client.notes import Notes
from pcapd.client.output import PcapngOutput, default_target
from pcapd.errors import UsageError
from pcapd.proto import CaptureLimits, CaptureOptions, Start
from pcapd.proto.messages import Target


def capture_request(args: argparse.Namespace, target: Target) -> Start:
    """The start message for the common options, each checked with the flag named."""
    if not 1 <= args.snaplen <= 262144:
        raise UsageError(f"-s/--snaplen {args.snaplen}: must be between 1 and 262144")
    if args.count is not None and args.count < 1:
        raise UsageError(f"-c/--count {args.count}: must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration:g}: must be more than 0 seconds")
    if args.max_bytes is not None and args.max_bytes < 1:
        raise UsageError(f"--max-bytes {args.max_bytes}: must be at least 1")
    if not args.interface:
        raise UsageError("-i/--interface: name a device, e.g. -i eth0")
    return Start(target=target,
                 options=CaptureOptions(device=args.interface, filter=args.filter,
                                        snaplen=args.snaplen),
                 limits=CaptureLimits(max_duration=args.duration, max_packets=args.count,
                                      max_bytes=args.max_bytes),
                 upload=args.upload)


class NotedOutput(PcapngOutput):
    """The output with the notices of :class:`~pcapd.client.notes.Notes` on the next packet."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.notes = Notes()

    async def write(self, payload: bytes | memoryview) -> None:
        await super().write(self.notes.annotate(bytes(payload)))


@contextmanager
def opened_output(write: str | None, upload: bool = False) -> Iterator[PcapngOutput]:
    """``-w`` opened now; closed at the end, and removed if the block failed before any byte.

    With ``--upload`` the capture goes to the api's store, not here: no file is opened.
    """
    if upload:
        if write is not None:
            raise UsageError(f"--upload stores the capture on the api; -w {write} writes it "
                             "here: choose one")
        yield PcapngOutput(os.devnull)
        return
    output = NotedOutput(default_target(write))
    created = not output.to_stdout and not Path(output.target).exists()
    output.open()
    try:
        yield output
    except BaseException:
        output.close()
        if output.bytes_written == 0 and created:  # only a file this run made (not a fifo)
            Path(output.target).unlink(missing_ok=True)
        raise
    output.close()
