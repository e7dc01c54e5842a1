"""The books of one capture on the api: limits, per-source counts, the cut, the verdict. Sans-I/O.

Theory of operation
-------------------
:class:`~pcapd.api.capture.ApiCapture` moves bytes between agents, the merge and the user; this
module decides and counts, so that every limit and every counter can be tested without a
network, an agent or root. It takes events in (a source started, reported, was lost, resumed,
ended; blocks were offered to the output and this many kept) and answers with decisions (these
blocks may be written, the capture stops for this reason) and with what the user is told at the
end: the ``statistics`` messages, one Interface Statistics Block per source, the section
header's note of what is missing, and ``end`` with its totals and absent sources. No clock:
the caller passes times.

Limits. A request may ask for a lower duration, packet or byte limit than the api's
(``limits.*``), never a higher one; each limit in force remembers whose it is, because reaching
the user's own ends the capture ``completed`` and reaching the api's ends it ``limit``.

The cut. Packet and byte limits count what reaches the output (written), not what was captured.
A batch that a limit falls inside is cut there and the capture stops; everything that arrives
after (agents take a moment to stop) is *discarded* and counted, so that at the end
``packets == written + agent_dropped + api_dropped + discarded`` holds for every source.

Sources. Each resolved source has an :class:`Account`: its state (``starting`` → ``capturing``
→ ``stopped``, or ``unavailable`` when it never started or was lost), its interface id in the
output once the headers are written, and its counts. A lost source that is resumed starts a new
agent capture whose counts start at zero; what the earlier ones counted is kept in ``previous``.

Partial. A source that should have been captured and was not (never started, or lost and not
back) makes the capture *partial*: it is listed in ``end.absent`` with ``partial`` set, and the
file says so. An instance the platform itself reports not running (CF ``DOWN``/``CRASHED``, a
BOSH instance without a VM) is named too, but does not make the capture partial.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from pcapd.config.model import ApiLimitsConfig
from pcapd.pcapng import (
    ISB,
    RawBlock,
    encode_interface_description,
    encode_interface_statistics,
)
from pcapd.pcapng.parse import parse_interface_statistics
from pcapd.proto import (
    Absent,
    CaptureLimits,
    Code,
    Counters,
    End,
    SourceStatistics,
    Statistics,
)
from pcapd.proto.messages import MAX_LIST, EndReason, SourceState, StopReason, fit_text
from pcapd.proto.messages import absent as fitted_absent
from pcapd.proto.ring_note import RingNote, summary

__all__ = ["Account", "Ledger", "Limit", "LimitName", "Verdict", "effective_limits"]

LimitName = Literal["max_duration", "max_packets", "max_bytes"]
_CUT_BY: tuple[LimitName, ...] = ("max_packets", "max_bytes")
_IFACE = struct.Struct("<I")
"""An EPB's interface id, after its type and length (pcapd writes little-endian)."""
_IDB_LINK = struct.Struct("<HxxI")
"""An IDB's link type and snaplen, after its type and length."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit in force: its value, and whether it is the api's (``limits.<name>``) rather
    than the user's own request (which decides how reaching it ends the capture)."""

    value: float
    policy: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a capture ends, as ``end`` says it; ``notice``: the ``LIMIT_REACHED`` words to tell
    the user first, when it is one of the api's limits."""

    reason: EndReason
    text: str = ""
    limit: LimitName | None = None
    notice: str | None = None


def effective_limits(asked: CaptureLimits, policy: ApiLimitsConfig) -> dict[LimitName, Limit]:
    """Each limit in force: the request may ask for less than the api's, never more."""
    limits: dict[LimitName, Limit] = {}
    pairs: tuple[tuple[LimitName, float | None, float | None], ...] = (
        ("max_duration", asked.max_duration, policy.max_duration),
        ("max_packets", asked.max_packets, policy.max_packets),
        ("max_bytes", asked.max_bytes, policy.max_bytes))
    for name, mine, cap in pairs:
        if cap is not None and (mine is None or mine > cap):
            limits[name] = Limit(cap, True)
        elif mine is not None:
            limits[name] = Limit(mine, False)
    return limits


