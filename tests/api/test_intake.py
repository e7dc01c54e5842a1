"""What the api lets in before it does work: unauthenticated connections per peer and in
total, capture slots for everyone and per user; the refusals name the limit to raise and what
to do, and every slot given back is free again. Pure: checked and taken in one step."""

from __future__ import annotations

import pytest

from pcapd.api.intake import CaptureSlots, PendingConnections
from pcapd.errors import Refusal

PER_PEER = ("too many connections from one address wait to authenticate "
            "(limits.unauthenticated_connections_per_peer)")
TOTAL = "too many connections wait to authenticate (limits.unauthenticated_connections)"


def test_one_peer_is_held_to_its_share_while_others_still_get_in() -> None:
    pending = PendingConnections(total=10, per_peer=2)
    assert pending.admit("198.18.0.1") is None
    assert pending.admit("198.18.0.1") is None
    assert pending.admit("198.18.0.1") == PER_PEER
    assert pending.admit("198.18.0.2") is None
    assert len(pending) == 3  # the refused one is not counted
    pending.release("198.18.0.1")
    assert pending.admit("198.18.0.1") is None


def test_the_total_is_checked_before_the_peer_and_released_connections_free_it() -> None:
    pending = PendingConnections(total=3, per_peer=1)
    for peer in ("198.18.0.1", "198.18.0.2", "198.18.0.3"):
        assert pending.admit(peer) is None
    assert pending.admit("198.18.0.4") == TOTAL
    assert pending.admit("198.18.0.1") == TOTAL  # over both: the total is named
    for peer in ("198.18.0.1", "198.18.0.2", "198.18.0.3"):
        pending.release(peer)
    assert len(pending) == 0
    assert [pending.admit("198.18.0.9") for _ in range(2)] == [None, PER_PEER]


def test_a_refusal_fits_a_websocket_close_reason() -> None:
    assert all(len(reason.encode()) <= 123 for reason in (PER_PEER, TOTAL))


def test_a_capture_slot_over_the_total_says_to_try_again_later() -> None:
    slots = CaptureSlots(total=2, per_user=5)
    slots.reserve("c1", "alice")
    slots.reserve("c2", "bob")
    with pytest.raises(Refusal) as refused:
        slots.reserve("c3", "carol")
    assert (refused.value.code, refused.value.text) == (
        "LIMIT_REACHED",
        "the api runs 2 captures already (limits.concurrent_captures): try again later")
    slots.release("c1")
    slots.reserve("c3", "carol")
    assert len(slots) == 2


def test_a_user_over_their_share_is_told_to_stop_one_and_others_are_not_held_back() -> None:
    slots = CaptureSlots(total=10, per_user=2)
    slots.reserve("c1", "alice")
    slots.reserve("c2", "alice")
    with pytest.raises(Refusal) as refused:
        slots.reserve("c3", "alice")
    assert (refused.value.code, refused.value.text) == (
        "LIMIT_REACHED",
        "you run 2 captures already (limits.concurrent_captures_per_user is 2): stop one first")
    slots.reserve("c4", "bob")
    slots.release("c2")
    slots.reserve("c3", "alice")
    assert len(slots) == 3


def test_releasing_a_slot_twice_or_one_never_taken_changes_nothing() -> None:
    """A request ends however it ends, and gives its slot back then: a capture refused
    before its slot was taken gives back nothing."""
    slots = CaptureSlots(total=1, per_user=1)
    slots.reserve("c1", "alice")
    slots.release("nope")
    assert len(slots) == 1
    slots.release("c1")
    slots.release("c1")
    assert len(slots) == 0
    slots.reserve("c2", "alice")
