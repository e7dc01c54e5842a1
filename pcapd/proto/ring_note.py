"""What a saved ring's Interface Statistics Block says about the ring: pure, no I/O.

A ``record_save`` streams a window like a capture, and pcapng's statistics options have no
place for what only a ring knows: how many packets it held, and how many it let go because
they were older than ``keep`` or over ``max_bytes``. The agent writes those figures as the
``opt_comment`` of its Interface Statistics Block in one fixed form (:meth:`RingNote.text`);
the api reads them back (:meth:`RingNote.find`) to write them into the saved file's statistics
block of that interface and to tell the user at the end of the save (:func:`summary`). Keeping
the form and its parser side by side is what keeps the two roles agreeing (docs/protocol.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_NOTE = re.compile(
    r"recording (?P<rid>[A-Za-z0-9._-]{1,128}): (?P<window>\d{1,20}) packets in the window "
    r"of (?P<held>\d{1,20}) held; (?P<time>\d{1,20}) aged out \(older than keep\), "
    r"(?P<size>\d{1,20}) aged out \(over max_bytes\), (?P<captured>\d{1,20}) captured")


@dataclass(frozen=True, slots=True)
class RingNote:
    """One ring's figures at the moment of a save (packet counts)."""

    recording_id: str
    """The agent's id of the ring (the recording's id and the instance's index)."""
    window: int
    """Packets in the saved window."""
    held: int
    """Packets the ring held when saved (the window is a part of them)."""
    aged_out_time: int
    """Packets let go because they became older than ``keep``, since the recording began."""
    aged_out_size: int
    """Packets let go to stay within ``max_bytes``, since the recording began."""
    captured: int
    """Packets the ring ever took in (``held + aged_out_time + aged_out_size``)."""

    @property
    def aged_out(self) -> int:
        return self.aged_out_time + self.aged_out_size

    def text(self) -> str:
        """The comment, in the form :meth:`find` reads (under 300 characters)."""
        return (f"recording {self.recording_id}: {self.window} packets in the window of "
                f"{self.held} held; {self.aged_out_time} aged out (older than keep), "
                f"{self.aged_out_size} aged out (over max_bytes), {self.captured} captured")

    @classmethod
    def find(cls, comments: Iterable[str]) -> RingNote | None:
        """The note in a statistics block's comments (None: none there, e.g. a live
        capture's block)."""
        for comment in comments:
            match = _NOTE.search(comment)
            if match is not None:
                return cls(match["rid"], int(match["window"]), int(match["held"]),
                           int(match["time"]), int(match["size"]), int(match["captured"]))
        return None


def summary(notes: Sequence[RingNote]) -> str:
    """What a save ends with, over all its rings: ``20 packets saved of 40 held, 20 aged out
    (20 older than --keep, 0 over --max-bytes)``."""
    window, held = sum(n.window for n in notes), sum(n.held for n in notes)
    time, size = sum(n.aged_out_time for n in notes), sum(n.aged_out_size for n in notes)
    return (f"{window} packets saved of {held} held, {time + size} aged out ({time} older than "
            f"--keep, {size} over --max-bytes)")


__all__ = ["RingNote", "summary"]