def added(a: Counters, b: Counters) -> Counters:
    """The field-wise sum of two sets of counts."""
    return Counters(**{f: getattr(a, f) + getattr(b, f) for f in Counters.__struct_fields__})


@dataclass(eq=False)
class Account:
    """One source of the capture, as the api counts it."""

    index: int
    """Its place in the request (the order of the resolved jobs)."""
    origin: str
    """How the user knows it before its agent names it (``my-app/2``)."""
    id: int = -1
    """Output interface id, fixed when the headers are written; -1 before (and for a source
    that never started)."""
    name: str = ""
    description: str = ""
    state: SourceState = "starting"
    idb: bytes | None = None
    failure: tuple[Code, str] | None = None
    why: str = ""
    """Why it is not (or no longer) captured, as the summary and the pcapng say it."""
    end: End | None = None
    """Its agent's ``end``: the agent stopped the capture itself (a limit, a drain)."""
    done: bool = False
    """Its task is over (ended, failed or cancelled): nothing more will arrive from it."""
    counters: Counters = field(default_factory=Counters)
    """What the current agent capture reported last (its final ``end`` totals once ended)."""
    previous: Counters = field(default_factory=Counters)
    """What earlier agent captures of this source counted (before a gap)."""
    api_dropped: int = 0
    written: int = 0
    discarded: int = 0
    ring: RingNote | None = None
    """A saved recording's source: what its ring held and let go (its agent's statistics
    block says it), for this interface's statistics block and the save's summary."""

    def started(self, idb: bytes) -> bool:
        """Its agent sent its Interface Description Block; False if it had (a resumed agent's
        is the same, so the first one stays)."""
        if self.idb is not None:
            return False
        self.idb = idb
        self.state = "capturing"
        return True

    def reported(self, counts: Counters) -> None:
        """The agent's latest statistics (or final totals) for its current capture."""
        fields = msgspec.structs.asdict(counts)
        fields.pop("source", None)
        fields.pop("state", None)
        self.counters = Counters(**fields)

    def noted(self, statistics: Sequence[bytes]) -> None:
        """Its agent's Interface Statistics Blocks (the end of its stream): a ring's figures
        are kept (:class:`~pcapd.proto.ring_note.RingNote`); the counters come in ``end``."""
        for block in statistics:
            found = RingNote.find(parse_interface_statistics(RawBlock(ISB, block, 0,
                                                                      False)).comments)
            self.ring = found or self.ring

    def ended(self, end: End) -> None:
        """The agent ended its capture: its totals are final."""
        self.end = end
        self.reported(end.totals)

    def lost(self) -> None:
        """Its agent went away mid-capture: keep what it counted, count afresh after a gap."""
        self.previous = added(self.previous, self.counters)
        self.counters = Counters()
        self.state = "unavailable"

    def resumed(self) -> None:
        """A new agent capture after a gap."""
        self.state = "capturing"

    def gone(self) -> None:
        """Its task ends: stopped if its agent ended it, otherwise (once it had an id) lost."""
        if self.end is not None:
            self.state = "stopped"
        elif self.id >= 0 and (self.failure is not None or self.state != "stopped"):
            self.state = "unavailable"

    def over(self) -> None:
        """Its task ended (after telling the user why): nothing more comes from it."""
        self.done = True

    @property
    def captured(self) -> bool:
        """Ready to be captured: it started and did not fail before the headers."""
        return self.idb is not None and self.failure is None

    @property
    def reason(self) -> str:
        """Why it is not captured, for the file and the summary."""
        return self.why or (self.failure[1] if self.failure else "unavailable")

    def statistics(self) -> SourceStatistics:
        c = msgspec.structs.replace(added(self.previous, self.counters),
                                    api_dropped=self.api_dropped, written=self.written,
                                    discarded=self.discarded)
        # an agent lost mid-capture never sends its final count, and its last statistics lag
        # what it sent: it captured at least every packet that reached us (and it dropped)
        reached = c.written + c.api_dropped + c.discarded + c.agent_dropped
        if c.packets < reached:
            c = msgspec.structs.replace(c, packets=reached)
        return SourceStatistics(source=max(self.id, 0), state=self.state,
                                **msgspec.structs.asdict(c))


