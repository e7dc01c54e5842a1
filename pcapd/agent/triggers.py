"""When a recording's trigger fires, and when the window around it is whole: pure, time as data.

A packet matching the trigger filter at ``t`` *fires* a trigger: the window to save is
``[t - keep, t + after]``. More matches while that window is open belong to it (counted as its
``matches``). The window is *whole* once the capture's watermark (no packet read later is older)
has passed ``t + after``: then the agent tells the api, which saves it. Triggers are
rate-limited per recording and instance: a new one fires at most every :data:`MIN_INTERVAL_NS`
(and never while one is open); matches in between are counted as ``suppressed``. With
``once`` the first whole window ends the capture (the ring is kept for the api to save).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MIN_INTERVAL_NS = 60 * 1_000_000_000
"""A trigger fires at most once a minute per recording and instance (documented)."""
HISTORY = 100
"""Fired triggers remembered per recording (the total is counted beyond it)."""


@dataclass(slots=True)
class Fired:
    """One trigger: the matching packet's timestamp and the window around it (ns)."""

    number: int
    at: int
    window_start: int
    window_end: int
    matches: int = 1
    complete: bool = False


class Triggers:
    """The trigger rule of one recording on one agent."""

    def __init__(self, keep_ns: int, after_ns: int, once: bool,
                 min_interval_ns: int = MIN_INTERVAL_NS) -> None:
        self.keep_ns, self.after_ns, self.once = keep_ns, after_ns, once
        self.min_interval_ns = min_interval_ns
        self.fired: deque[Fired] = deque(maxlen=HISTORY)
        self.total = 0
        self.suppressed = 0
        self.open: Fired | None = None
        self.done = False
        """``once`` and its window is whole: capture no more."""

    def matched(self, timestamps: list[int]) -> Fired | None:
        """Note packets that matched the trigger filter; the trigger they fired, if any."""
        new = None
        for at in sorted(timestamps):
            if self.open is not None:
                if at <= self.open.window_end:
                    self.open.matches += 1
                else:  # its window is not whole yet: no second one before it is
                    self.suppressed += 1
            elif self.once and self.total:
                continue
            elif self.fired and at < self.fired[-1].at + max(self.min_interval_ns,
                                                               self.after_ns):
                self.suppressed += 1
            else:
                self.total += 1
                new = self.open = Fired(self.total, at, at - self.keep_ns, at + self.after_ns)
                self.fired.append(new)
        return new

    def complete(self, watermark: int) -> Fired | None:
        """The open trigger, once ``watermark`` has passed the end of its window."""
        fired = self.open
        if fired is None or watermark <= fired.window_end:
            return None
        fired.complete = True
        self.open = None
        if self.once:
            self.done = True
        return fired
