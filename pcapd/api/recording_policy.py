"""What a ``pcapd record start`` may ask for, and how often a trigger may save (pure).

The api's ``recorder`` config sets a default and a ceiling for each duration and size a
recording names. A request above a ceiling is *refused*, not lowered as a capture's limits
are: a user who asked for ``--keep 2h`` and silently got 30 minutes would learn it only when
the window they needed is missing, hours later. The refusal names the flag, the config key
and a value that would be accepted, in the units the user typed.

Triggers are rate-limited per recording: a saved trigger window costs the store
``keep + after`` of every instance, so a flapping condition (a reset on every request) must
not fill the bucket. :class:`TriggerLimiter` allows one save per ``recorder.trigger_interval``
and counts the rest; ``--once`` allows exactly one, and then the recording stops. It holds
no clock: the caller passes ``now`` (the trigger packet's time), so it is tested with numbers
and rebuilt after an api restart from the record's last fired trigger.

No I/O, no Trio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pcapd.config.model import ApiRecorderConfig
from pcapd.errors import Refusal
from pcapd.units import format_duration, format_size


class RecordingRefused(Refusal):
    """A recording the api will not start: a :class:`~pcapd.errors.Refusal` (``code`` is
    INVALID_REQUEST or LIMIT_REACHED), so the api answers it as it answers any other."""


@dataclass(frozen=True, slots=True)
class RecordingRequest:
    """What the user asked for; None: the api's default."""

    keep: float | None = None
    until: float | None = None
    max_bytes: int | None = None
    trigger: bool = False
    """A ``--trigger`` filter was given (the filter itself is checked where BPF is)."""
    after: float | None = None
    once: bool = False


@dataclass(frozen=True, slots=True)
class RecordingParameters:
    """What the recording will do: every value decided and within the api's limits."""

    keep: float
    until: float
    """Seconds from the start: the recording frees itself then."""
    max_bytes: int
    """Per instance."""
    after: float | None
    """Seconds saved after a trigger packet; None without ``--trigger``."""
    once: bool

    def ends_at(self, now: float) -> float:
        return now + self.until


def _too_much(flag: str, asked: str, key: str, most: str) -> RecordingRefused:
    return RecordingRefused(
        "INVALID_REQUEST",
        f"{flag} {asked} is more than this foundation allows ({key} = {most}); "
        f"use {flag} {most} or less")


def _span(flag: str, asked: float | None, default: float, most: float, key: str,
          *, zero: bool = False) -> float:
    if asked is None:
        return default
    if not math.isfinite(asked) or asked < 0 or (asked == 0 and not zero):
        raise RecordingRefused(
            "INVALID_REQUEST",
            f"{flag} {format_duration(asked)}: give a duration "
            f"{'of 0s or more' if zero else 'above 0'}, e.g. {flag} {format_duration(default)}")
    if asked > most:
        raise _too_much(flag, format_duration(asked), key, format_duration(most))
    return asked


def effective_parameters(request: RecordingRequest, config: ApiRecorderConfig
                         ) -> RecordingParameters:
    """The recording ``request`` asks for under ``config``; RecordingRefused naming the flag,
    the limit and what to ask instead."""
    keep = _span("--keep", request.keep, config.keep.default, config.keep.max,
                 "recorder.keep.max")
    until = _span("--until", request.until, config.until.default, config.until.max,
                  "recorder.until.max")
    if request.max_bytes is None:
        max_bytes = config.max_bytes.default
    elif request.max_bytes <= 0:
        raise RecordingRefused(
            "INVALID_REQUEST",
            f"--max-bytes {request.max_bytes}: give a size above 0, e.g. --max-bytes "
            f"{format_size(config.max_bytes.default)}")
    elif request.max_bytes > config.max_bytes.max:
        raise _too_much("--max-bytes", format_size(request.max_bytes),
                        "recorder.max_bytes.max", format_size(config.max_bytes.max))
    else:
        max_bytes = request.max_bytes
    if keep > until:
        raise RecordingRefused(
            "INVALID_REQUEST",
            f"--keep {format_duration(keep)} is longer than the recording runs (--until "
            f"{format_duration(until)}"
            f"{'' if request.until is not None else ', the default'}): shorten --keep or "
            "lengthen --until")
    after: float | None = None
    if request.trigger:
        after = _span("--after", request.after, config.after.default, config.after.max,
                      "recorder.after.max", zero=True)
    elif request.after is not None or request.once:
        flag = "--after" if request.after is not None else "--once"
        raise RecordingRefused(
            "INVALID_REQUEST",
            f"{flag} applies to a trigger: add --trigger BPF (the packets that save a window "
            "by themselves), or drop it")
    return RecordingParameters(keep=keep, until=until, max_bytes=max_bytes, after=after,
                               once=request.once)


