"""Live progress on stderr: one row per source, messages as they come, a summary at the end.

On a terminal the table refreshes in place (rich's Live); otherwise — a pipe, CI, ``-q`` — only
the messages and one final summary line are printed, so logs stay readable. Nothing here ever
writes to stdout: stdout may be the pcapng itself.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from pcapd.proto import End, Notice, Source, SourceStatistics, Started, Statistics

_STYLE = {"capturing": "green", "starting": "yellow", "stopped": "dim", "unavailable": "red"}


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


class Progress:
    """What the user sees while a capture runs."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.sources: dict[int, Source] = {}
        self.stats: dict[int, SourceStatistics] = {}
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal and not self.quiet:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def started(self, msg: Started) -> None:
        self.sources = {s.id: s for s in msg.sources}
        if self._live is None and not self.quiet:  # no live table: one line that it runs
            names = ", ".join(s.name for s in msg.sources)
            self.console.print(f"capturing {len(msg.sources)} source"
                               f"{'s' if len(msg.sources) != 1 else ''}: {names}",
                               highlight=False, markup=False, soft_wrap=True)
        self._refresh()

    def statistics(self, msg: Statistics) -> None:
        for s in msg.sources:
            self.stats[s.source] = s
        self._refresh()

    def notice(self, msg: Notice) -> None:
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
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("source", "state", "packets", "bytes", "written", "dropped"):
            table.add_column(column, justify="left" if column in ("source", "state") else "right")
        for sid, source in sorted(self.sources.items()):
            s = self.stats.get(sid)
            if s is None:
                table.add_row(source.name, "[yellow]starting[/yellow]", "", "", "", "")
                continue
            dropped = s.kernel_dropped + s.agent_dropped + s.api_dropped
            style = _STYLE.get(s.state, "")
            table.add_row(source.name, f"[{style}]{s.state}[/{style}]", f"{s.packets:,}",
                          _size(s.bytes), f"{s.written:,}",
                          f"[red]{dropped:,}[/red]" if dropped else "0")
        return table
