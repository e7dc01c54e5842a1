"""The books of a capture on the api: every limit and counter, synchronously, without root.

Blocks are real EPBs (36 bytes each: 4 bytes of data), so the byte limits below are exact.
"""

from __future__ import annotations

import pytest

from pcapd.api.ledger import Account, Ledger, Limit, Verdict, effective_limits
from pcapd.config.model import ApiLimitsConfig
from pcapd.pcapng import (
    ISB,
    InterfaceDescription,
    InterfaceStatistics,
    RawBlock,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    parse,
)
from pcapd.pcapng.blocks import IDB
from pcapd.proto import Absent, CaptureLimits, Counters, End, SourceStatistics
from pcapd.proto.messages import MAX_LIST
from pcapd.proto.ring_note import RingNote

EPB_SIZE = 36
IDB_OF = encode_interface_description(link_type=1, snaplen=65535, name="lo")


def epbs(source: int, n: int) -> list[bytes]:
    return [encode_enhanced_packet(interface_id=source, timestamp=i, data=b"pkt!")
            for i in range(n)]


def ledger(*origins: str, unavailable: tuple[tuple[str, str], ...] = (),
           **limits: Limit) -> Ledger:
    return Ledger(limits, origins or ("a",), unavailable)  # type: ignore[arg-type]


def capturing(book: Ledger, *which: int) -> list[Account]:
    """Start and number the given sources (all by default): the headers are written."""
    ready = [book.accounts[i] for i in (which or range(len(book.accounts)))]
    for account in ready:
        account.started(IDB_OF)
    book.number(ready)
    return ready


def identity_holds(c: Counters) -> bool:
    return c.packets == c.written + c.agent_dropped + c.api_dropped + c.discarded


def test_an_epb_here_is_36_bytes() -> None:
    assert {len(b) for b in epbs(0, 3)} == {EPB_SIZE}


# --- limits ----------------------------------------------------------------------------------


def test_a_request_may_ask_for_less_than_the_api_never_more() -> None:
    policy = ApiLimitsConfig(max_duration=3600.0, max_bytes=1000, max_packets=None)
    assert effective_limits(CaptureLimits(), policy) == {
        "max_duration": Limit(3600.0, True), "max_bytes": Limit(1000, True)}
    assert effective_limits(CaptureLimits(max_duration=60, max_bytes=5000, max_packets=7),
                            policy) == {"max_duration": Limit(60, False),
                                        "max_bytes": Limit(1000, True),
                                        "max_packets": Limit(7, False)}
    # equal to the api's own is the user's limit: reaching it completes the capture
    assert effective_limits(CaptureLimits(max_bytes=1000), policy)["max_bytes"] == Limit(1000,
                                                                                         False)


def test_the_limits_in_force_as_started_says_them_and_the_agents_safety_net() -> None:
    book = ledger(max_duration=Limit(90.0, True), max_packets=Limit(10, False),
                  max_bytes=Limit(1 << 30, True))
    assert book.in_force() == CaptureLimits(max_duration=90.0, max_packets=10,
                                            max_bytes=1 << 30)
    assert isinstance(book.in_force().max_packets, int)
    assert book.for_agents(30.0) == CaptureLimits(max_duration=120.0)
    assert ledger().in_force() == CaptureLimits() and ledger().for_agents(30.0) == CaptureLimits()


def test_a_duration_limit_ends_as_whose_limit_it_is() -> None:
    assert ledger(max_duration=Limit(3600, True)).duration_reached() == Verdict(
        "limit", "max_duration 3600s reached", "max_duration",
        notice="the api's limit of 3600s per capture was reached (limits.max_duration)")
    assert ledger(max_duration=Limit(1.5, False)).duration_reached() == Verdict(
        "completed", "1.5s captured")


def test_the_first_reason_to_stop_is_the_one_the_user_sees() -> None:
    book = ledger()
    assert not book.stopping and book.end_reason == "stopped"
    assert book.stop("drained", "the api shuts down")
    assert not book.stop("stopped", "stopped by the user")
    assert (book.end_reason, book.end_text, book.end_limit) == ("drained", "the api shuts down",
                                                                None)
    assert book.agent_stop_reason() == "drained"