def check_room(owner: str, armed: Sequence[str], config: ApiRecorderConfig) -> None:
    """Whether ``owner`` may arm one more recording, given the owners of every recording
    armed now (all api VMs: the store's records); RecordingRefused (LIMIT_REACHED) if not."""
    mine = sum(1 for o in armed if o == owner)
    if mine >= config.per_user:
        raise RecordingRefused(
            "LIMIT_REACHED",
            f"you have {mine} recordings armed, as many as this foundation allows "
            f"(recorder.per_user = {config.per_user}): stop one with `pcapd record stop ID` "
            "(`pcapd record list` shows them)")
    if len(armed) >= config.total:
        raise RecordingRefused(
            "LIMIT_REACHED",
            f"{len(armed)} recordings are armed on this foundation, as many as it allows "
            f"(recorder.total = {config.total}): try again when one has ended")


# -- triggers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerDecision:
    save: bool
    """Save the window around this trigger into the store."""
    stop: bool
    """Stop the recording after the save (``--once``)."""
    suppressed: int
    """Triggers not saved since the last save, this one included when ``save`` is False."""
    next_at: float | None
    """When a trigger may save again; None: never (``--once`` has fired)."""


@dataclass(frozen=True, slots=True)
class TriggerStatistics:
    saved: int
    suppressed: int
    last_saved_at: float | None


class TriggerLimiter:
    """One recording's triggers: at most one save per ``interval`` seconds (the first one
    always saves); with ``once``, exactly one save in the recording's life.

    Triggers arrive from every instance: the same reset seen by two instances of one app is
    one incident, and the second is inside the interval of the first.
    """

    def __init__(self, interval: float, *, once: bool = False,
                 last_saved_at: float | None = None, saved: int = 0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be above 0 seconds, not {interval!r}")
        self.interval = interval
        self.once = once
        self._last = last_saved_at
        self._saved = saved
        self._suppressed = 0
        self._since_save = 0

    @classmethod
    def resumed(cls, interval: float, *, once: bool, fired_at: Sequence[float],
                triggers_fired: int) -> TriggerLimiter:
        """The limiter of a recording read back from the store (an api restart)."""
        return cls(interval, once=once, last_saved_at=max(fired_at, default=None),
                   saved=triggers_fired)

    def next_at(self) -> float | None:
        if self.once and self._saved:
            return None
        return None if self._last is None else self._last + self.interval

    def offer(self, now: float) -> TriggerDecision:
        """A trigger packet seen at ``now``: whether its window is saved."""
        allowed = self.next_at()
        exhausted = self.once and self._saved > 0
        if exhausted or (allowed is not None and now < allowed):
            self._suppressed += 1
            self._since_save += 1
            return TriggerDecision(save=False, stop=False, suppressed=self._since_save,
                                   next_at=allowed)
        suppressed, self._since_save = self._since_save, 0
        self._last = now
        self._saved += 1
        return TriggerDecision(save=True, stop=self.once, suppressed=suppressed,
                               next_at=self.next_at())

    def statistics(self) -> TriggerStatistics:
        return TriggerStatistics(saved=self._saved, suppressed=self._suppressed,
                                 last_saved_at=self._last)
