"""Live progress on stderr: one row per source, messages as they come, a summary at the end.

On a terminal the table refreshes in place (rich's Live); otherwise — a pipe, CI, ``-q`` — only
the messages and one final summary line are printed, so logs stay readable. Nothing here ever
writes to stdout: stdout may be the pcapng itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pcapd.client.notes import Notes
from pcapd.proto import (
    BoshTarget,
    CaptureLimits,
    CfTarget,
    Counters,
    End,
    Notice,
    Source,
    SourceStatistics,
    Start,
    Started,
    Statistics,
)

_STYLE = {"capturing": "green", "starting": "yellow", "stopped": "dim", "unavailable": "red",
          "congested": "bold yellow"}


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass(frozen=True)
class Header:
    """What the header line of the live view says about the capture as a whole."""

    target: str
    api: str
    filter: str = ""
    output: str = ""
    limits: CaptureLimits = field(default_factory=CaptureLimits)
    kind: str = ""
    """``cf``, ``bosh`` or ``local``."""
    device: str = ""

    @classmethod
    def of(cls, start: Start, api: str, output: str) -> Header:
        """The header of ``start``: ``cf my-app/0,2``, ``bosh cf/router``, ``local lo``."""
        t = start.target
        if isinstance(t, CfTarget):
            where = f"cf {t.app}" + (f"/{','.join(map(str, t.instances))}" if t.instances
                                     else "")
        elif isinstance(t, BoshTarget):
            where = f"bosh {t.deployment}/{','.join(t.groups)}"
        else:
            where = "local " + (",".join(getattr(t, "netns", [])) or "host")
        return cls(f"{where}:{start.options.device}", api, start.options.filter,
                   "upload" if start.upload else ("stdout" if output == "-" else output),
                   start.limits, where.split(" ", 1)[0], start.options.device)

    def line(self, elapsed: float | None, limits: CaptureLimits | None = None) -> Text:
        lim = limits or self.limits
        parts = [self.target, f"via {self.api}", f"filter {self.filter!r}" if self.filter
                 else "no filter", f"→ {self.output}"]
        if elapsed is not None:
            time_text = f"{_duration(elapsed)} elapsed"
            if lim.max_duration is not None:
                time_text += f", {_duration(lim.max_duration - elapsed)} left"
            parts.append(time_text)
        limit_text = [f"{lim.max_packets:,} packets" if lim.max_packets is not None else "",
                      f"{_size(lim.max_bytes)}" if lim.max_bytes is not None else "",
                      f"duration {_duration(lim.max_duration)}"
                      if lim.max_duration is not None else ""]
        if any(limit_text):
            parts.append("limits " + ", ".join(x for x in limit_text if x))
        return Text(" · ".join(parts), style="bold")


ROUTE_HINT_AFTER = 10.0
"""Seconds of nothing on a cf ``eth0`` with a port filter before pcapd suggests ``-i lo``."""
ENVOY_PORT = 61001
"""Where gorouter's TLS reaches an app container (Diego's envoy)."""
_PORTS = re.compile(r"\bport\s+(\d+)")


def route_hint(header: Header, elapsed: float, packets: int) -> str | None:
    """The hint for a cf capture on ``eth0`` whose port filter has matched nothing for
    :data:`ROUTE_HINT_AFTER` seconds: the app's port is on ``lo`` (pure; None: no hint)."""
    ports = {int(p) for p in _PORTS.findall(header.filter)}
    if header.kind != "cf" or header.device != "eth0" or packets or elapsed < ROUTE_HINT_AFTER \
            or not ports or ENVOY_PORT in ports:
        return None
    return (f"nothing captured on eth0 in {elapsed:.0f}s with filter {header.filter!r}: "
            f"gorouter reaches the container's eth0 as TLS to envoy (port {ENVOY_PORT}); the "
            f"plain hop to the app's port is on lo: try -i lo")


