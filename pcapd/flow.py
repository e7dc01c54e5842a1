"""Drop-and-count flow control with hysteresis, sans-I/O.

Theory of operation. A capture must never make pcapd grow without bound or slow the workload
down: when the reader of a stream (the api for an agent, the user for the api) is slower than the
traffic, packets are dropped *at the producer* and counted, never queued forever. Dropping starts
when the queue reaches ``upper_limit`` packets and, once started, goes on until the queue has
drained to ``lower_limit`` — without that gap a queue hovering at the limit would flap between
dropping and keeping on every batch, and the user would get a CONGESTED message per batch.
``size`` is the hard cap: admission never takes the queue above it (``upper_limit <= size``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot: whether the gate drops now, and how many packets it kept and dropped."""

    dropping: bool
    admitted: int
    dropped: int
    episodes: int
    """How many times dropping started: one CONGESTED message each."""


class DropGate:
    """Decides how many packets of a batch may join a queue of a given depth."""

    def __init__(self, size: int, upper_limit: int, lower_limit: int) -> None:
        if not 0 <= lower_limit < upper_limit <= size:
            raise ValueError(
                f"need 0 <= lower_limit < upper_limit <= size, got {lower_limit}, "
                f"{upper_limit}, {size}"
            )
        self.size = size
        self.upper_limit = upper_limit
        self.lower_limit = lower_limit
        self.dropping = False
        self._admitted = 0
        self._dropped = 0
        self._episodes = 0

    def admit(self, depth: int, count: int) -> int:
        """How many of ``count`` packets to keep, the queue holding ``depth`` now.

        The first ``admit(...)`` packets are kept, the rest dropped and counted; a caller that
        can only keep whole batches keeps none when the answer is below ``count``.
        """
        if self.dropping:
            if depth > self.lower_limit:
                self._dropped += count
                return 0
            self.dropping = False
        room = self.upper_limit - depth
        if count <= room:
            self._admitted += count
            return count
        kept = max(room, 0)
        self.dropping = True
        self._episodes += 1
        self._admitted += kept
        self._dropped += count - kept
        return kept

    def statistics(self) -> GateStatistics:
        return GateStatistics(self.dropping, self._admitted, self._dropped, self._episodes)