class Ledger:
    """The books of one capture: limits, per-source accounts, the cut and the verdict.

    ``origins`` are the resolved sources in request order; ``unavailable`` the instances the
    platform reports not running, as (origin, the platform's words) — named, never partial.
    """

    def __init__(self, limits: dict[LimitName, Limit], origins: Sequence[str],
                 unavailable: Sequence[tuple[str, str]] = ()) -> None:
        self.limits = limits
        self.accounts = [Account(i, origin) for i, origin in enumerate(origins)]
        self.unavailable = list(unavailable)
        self.placeholders: list[Account] = []
        """Sources that never started: an IDB each after the captured ones (see number)."""
        self.full = False
        """A packet or byte limit was reached: what still arrives is discarded (counted)."""
        self.written_packets = 0
        self.written_bytes = 0
        self.end_reason: EndReason = "stopped"
        self.end_text = ""
        self.end_limit: str | None = None
        self.stopping = False
        """A reason to stop was given (the first one is the one the user sees)."""

    # --- limits and the verdict ---------------------------------------------------------------

    def stop(self, reason: EndReason, text: str = "", limit: str | None = None) -> bool:
        """Record why the capture ends; only the first reason counts. True if it was the
        first."""
        if self.stopping:
            return False
        self.end_reason, self.end_text, self.end_limit = reason, text, limit
        self.stopping = True
        return True

    def in_force(self) -> CaptureLimits:
        """The limits as the ``started`` message tells the user."""
        def get(name: LimitName) -> float | None:
            return self.limits[name].value if name in self.limits else None

        packets, size = get("max_packets"), get("max_bytes")
        return CaptureLimits(max_duration=get("max_duration"),
                             max_packets=None if packets is None else int(packets),
                             max_bytes=None if size is None else int(size))

    def for_agents(self, margin: float) -> CaptureLimits:
        """What each agent is asked: to stop by itself ``margin`` seconds after the api would
        (a safety net if the api vanishes, never the rule); counts and sizes are the api's."""
        duration = self.limits.get("max_duration")
        return CaptureLimits(max_duration=None if duration is None else duration.value + margin)

    def duration_reached(self) -> Verdict:
        """How the capture ends when its duration limit runs out (the caller tells the user
        the notice, if any, then stops)."""
        seconds = self.limits["max_duration"].value
        if self.limits["max_duration"].policy:
            return Verdict("limit", f"max_duration {seconds:g}s reached", "max_duration",
                           notice=f"the api's limit of {seconds:g}s per capture was reached "
                                  "(limits.max_duration)")
        return Verdict("completed", f"{seconds:g}s captured")

    def agent_stop_reason(self) -> StopReason:
        """What ``stop`` tells the agents, from why the capture ends."""
        return ("drained" if self.end_reason == "drained"
                else "limit" if self.end_reason in ("limit", "completed") else "requested")

    # --- the cut ------------------------------------------------------------------------------

    def admit(self, blocks: list[bytes]) -> list[bytes]:
        """The first of ``blocks`` (EPBs, in output order) that may be written: all of them, or
        those before a packet or byte limit (which stops the capture). The rest are counted as
        discarded against their sources."""
        if not blocks:
            return blocks
        if self.full:  # past a count or size limit: the file holds what was asked
            allowed: list[bytes] = []
        else:
            allowed = self._within_limits(blocks)
        if len(allowed) < len(blocks):
            for account, n in self._by_source(blocks[len(allowed):]):
                account.discarded += n
        return allowed

    def offered(self, blocks: list[bytes], kept: int) -> None:
        """``blocks`` (admitted) were offered to the output, which kept the first ``kept``
        (the rest its gate dropped: the user reads too slowly)."""
        if kept:
            for account, n in self._by_source(blocks[:kept]):
                account.written += n
            self.written_packets += kept
            self.written_bytes += sum(len(b) for b in blocks[:kept])
        if kept < len(blocks):
            for account, n in self._by_source(blocks[kept:]):
                account.api_dropped += n

    def whole(self, account: Account, packets: int, size: int) -> bool | None:
        """May one source's batch (``packets`` EPBs, ``size`` bytes) go out whole? True: yes
        (then :meth:`offered_whole`). False: a count or size limit falls inside it: cut it
        into blocks for :meth:`admit`. None: the capture is past a limit, and the batch was
        counted as discarded here."""
        if self.full:
            account.discarded += packets
            return None
        count, limit = self.limits.get("max_packets"), self.limits.get("max_bytes")
        return not ((count is not None and self.written_packets + packets >= count.value) or
                    (limit is not None and self.written_bytes + size >= limit.value))

    def offered_whole(self, account: Account, packets: int, kept: int, kept_bytes: int) -> None:
        """A whole batch of ``packets`` went to the output, which kept ``kept`` of them."""
        account.written += kept
        account.api_dropped += packets - kept
        self.written_packets += kept
        self.written_bytes += kept_bytes

    def _within_limits(self, blocks: list[bytes]) -> list[bytes]:
        """Cut ``blocks`` at the packet or byte limit, and stop the capture there."""
        for name in _CUT_BY:
            limit = self.limits.get(name)
            if limit is None:
                continue
            value = limit.value
            if name == "max_packets":
                room = int(value) - self.written_packets
                reached = room <= len(blocks)
            else:
                room, size = 0, self.written_bytes
                for block in blocks:
                    if size + len(block) > value:
                        break
                    size += len(block)
                    room += 1
                reached = room < len(blocks) or size == value
            if reached:
                self.full = True
                blocks = blocks[:max(room, 0)]
                what = f"{int(value)} packets" if name == "max_packets" else f"{int(value)} bytes"
                if limit.policy:
                    self.stop("limit", f"the api's limit of {what} reached (limits.{name})",
                              name)
                else:
                    self.stop("completed", f"{what} captured")
        return blocks

    def _by_source(self, blocks: Iterable[bytes]) -> list[tuple[Account, int]]:
        unpack = _IFACE.unpack_from
        by_id = {a.id: a for a in self.accounts if a.id >= 0}
        return [(by_id[iface], n) for iface, n in Counter(unpack(b, 8)[0] for b in blocks).items()]

    # --- sources ------------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Every source started or is over: the headers can be written."""
        return all(a.idb is not None or a.done for a in self.accounts)

    def number(self, ready: Sequence[Account]) -> None:
        """Give the ``ready`` sources their output interface ids, in request order; the
        others become placeholders (an interface each, after the captured ones)."""
        for new_id, account in enumerate(ready):
            account.id = new_id
        self.placeholders = [a for a in self.accounts if a.idb is None or a.failure is not None]

    def failed_start(self) -> tuple[Code, str]:
        """No source could be captured: the code and text of the error the user gets."""
        reasons = "; ".join([*(text for _, text in self.unavailable),
                             *(a.failure[1] for a in self.accounts if a.failure)])
        codes = {a.failure[0] for a in self.accounts if a.failure}
        code: Code = codes.pop() if len(codes) == 1 else "START_CAPTURE_FAILED"
        if code in ("INSTANCE_UNAVAILABLE", "CONNECTION_ERROR"):
            code = "START_CAPTURE_FAILED"
        return code, f"no source could be captured: {reasons}"

    def all_gone(self) -> tuple[EndReason, str] | None:
        """Once every started source is over, why the capture ends by itself (else None)."""
        started = [a for a in self.accounts if a.id >= 0]
        if self.settled and started and all(a.done for a in started):
            if any(a.end is not None for a in started):
                return "completed", self.rings_summary() or "every source ended"
            return "failed", "every source was lost"
        return None

    # --- what the user is told ----------------------------------------------------------------

    def rings_summary(self) -> str | None:
        """A saved recording's packets saved, held and aged out over its rings (None: not a
        save, or its agents did not say)."""
        notes = [a.ring for a in self.accounts if a.ring is not None]
        return fit_text(summary(notes)) if notes else None

    def header_comment(self) -> str | None:
        """The section header's comment: what the file lacks from the start (pcapng has no
        later place for it — a source lost mid-capture says so in its statistics block)."""
        missing = self.placeholders
        captured = sum(a.id >= 0 for a in self.accounts)
        parts = []
        if missing:
            parts.append(f"pcapd: partial capture: {captured} of {captured + len(missing)} "
                         "sources")
            parts += [f"{a.origin} unavailable ({a.why or a.failure[1]})"  # type: ignore[index]
                      for a in missing]
        parts += [text if text.startswith(origin) else f"{origin} not captured ({text})"
                  for origin, text in self.unavailable]
        return "; ".join(parts)[:4000] or None

    def placeholder_idbs(self, model: bytes, device: str, snaplen: int) -> list[bytes]:
        """An interface for each source that could not be captured, named as it would have
        been, its reason in ``if_description``; its statistics block (with no packets) ends
        the file with the others. Ids follow the captured sources'. Link type and snaplen
        are those of ``model`` (a captured source's IDB), else Ethernet and ``snaplen``."""
        try:
            link_type, snaplen = _IDB_LINK.unpack_from(model, 8)
        except struct.error:  # (an agent's IDB is checked before it gets here; still)
            link_type = 1
        return [encode_interface_description(
                    link_type=link_type, snaplen=snaplen, name=f"{a.origin}:{device}",
                    description=f"not captured: {a.why or a.failure[1]}"[:4000])  # type: ignore[index]
                for a in self.placeholders]

    def statistics(self, final: bool = False) -> Statistics:
        """The ``statistics`` message: every source that has an interface in the output."""
        return Statistics(sources=[a.statistics() for a in self.accounts if a.id >= 0],
                          final=final)

    def statistics_blocks(self, now: int, started: int) -> list[bytes]:
        """One Interface Statistics Block per interface of the output, at the end of the file
        (times in ns since the epoch): a lost source's says the capture is partial, a
        placeholder's why it was not captured."""
        blocks = []
        for a in self.accounts:
            if a.id < 0:
                continue
            c = a.counters
            lost = (f"pcapd: {a.why or 'lost'}; the capture is partial"
                    if a.state == "unavailable" else None)
            notes = [a.ring.text() if a.ring is not None else None, lost]
            blocks.append(encode_interface_statistics(
                interface_id=a.id, timestamp=now, start_time=started, end_time=now,
                received=c.kernel_received, kernel_dropped=c.kernel_dropped,
                interface_dropped=c.interface_dropped, delivered=a.written,
                pcapd_dropped=c.agent_dropped + a.api_dropped,
                comment="; ".join(n for n in notes if n)[:4000] or None))
        captured = len(blocks)
        for offset, a in enumerate(self.placeholders):
            blocks.append(encode_interface_statistics(
                interface_id=captured + offset, timestamp=now, delivered=0,
                comment=f"pcapd: not captured: {a.why or 'unavailable'}"[:4000]))
        return blocks

    def absent(self) -> list[Absent]:
        """Every source or instance the capture does not hold (or lost), and why."""
        absent = [fitted_absent(a.origin, a.reason, partial=True)
                  for a in self.accounts if a.id < 0 or a.state == "unavailable"]
        return absent + [fitted_absent(origin, text)
                         for origin, text in self.unavailable][:MAX_LIST - len(absent)]

    def totals(self, late: int = 0) -> Counters:
        """Every party's counts over all sources (``late``: what the merge wrote out of
        order): final once the capture ended, the counts known so far when it ends by error or
        cancellation (for the audit line and metrics)."""
        totals = Counters()
        for account in self.accounts:
            totals = added(totals, account.statistics())
        return msgspec.structs.replace(totals, late=late)

    def end(self, late: int = 0) -> End:
        """The ``end`` message: why, the totals, and what the capture does not hold."""
        return End(reason=self.end_reason, text=self.end_text, limit=self.end_limit,
                   totals=self.totals(late), expected=len(self.accounts), absent=self.absent())