_TROUBLE = ("unavailable", "congested")
"""Row states that are never folded away, however many sources there are."""


@dataclass(frozen=True)
class _Row:
    name: str
    state: str
    stats: Counters | None

    @property
    def dropped(self) -> int:
        s = self.stats
        return 0 if s is None else s.kernel_dropped + s.agent_dropped + s.api_dropped


class Progress:
    """What the user sees while a capture runs."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None,
                 header: Header | None = None, notes: Notes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.header = header
        self.notes = notes
        """Where notices go to become packet comments in the file (None: nowhere)."""
        self.sources: dict[int, Source] = {}
        self.stats: dict[int, SourceStatistics] = {}
        self.unavailable: dict[str, str] = {}
        """Instances that never became a source (origin → why), from the api's notices."""
        self.congested: set[int] = set()
        self.limits: CaptureLimits | None = None
        self._clock = clock
        self._started_at: float | None = None
        self._hinted = False
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal and not self.quiet:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                              transient=False, get_renderable=self.render)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def started(self, msg: Started) -> None:
        self.sources = {s.id: s for s in msg.sources}
        self._started_at = self._clock()
        limits = getattr(msg, "limits", None)  # the api's effective limits, when it says them
        if isinstance(limits, CaptureLimits):
            self.limits = limits
        if self._live is None and not self.quiet:  # no live table: one line that it runs
            names = ", ".join(s.name for s in msg.sources)
            self.console.print(f"capturing {len(msg.sources)} source"
                               f"{'s' if len(msg.sources) != 1 else ''}: {names}",
                               highlight=False, markup=False, soft_wrap=True)
        self._refresh()

    def statistics(self, msg: Statistics) -> None:
        for s in msg.sources:
            self.stats[s.source] = s
        if not self._hinted and self.header is not None and self._started_at is not None:
            hint = route_hint(self.header, self._clock() - self._started_at,
                              self.totals().packets)
            if hint is not None:
                self._hinted = True
                self.console.print(f"[bold]hint:[/bold] {hint}", highlight=False,
                                   markup=True, soft_wrap=True)
        self._refresh()

    def notice(self, msg: Notice) -> None:
        if self.notes is not None:
            self.notes.add(msg)
        if msg.code == "INSTANCE_UNAVAILABLE" and msg.origin and msg.source is None:
            self.unavailable[msg.origin] = msg.text
        elif msg.code == "CONGESTED" and msg.source is not None:
            self.congested.add(msg.source)
        self._refresh()
        where = f" {msg.origin}:" if msg.origin and msg.origin not in msg.text else ""
        self.console.print(f"[bold]{msg.code}[/bold]{where} {msg.text}", highlight=False,
                           markup=True, soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]pcapd:[/bold red] {text}", highlight=False,
                           soft_wrap=True)

    def end(self, msg: End, output: str) -> None:
        if msg.stored is not None:
            self.stored(msg)
            return
        t = msg.totals
        dropped = t.kernel_dropped + t.agent_dropped + t.api_dropped
        where = "stdout" if output == "-" else output
        line = (f"{t.written} packets written to {where} from {len(self.sources)} "
                f"source{'s' if len(self.sources) != 1 else ''} ({msg.reason}"
                f"{': ' + msg.text if msg.text else ''}); captured {t.packets}, dropped "
                f"{dropped} (kernel {t.kernel_dropped}, agent {t.agent_dropped}, "
                f"api {t.api_dropped})")
        if t.late:
            line += f", {t.late} written out of order"
        if t.discarded:
            line += f", {t.discarded} captured after the limit and not written"
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def stored(self, msg: End) -> None:
        """An uploaded capture: its id and where to download it (always shown, even -q)."""
        assert msg.stored is not None
        c, t = msg.stored.capture, msg.totals
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(msg.stored.url_expires_at))
        self.console.print(
            f"stored capture {c.capture_id}: {t.written} packets, {_size(c.size)} "
            f"({msg.reason}{': ' + msg.text if msg.text else ''}); kept until "
            f"{time.strftime('%Y-%m-%d', time.gmtime(c.expires_at))}", highlight=False,
            markup=False, soft_wrap=True)
        self.console.print(f"download (until {until}): {msg.stored.url}", highlight=False,
                           markup=False, soft_wrap=True)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def rows(self) -> list[_Row]:
        """One row per source and per instance that never became one, in source order."""
        rows = []
        for sid, source in sorted(self.sources.items()):
            s = self.stats.get(sid)
            state: str = "starting" if s is None else s.state
            if s is not None and state == "capturing" and (
                    sid in self.congested or s.agent_dropped or s.api_dropped):
                state = "congested"
            rows.append(_Row(source.name, state, s))
        rows.extend(_Row(origin, "unavailable", None) for origin in self.unavailable)
        return rows

    def totals(self) -> Counters:
        """The sum of the sources' counters, from the same snapshot the rows show."""
        return _sum(list(self.stats.values()))

    def render(self) -> RenderableType:
        """The live view, fitted to the terminal's height: trouble (unavailable, congested)
        always shows, healthy sources fold into one row per state when they do not fit."""
        rows = self.rows()
        top = None
        if self.header is not None:
            elapsed = None if self._started_at is None else self._clock() - self._started_at
            top = self.header.line(elapsed, self.limits)
        top_lines = 0 if top is None else len(self.console.render_lines(top, pad=False))
        # column titles, totals, the cursor's line
        budget = max(3, self.console.size.height - top_lines - 3)
        if len(rows) > budget:
            rows = self._fold(rows, budget)
        table = Table(box=None, pad_edge=False, header_style="bold", show_footer=True)
        for column in ("source", "state", "packets", "bytes", "written", "dropped"):
            table.add_column(column, justify="left" if column in ("source", "state") else "right")
        for row in rows:
            table.add_row(*self._cells(row))
        t = self.totals()
        n = len(self.sources) + len(self.unavailable)
        dropped = t.kernel_dropped + t.agent_dropped + t.api_dropped
        for col, text in zip(table.columns, (
                f"total ({n} source{'s' if n != 1 else ''})", "", f"{t.packets:,}",
                _size(t.bytes), f"{t.written:,}", f"{dropped:,}"), strict=True):
            col.footer = text
        return table if top is None else Group(top, table)

    @staticmethod
    def _fold(rows: list[_Row], budget: int) -> list[_Row]:
        trouble = [r for r in rows if r.state in _TROUBLE]
        rest = [r for r in rows if r.state not in _TROUBLE]
        if len(trouble) >= budget:  # even the trouble does not fit: say how much more
            more = len(trouble) - (budget - 1) + len(rest)
            return [*trouble[:budget - 1], _Row(f"… {more} more", "unavailable", None)]
        groups: dict[str, list[_Row]] = {}
        for row in rest:
            groups.setdefault(row.state, []).append(row)
        room = budget - len(trouble) - len(groups)
        shown = rest if room >= len(rest) else []
        folded = [] if shown else [
            _Row(f"{len(g)} sources", state, _sum([r.stats for r in g if r.stats is not None]))
            for state, g in groups.items()]
        return trouble + shown + folded

    @staticmethod
    def _cells(row: _Row) -> tuple[str, ...]:
        style = _STYLE.get(row.state, "")
        state = f"[{style}]{row.state}[/{style}]" if style else row.state
        s = row.stats
        if s is None:
            return (row.name, state, "", "", "", "")
        return (row.name, state, f"{s.packets:,}", _size(s.bytes), f"{s.written:,}",
                f"[red]{row.dropped:,}[/red]" if row.dropped else "0")


def _sum(stats: list[Counters]) -> Counters:
    fields = ("packets", "bytes", "written", "kernel_dropped", "agent_dropped", "api_dropped")
    return Counters(**{f: sum(getattr(s, f) for s in stats) for f in fields})