@pytest.mark.parametrize(("reason", "to_agents"), [
    ("drained", "drained"), ("limit", "limit"), ("completed", "limit"), ("stopped", "requested"),
    ("failed", "requested")])
def test_agents_are_told_why_they_stop(reason: str, to_agents: str) -> None:
    book = ledger()
    book.stop(reason)  # type: ignore[arg-type]
    assert book.agent_stop_reason() == to_agents


# --- the cut ---------------------------------------------------------------------------------


def test_no_limit_no_cut() -> None:
    book = ledger()
    (a,) = capturing(book)
    blocks = epbs(0, 1000)
    assert book.admit(blocks) is blocks
    book.offered(blocks, 1000)
    assert (a.written, book.written_packets, book.written_bytes) == (1000, 1000, 36000)
    assert not book.full and not book.stopping


def test_a_packet_limit_hit_exactly_by_a_batch_ends_the_capture_with_all_of_it() -> None:
    book = ledger(max_packets=Limit(5, False))
    (a,) = capturing(book)
    first = book.admit(epbs(0, 2))
    book.offered(first, len(first))
    assert not book.stopping
    last = book.admit(epbs(0, 3))
    assert len(last) == 3 and book.full
    assert (book.end_reason, book.end_text, book.end_limit) == ("completed", "5 packets captured",
                                                                None)
    book.offered(last, 3)
    # what arrives after (agents take a moment to stop) is discarded and counted
    assert book.admit(epbs(0, 4)) == []
    assert (a.written, a.discarded) == (5, 4)


def test_a_packet_limit_inside_a_batch_cuts_it_there() -> None:
    book = ledger(max_packets=Limit(100, True))
    (a,) = capturing(book)
    book.offered(epbs(0, 98), 98)
    cut = book.admit(epbs(0, 10))
    assert len(cut) == 2
    assert (book.end_reason, book.end_text, book.end_limit) == (
        "limit", "the api's limit of 100 packets reached (limits.max_packets)", "max_packets")
    book.offered(cut, 2)
    assert (a.written, a.discarded, book.written_packets) == (100, 8, 100)


def test_packets_the_queue_dropped_do_not_count_towards_a_limit() -> None:
    book = ledger(max_packets=Limit(10, False))
    (a,) = capturing(book)
    blocks = book.admit(epbs(0, 8))
    book.offered(blocks, 5)  # a slow user: the gate kept five
    assert (a.written, a.api_dropped, book.written_packets) == (5, 3, 5)
    assert len(book.admit(epbs(0, 8))) == 5  # room for five more written


def test_a_byte_limit_hit_exactly_ends_the_capture_with_the_last_packet() -> None:
    book = ledger(max_bytes=Limit(3 * EPB_SIZE, False))
    capturing(book)
    assert len(book.admit(epbs(0, 3))) == 3
    assert book.full and book.end_text == f"{3 * EPB_SIZE} bytes captured"


def test_a_byte_limit_inside_a_packet_keeps_only_whole_packets_below_it() -> None:
    book = ledger(max_bytes=Limit(3 * EPB_SIZE - 1, True))
    (a,) = capturing(book)
    allowed = book.admit(epbs(0, 5))
    book.offered(allowed, len(allowed))
    assert len(allowed) == 2 and book.written_bytes == 2 * EPB_SIZE <= 3 * EPB_SIZE - 1
    assert (book.end_reason, book.end_limit) == ("limit", "max_bytes")
    assert book.end_text == (f"the api's limit of {3 * EPB_SIZE - 1} bytes reached "
                             "(limits.max_bytes)")
    assert (a.written, a.discarded) == (2, 3)


def test_below_a_byte_limit_nothing_is_cut() -> None:
    book = ledger(max_bytes=Limit(10 * EPB_SIZE, False))
    capturing(book)
    assert len(book.admit(epbs(0, 9))) == 9 and not book.stopping


