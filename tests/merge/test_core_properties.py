"""Properties of the live k-way merge under random schedules, checked against a reference model.

A schedule is a random sequence of add / push / advance / remove / pop / clock steps (and "wake":
jump to the wakeup the last pop asked for), ended by a flush. Every packet is a unique ``bytes``,
so the output can be traced back to its source and timestamp.

How sources behave is the schedule's ``conduct``:

* ``kept``: every source keeps its promises: its timestamps never go below its last packet, its
  last watermark, or what was written before it joined.
* ``broken``: a source's timestamps never go below its own last packet, but may break its
  watermark and may start below what was written before it joined.
* ``backwards``: anything goes, even within a source.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from pcapd.merge import Merge
from tests.readers import inversions

NEVER = -(1 << 64)
TICKS = (0.0, 0.125, 0.25, 0.5, 1.0, 1.5)


@dataclass
class Src:
    sid: int
    stale_at: float
    joined_above: int  # the greatest timestamp written when it joined
    top: int = NEVER  # its greatest timestamp pushed
    last: int | None = None
    watermark: int = NEVER
    live: bool = True

    @property
    def frontier(self) -> int:
        return max(self.top, self.watermark)


@dataclass
class Run:
    """Drives one merge through a drawn schedule and keeps what the properties need."""

    conduct: str
    lateness: float
    max_buffered: int
    merge: Merge = field(init=False)
    now: float = 0.0
    sources: list[Src] = field(default_factory=list)
    origin: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # block -> (sid, ts)
    # block -> the greatest timestamp of its source up to it: the order a source's packets go
    # out in, since a packet never overtakes its predecessor in the same source
    key: dict[bytes, int] = field(default_factory=dict)
    pushed_by: dict[int, list[bytes]] = field(default_factory=dict)
    out: list[bytes] = field(default_factory=list)
    out_max: int = NEVER
    wakeup: float | None = None
    quiet_since_pop: bool = False  # nothing but clock steps since the last pop
    # Why the output may be unsorted; empty means it must be sorted.
    excuses: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.merge = Merge(lateness=self.lateness, max_buffered=self.max_buffered)

    def live(self) -> list[Src]:
        return [s for s in self.sources if s.live]

    def step(self, data: st.DataObject) -> None:
        kinds = ["add", "tick", "pop"]
        if self.live():
            kinds += ["push", "push", "push", "advance", "remove"]
        if self.wakeup is not None and self.quiet_since_pop:
            kinds.append("wake")
        kind = data.draw(st.sampled_from(kinds))
        if kind == "add":
            sid = self.merge.add_source(self.now)
            self.sources.append(Src(sid, self.now + self.lateness, self.out_max))
            self.pushed_by[sid] = []
        elif kind == "tick":
            self.now += data.draw(st.sampled_from(TICKS))
            return
        elif kind == "wake":
            assert self.wakeup is not None
            self.now = self.wakeup
            blocks = self.pop()
            assert blocks, "wakeup passed with nothing arriving, yet nothing was released"
            return
        elif kind == "pop":
            self.pop()
            return
        else:
            src = self.sources[data.draw(st.sampled_from([s.sid for s in self.live()]))]
            if kind == "push":
                self.push(src, data)
            elif kind == "advance":
                wm = data.draw(st.integers(max(src.frontier, 0) - 3, max(src.frontier, 0) + 12))
                self.merge.advance(src.sid, wm, self.now)
                src.watermark = max(src.watermark, wm)
                src.stale_at = self.now + self.lateness
            else:
                self.merge.remove_source(src.sid, self.now)
                src.live = False
        self.quiet_since_pop = False

    def push(self, src: Src, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, 6))
        if self.conduct == "backwards":
            stamps = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
        else:
            if self.conduct == "kept":
                floor = max(src.frontier, src.joined_above, 0)
            else:
                lowest = src.last if src.last is not None else 0
                floor = data.draw(st.integers(lowest, max(lowest, src.frontier, 0) + 5))
            steps = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
            stamps = []
            for inc in steps:
                floor += inc
                stamps.append(floor)
        blocks = []
        for ts in stamps:
            block = f"{len(self.origin)}:{src.sid}@{ts}".encode()
            self.origin[block] = (src.sid, ts)
            blocks.append(block)
            backwards = src.last is not None and ts < src.last
            if ts < src.watermark or ts < src.joined_above or backwards:
                self.excuses.add("a source broke a promise")
            src.last = ts
            src.top = max(src.top, ts)
            self.key[block] = src.top
        self.merge.push(src.sid, stamps, blocks, self.now)
        if self.merge.statistics().pending:
            # Over the cap, the push released packets itself (by the rule with the push's ``now``,
            # then by force): the checks at pop time do not see those decisions.
            self.excuses.add("the cap released packets at a push")
        self.pushed_by[src.sid] += blocks
        src.stale_at = self.now + self.lateness

    def pop(self) -> list[bytes]:
        before = self.merge.statistics()
        release = self.merge.pop(self.now)
        blocks = release.blocks
        # The reference rule: low over live, non-stale sources; bound = max(low, written).
        fresh = [s.frontier for s in self.live() if s.stale_at > self.now]
        bound = None if not fresh else max(min(fresh), self.out_max)
        assert release.wakeup is None or release.wakeup > self.now
        if before.pending == 0 and bound is not None:
            assert all(self.key[b] <= bound for b in blocks), "released beyond the bound"
        if blocks:
            promised = [s.frontier for s in self.live()]
            top = max(self.origin[b][1] for b in blocks)
            if promised and top > max(min(promised), self.out_max):
                self.excuses.add("a stale source was overtaken")
        self.record(blocks)
        if bound is not None:
            left = set(self.origin) - set(self.out)
            assert all(self.key[b] > bound for b in left), "held back below the bound"
        else:
            assert self.merge.statistics().buffered == 0
        self.check_accounts()
        self.wakeup = release.wakeup
        self.quiet_since_pop = True
        return blocks

    def record(self, blocks: list[bytes]) -> None:
        for block in blocks:
            self.out_max = max(self.out_max, self.origin[block][1])
        self.out += blocks

    def check_accounts(self) -> None:
        stats = self.merge.statistics()
        assert stats.buffered + stats.pending + stats.released == len(self.origin)
        assert stats.released == len(self.out)
        assert sum(stats.per_source_buffered.values()) == stats.buffered
        assert stats.sources == len(self.live())
        assert stats.reordered == inversions([self.origin[b][1] for b in self.out])

    def finish(self) -> None:
        self.record(self.merge.flush())
        self.check_accounts()
        assert self.merge.statistics().buffered == 0


def run_schedule(data: st.DataObject, conduct: str, lateness: float, max_buffered: int) -> Run:
    run = Run(conduct, lateness, max_buffered)
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        run.step(data)
    run.finish()
    return run


conducts = st.sampled_from(["kept", "broken", "backwards"])
latenesses = st.sampled_from([0.0, 0.5, 1.0, 2.0])
caps = st.one_of(st.integers(1, 12), st.just(10**9))


@settings(deadline=None, max_examples=400)
@given(st.data(), conducts, latenesses, caps)
def test_every_packet_comes_out_once_in_source_order(
    data: st.DataObject, conduct: str, lateness: float, max_buffered: int
) -> None:
    run = run_schedule(data, conduct, lateness, max_buffered)
    assert Counter(run.out) == Counter(list(run.origin))  # (1) the multiset out is the multiset in
    assert len(run.out) == len(run.origin)
    for sid, pushed in run.pushed_by.items():  # (2) each source's order is kept
        assert [b for b in run.out if run.origin[b][0] == sid] == pushed
    # (4) ``reordered`` counts the inversions against the running maximum: checked after every
    # pop and after the flush by Run.check_accounts, under every conduct.


@settings(deadline=None, max_examples=400)
@given(st.data(), st.sampled_from(["kept", "broken"]), latenesses, caps)
def test_output_is_sorted_unless_a_promise_staleness_or_the_cap_excuses_it(
    data: st.DataObject, conduct: str, lateness: float, max_buffered: int
) -> None:
    """(3) The output is in timestamp order unless one of these happened:

    * a source pushed below its own last watermark, or below the greatest timestamp written
      before it joined (it promised nothing then, but was not there to hold anything back);
    * a pop released a packet above ``max(min frontier of ALL live sources, greatest written)``,
      which only a stale source's silence allows;
    * a push went over the buffer cap, so it released packets itself (by the rule, then by
      force if that was not enough).

    Sources never go backwards here. Proof sketch: let y be the first packet written above some
    later-written x of source S. y's pop needed no staleness, so ts(y) <= frontier(S) if S was
    live then, and S pushing x < ts(y) breaks a watermark or goes backwards; if S joined later,
    x is below what was written when it joined.
    """
    run = run_schedule(data, conduct, lateness, max_buffered)
    stamps = [run.origin[b][1] for b in run.out]
    event(", ".join(sorted(run.excuses)) or "no excuse")
    if not run.excuses:
        assert stamps == sorted(stamps)
        assert run.merge.statistics().reordered == 0


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_sources_that_keep_their_promises_and_never_go_stale_give_sorted_output(
    data: st.DataObject,
) -> None:
    """(3), plainly: no staleness (infinite lateness), no cap, no broken promise: sorted."""
    run = run_schedule(data, "kept", math.inf, 10**9)
    assert not run.excuses
    stamps = [run.origin[b][1] for b in run.out]
    assert stamps == sorted(stamps)
    assert run.merge.statistics().reordered == 0
