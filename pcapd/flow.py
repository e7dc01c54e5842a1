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


class RateLimiter:
    """Token buckets per key (a user): ``rate`` requests per ``period`` seconds, bursts of up
    to ``rate``. Pure: the caller passes ``now`` (a monotonic clock)."""

    def __init__(self, rate: int, period: float = 60.0) -> None:
        if rate < 1 or period <= 0:
            raise ValueError(f"need rate >= 1 and period > 0, got {rate}, {period}")
        self.rate = rate
        self.period = period
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float) -> float:
        """0.0 when ``key`` may go now (and it is counted); else seconds until it may."""
        tokens, last = self._buckets.get(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / self.period)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) * self.period / self.rate

    def forget_idle(self, now: float) -> None:
        """Drop buckets that are full again (bounded memory with many users)."""
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.rate / self.period >= self.rate]
        for key in full:
            del self._buckets[key]
