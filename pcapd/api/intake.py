"""What the api lets in before it does work: connections not yet authenticated, capture slots.

Sans-I/O bookkeeping, checked and changed in one synchronous step, so no ``await`` can come
between a check and what it protects. Two ledgers:

- :class:`PendingConnections`: client links whose token has not been verified yet, per peer
  address and in total. An unauthenticated link costs the api a socket and up to one message
  buffer; bounding how many exist bounds what an attacker without a token can hold.
- :class:`CaptureSlots`: a capture's place under ``limits.concurrent_captures`` (all users)
  and ``limits.concurrent_captures_per_user``, taken before the request is resolved (the
  resolver awaits the platform for seconds) and given back when the request ends, however it
  ends. Checked apart from the reservation, six requests under a limit of three all passed.
"""

from __future__ import annotations

from collections import Counter

from pcapd.errors import Refusal


class PendingConnections:
    """Unauthenticated connections, by peer address."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total = total
        self.per_peer = per_peer
        self._by_peer: Counter[str] = Counter()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def admit(self, peer: str) -> str | None:
        """Count a new connection from ``peer``; or, over a limit, the reason to refuse it
        (short: it is a WebSocket close reason, at most 123 bytes)."""
        if self._count >= self.total:
            return "too many connections wait to authenticate (limits.unauthenticated_connections)"
        if self._by_peer[peer] >= self.per_peer:
            return ("too many connections from one address wait to authenticate "
                    "(limits.unauthenticated_connections_per_peer)")
        self._by_peer[peer] += 1
        self._count += 1
        return None

    def release(self, peer: str) -> None:
        """The connection from ``peer`` authenticated or went away."""
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]
        self._count -= 1


class CaptureSlots:
    """Captures admitted and not yet ended: running, or still being resolved and started."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total = total
        self.per_user = per_user
        self._owners: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def reserve(self, capture_id: str, user: str) -> None:
        """Take a slot for ``user``'s capture, or raise a ``LIMIT_REACHED`` :class:`Refusal`."""
        if len(self._owners) >= self.total:
            raise Refusal("LIMIT_REACHED", f"the api runs {len(self._owners)} captures "
                          "already (limits.concurrent_captures): try again later")
        mine = sum(1 for owner in self._owners.values() if owner == user)
        if mine >= self.per_user:
            raise Refusal("LIMIT_REACHED", f"you run {mine} captures already "
                          f"(limits.concurrent_captures_per_user is {self.per_user}): "
                          "stop one first")
        self._owners[capture_id] = user

    def release(self, capture_id: str) -> None:
        self._owners.pop(capture_id, None)