def test_when_both_limits_fall_in_one_batch_the_packet_limit_is_said() -> None:
    book = ledger(max_packets=Limit(3, False), max_bytes=Limit(2 * EPB_SIZE, True))
    capturing(book)
    assert len(book.admit(epbs(0, 5))) == 2  # the tighter one cuts
    assert (book.end_reason, book.end_text) == ("completed", "3 packets captured")


def test_discards_are_counted_against_the_source_of_each_packet() -> None:
    book = ledger("a", "b", max_packets=Limit(3, False))
    a, b = capturing(book)
    merged = [*epbs(0, 2), *epbs(1, 3), *epbs(0, 1)]  # as the merge releases them: mixed
    allowed = book.admit(merged)
    book.offered(allowed, len(allowed))
    assert (a.written, b.written) == (2, 1)
    assert (a.discarded, b.discarded) == (1, 2)


def test_a_whole_batch_goes_out_uncut_until_a_limit_falls_inside_it() -> None:
    book = ledger(max_packets=Limit(10, False), max_bytes=Limit(100 * EPB_SIZE, False))
    (a,) = capturing(book)
    assert book.whole(a, 4, 4 * EPB_SIZE) is True
    book.offered_whole(a, 4, 3, 3 * EPB_SIZE)  # the gate kept three of four
    assert (a.written, a.api_dropped, book.written_packets, book.written_bytes) == (
        3, 1, 3, 3 * EPB_SIZE)
    assert book.whole(a, 6, 6 * EPB_SIZE) is True  # 9: below the limit
    assert book.whole(a, 7, 7 * EPB_SIZE) is False  # reaches 10: cut it (even exactly at it)
    big = ledger(max_bytes=Limit(100, False))
    (b,) = capturing(big)
    assert big.whole(b, 2, 99) is True and big.whole(b, 2, 100) is False


def test_past_a_limit_a_whole_batch_is_discarded_and_counted_without_cutting() -> None:
    book = ledger(max_packets=Limit(2, False))
    (a,) = capturing(book)
    book.admit(epbs(0, 2))
    assert book.whole(a, 500, 500 * EPB_SIZE) is None
    assert a.discarded == 500


def test_past_a_count_limit_the_identity_holds() -> None:
    """What an agent captured = written + its drops + the api's drops + discarded."""
    book = ledger("a", "b", max_packets=Limit(100, False))
    a, b = capturing(book)
    for _ in range(30):  # batches of 7 and 5 while the agents have not stopped yet
        for blocks in (epbs(0, 7), epbs(1, 5)):
            allowed = book.admit(blocks)
            book.offered(allowed, len(allowed) - len(allowed) // 4)  # a slow user too
    a.ended(End(reason="stopped", totals=Counters(packets=210, agent_dropped=0)))
    b.reported(SourceStatistics(source=1, state="capturing", packets=155, agent_dropped=5))
    end = book.end()
    # the limit counts what was written: the gate dropped some of the batch that reached it
    assert end.reason == "completed" and end.text == "100 packets captured"
    assert end.totals.written == a.written + b.written == book.written_packets < 100
    assert end.totals.discarded > 0 and end.totals.api_dropped > 0
    assert identity_holds(end.totals), end.totals
    assert all(identity_holds(s) for s in book.statistics(final=True).sources)


# --- sources: started, lost, resumed, ended ----------------------------------------------------


def test_a_source_starts_once_with_its_first_idb() -> None:
    book = ledger("a", "b")
    a, b = book.accounts
    assert (a.state, a.id, book.settled) == ("starting", -1, False)
    assert a.started(IDB_OF) and a.state == "capturing"
    assert not a.started(b"another") and a.idb == IDB_OF  # a resumed agent's is the same
    assert not book.settled
    b.gone()
    b.over()  # it failed to start: settled without it
    assert book.settled and b.state == "starting"


def test_only_numbered_sources_are_in_the_statistics() -> None:
    book = ledger("a", "b", "c")
    a, c = capturing(book, 0, 2)
    assert [(x.id, x.origin) for x in (a, c)] == [(0, "a"), (1, "c")]
    assert [s.source for s in book.statistics().sources] == [0, 1]
    assert book.placeholders == [book.accounts[1]]


def test_agent_statistics_then_its_final_totals_replace_each_other() -> None:
    (a,) = capturing(book := ledger())
    a.reported(SourceStatistics(source=4, state="capturing", packets=10, bytes=1000,
                                kernel_received=12, agent_dropped=1))
    assert a.counters == Counters(packets=10, bytes=1000, kernel_received=12, agent_dropped=1)
    a.ended(End(reason="limit", totals=Counters(packets=20, bytes=2000)))
    assert a.counters == Counters(packets=20, bytes=2000)
    assert book.statistics().sources[0].source == 0  # the output's id, not the agent's


def test_a_lost_agent_never_undercounts_what_reached_the_api() -> None:
    (a,) = capturing(book := ledger())
    a.reported(SourceStatistics(source=0, state="capturing", packets=50, agent_dropped=2))
    book.offered(epbs(0, 80), 70)  # its last statistics lag what it sent
    stats = a.statistics()
    assert (stats.packets, stats.written, stats.api_dropped) == (82, 70, 10)
    assert identity_holds(stats)


def test_a_source_lost_then_resumed_keeps_both_captures_counts() -> None:
    book = ledger("a", "b")
    a, b = capturing(book)
    a.reported(SourceStatistics(source=0, state="capturing", packets=40, bytes=4000,
                                kernel_received=40))
    book.offered(epbs(0, 40), 40)
    a.lost()
    assert (a.state, a.counters, a.previous.packets) == ("unavailable", Counters(), 40)
    assert book.absent() == [Absent(name="a", partial=True, reason="unavailable")]
    a.resumed()
    assert a.state == "capturing" and book.absent() == []
    a.reported(SourceStatistics(source=0, state="capturing", packets=5, bytes=500))
    book.offered(epbs(0, 5), 5)
    a.ended(End(reason="stopped", totals=Counters(packets=6, bytes=600, kernel_received=6)))
    stats = a.statistics()
    assert (stats.packets, stats.bytes, stats.kernel_received, stats.written) == (46, 4600, 46,
                                                                                  45)
    a.gone()
    assert a.statistics().state == "stopped"
    # lost twice: the earlier captures add up
    b.reported(SourceStatistics(source=1, state="capturing", packets=3))
    b.lost()
    b.resumed()
    b.reported(SourceStatistics(source=1, state="capturing", packets=4))
    b.lost()
    assert b.previous.packets == 7
    assert book.totals(late=3) == Counters(packets=53, bytes=4600, kernel_received=46,
                                           written=45, late=3)


def test_a_source_whose_task_ends_is_stopped_if_its_agent_ended_it_else_lost() -> None:
    book = ledger("ended", "failed", "cancelled", "never")
    ended, failed = book.accounts[:2]
    capturing(book, 0, 1, 2)
    ended.ended(End(reason="limit"))
    failed.failure = ("INSTANCE_UNAVAILABLE", "failed (10.0.0.2:9494) lost: connection reset")
    for account in book.accounts:
        account.gone()
    assert [a.state for a in book.accounts] == ["stopped", "unavailable", "unavailable",
                                                 "starting"]


def test_every_source_over_ends_the_capture_completed_or_failed() -> None:
    book = ledger("a", "b")
    a, b = capturing(book)
    assert book.all_gone() is None
    a.ended(End(reason="limit"))
    a.gone()
    a.over()
    assert book.all_gone() is None  # b still runs
    b.gone()
    b.over()
    assert book.all_gone() == ("completed", "every source ended")
    lost = ledger("a")
    (x,) = capturing(lost)
    x.gone()
    x.over()
    assert lost.all_gone() == ("failed", "every source was lost")
    assert ledger("a").all_gone() is None  # nothing numbered yet: the start decides


@pytest.mark.parametrize(("codes", "expected"), [
    (["INVALID_REQUEST"], "INVALID_REQUEST"),
    (["INVALID_REQUEST", "INVALID_REQUEST"], "INVALID_REQUEST"),
    (["INSTANCE_UNAVAILABLE"], "START_CAPTURE_FAILED"),
    (["CONNECTION_ERROR"], "START_CAPTURE_FAILED"),
    (["INVALID_REQUEST", "PERMISSION_DENIED"], "START_CAPTURE_FAILED"),
])
def test_no_source_started_one_error_says_why(codes: list[str], expected: str) -> None:
    book = ledger(*(f"s{i}" for i in range(len(codes))),
                  unavailable=(("my-app/3", "my-app/3 is CRASHED"),))
    for account, code in zip(book.accounts, codes, strict=True):
        account.failure = (code, f"{account.origin}: {code.lower()}")  # type: ignore[assignment]
    code, text = book.failed_start()
    assert code == expected
    assert text == "no source could be captured: my-app/3 is CRASHED; " + "; ".join(
        f"s{i}: {c.lower()}" for i, c in enumerate(codes))


# --- partial or complete: the file, the summary, the end ---------------------------------------


def test_a_source_that_never_started_makes_the_capture_partial() -> None:
    book = ledger("my-app/0", "my-app/1", "my-app/2")
    never = book.accounts[2]
    never.failure = ("INSTANCE_UNAVAILABLE", "my-app/2 (10.0.0.3:9494) unavailable: refused")
    never.why = "cannot connect to its agent at 10.0.0.3:9494: refused"
    capturing(book, 0, 1)
    never.gone()
    assert book.header_comment() == ("pcapd: partial capture: 2 of 3 sources; my-app/2 "
                                     "unavailable (cannot connect to its agent at "
                                     "10.0.0.3:9494: refused)")
    end = book.end()
    assert end.expected == 3
    assert end.absent == [Absent(name="my-app/2", partial=True, reason=never.why)]


def test_a_down_instance_is_named_but_does_not_make_the_capture_partial() -> None:
    book = ledger("my-app/0", unavailable=(("my-app/3", "my-app/3 is CRASHED"),
                                           ("my-app/4", "DOWN")))
    capturing(book)
    assert book.header_comment() == "my-app/3 is CRASHED; my-app/4 not captured (DOWN)"
    end = book.end()
    assert end.expected == 1
    assert end.absent == [Absent(name="my-app/3", reason="my-app/3 is CRASHED"),
                          Absent(name="my-app/4", reason="DOWN")]
    assert not any(a.partial for a in end.absent)


def test_a_complete_capture_has_no_header_comment_and_nothing_absent() -> None:
    book = ledger("a", "b")
    capturing(book)
    assert book.header_comment() is None
    assert book.end().absent == [] and book.end().expected == 2


def test_a_source_lost_mid_capture_is_partial_in_its_statistics_block() -> None:
    book = ledger("a", "b", "c")
    a, b = capturing(book, 0, 1)
    book.accounts[2].why = "start failed: no such device"
    book.offered([*epbs(0, 3), *epbs(1, 2)], 5)
    a.reported(SourceStatistics(source=0, state="capturing", kernel_received=9,
                                kernel_dropped=1, interface_dropped=2, agent_dropped=4))
    book.offered(epbs(0, 2), 0)  # the user's queue dropped two
    b.why = "lost at 12:00:00 UTC and not back within 30s: connection reset"
    b.gone()
    isbs = [parse(RawBlock(ISB, block, 0, False))
            for block in book.statistics_blocks(now=2_000, started=1_000)]
    assert isbs == [
        InterfaceStatistics(interface_id=0, timestamp=2_000, start_time=1_000, end_time=2_000,
                            received=9, kernel_dropped=1, interface_dropped=2, delivered=3,
                            pcapd_dropped=6),
        InterfaceStatistics(interface_id=1, timestamp=2_000, start_time=1_000, end_time=2_000,
                            received=0, kernel_dropped=0, interface_dropped=0, delivered=2,
                            pcapd_dropped=0, comments=(f"pcapd: {b.why}; the capture is "
                                                       "partial",)),
        InterfaceStatistics(interface_id=2, timestamp=2_000, delivered=0,
                            comments=("pcapd: not captured: start failed: no such device",)),
    ]
    assert [x.name for x in book.end().absent] == ["b", "c"]


def test_a_saved_rings_figures_go_into_its_statistics_block_and_the_end() -> None:
    """A ``record save``: each agent's statistics block says what its ring held and let go;
    the file's block of that interface says it again, and ``end`` sums it for the user."""
    book = ledger("my-app/0", "my-app/1", "my-app/2")
    a, b = capturing(book, 0, 1)
    book.accounts[2].why = "not recorded"
    rings = [RingNote("r-0", 10, 20, 7, 3, 30), RingNote("r-1", 4, 4, 0, 0, 4)]
    for account, note in zip((a, b), rings, strict=True):
        account.noted([encode_interface_statistics(
            interface_id=0, timestamp=5, delivered=note.window, comment=note.text())])
        account.ended(End(reason="completed", totals=Counters(packets=note.window,
                                                              written=note.window)))
    b.why = "lost at 12:00:00 UTC: connection reset"
    b.state = "unavailable"
    for account in book.accounts:
        account.over()
    assert book.all_gone() == ("completed", "14 packets saved of 24 held, 10 aged out (7 "
                               "older than --keep, 3 over --max-bytes)")
    isbs = [parse(RawBlock(ISB, block, 0, False))
            for block in book.statistics_blocks(now=2_000, started=1_000)]
    assert [x.comments for x in isbs] == [  # type: ignore[union-attr]
        ("recording r-0: 10 packets in the window of 20 held; 7 aged out (older than keep), "
         "3 aged out (over max_bytes), 30 captured",),
        ("recording r-1: 4 packets in the window of 4 held; 0 aged out (older than keep), "
         "0 aged out (over max_bytes), 4 captured; pcapd: lost at 12:00:00 UTC: connection "
         "reset; the capture is partial",),
        ("pcapd: not captured: not recorded",)]
    assert [RingNote.find(x.comments) for x in isbs[:2]] == rings  # type: ignore[union-attr]


def test_a_live_capture_and_an_agent_without_figures_end_as_before() -> None:
    book = ledger("a")
    (a,) = capturing(book)
    a.noted([encode_interface_statistics(interface_id=0, timestamp=5, pcapd_dropped=2)])
    a.ended(End(reason="limit"))
    a.over()
    assert a.ring is None and book.rings_summary() is None
    assert book.all_gone() == ("completed", "every source ended")
    (isb,) = [parse(RawBlock(ISB, x, 0, False)) for x in book.statistics_blocks(2, 1)]
    assert isb.comments == ()  # type: ignore[union-attr]


def test_placeholder_interfaces_look_like_the_captured_ones() -> None:
    book = ledger("my-app/0", "my-app/1")
    book.accounts[1].failure = ("START_CAPTURE_FAILED", "no such device")
    capturing(book, 0)
    model = encode_interface_description(link_type=113, snaplen=262144, name="x")
    (idb,) = book.placeholder_idbs(model, "eth0", 65535)
    assert parse(RawBlock(IDB, idb, 0, False)) == InterfaceDescription(
        link_type=113, snaplen=262144, name="my-app/1:eth0", tsresol=10**9,
        description="not captured: no such device")
    (fallback,) = book.placeholder_idbs(b"", "eth0", 1500)
    parsed = parse(RawBlock(IDB, fallback, 0, False))
    assert isinstance(parsed, InterfaceDescription)
    assert (parsed.link_type, parsed.snaplen) == (1, 1500)


def test_absent_sources_fit_the_protocols_list() -> None:
    book = ledger(*(f"s{i}" for i in range(3)),
                  unavailable=tuple((f"down/{i}", "DOWN") for i in range(MAX_LIST + 5)))
    capturing(book, 0)
    absent = book.absent()
    assert len(absent) == MAX_LIST
    assert [a.name for a in absent[:2]] == ["s1", "s2"] and all(a.partial for a in absent[:2])
    long = ledger("x" * 1000, unavailable=())
    long.accounts[0].why = "y" * 100_000
    (only,) = long.absent()
    End(absent=[only], reason="failed")  # within the protocol's limits
