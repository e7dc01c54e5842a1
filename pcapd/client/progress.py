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

from pcapd.proto import CaptureLimits, End, Notice, Source, SourceStatistics, Started, Statistics

_STYLE = {"capturing": "green", "starting": "yellow", "stopped": "dim", "unavailable": "red"}


def plural(n: int, word: str) -> str:
    """``1 packet``, ``2 packets``, ``0 sources``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def limits_line(limits: CaptureLimits, asked: CaptureLimits | None) -> str:
    """``limits: 1h (the api's maximum; you asked 2h), 1.1 GB``: what ends the capture."""
    parts = []
    for name, show in (("max_duration", _duration), ("max_packets",
                                                     lambda n: plural(int(n), "packet")),
                       ("max_bytes", lambda n: _size(int(n)))):
        value = getattr(limits, name)
        if value is None:
            continue
        wanted = getattr(asked, name) if asked is not None else None
        text = show(value)
        if wanted is None:
            text += " (the api's maximum)"
        elif wanted > value:
            text += f" (the api's maximum; you asked {show(wanted)})"
        parts.append(text)
    return "limits: " + (", ".join(parts) if parts else "none")


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
        self.asked: CaptureLimits | None = None
        """The limits the user asked for, to say when the api lowered them."""
        self.reader_closed = False

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
            self.console.print(f"capturing {plural(len(msg.sources), 'source')}: {names}",
                               highlight=False, markup=False, soft_wrap=True)
        if msg.limits is not None and not self.quiet:
            self.note(limits_line(msg.limits, self.asked))
        self._refresh()

    def note(self, text: str) -> None:
        """A plain line on stderr (not with -q): where pcapd connects, the limits in force."""
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def reader_gone(self) -> None:
        """The pipe's reader (``| head``, ``| tshark -c N``, a closed Wireshark) went away."""
        self.reader_closed = True
        self.error("the reader closed the pipe: stopping")

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
        text = "the reader closed the pipe" if self.reader_closed else msg.text
        line = (f"{plural(t.written, 'packet')} written to {where} from "
                f"{sources_text(msg, len(self.sources))} ({msg.reason}"
                f"{': ' + text if text else ''}); captured {t.packets}, dropped "
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
            f"stored capture {c.capture_id}: {plural(t.written, 'packet')}, {_size(c.size)} "
            f"from {sources_text(msg, len(self.sources))} "
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


def is_partial(msg: End) -> bool:
    """Whether a source pcapd should have captured is missing (not: one the platform reports
    as not running)."""
    return any(a.partial for a in msg.absent)


def sources_text(msg: End, captured: int) -> str:
    """``3 sources``; ``2 of 3 sources; my-app/1 unavailable (cannot connect to its agent: …)``;
    an instance the platform reports not running is named, but the count stays whole."""
    lost = [a for a in msg.absent if a.partial]
    if lost:
        expected = msg.expected or captured + len(lost)
        text = f"{expected - len(lost)} of {plural(expected, 'source')}"
    else:
        text = plural(captured, "source")
    for a in msg.absent:
        what = "unavailable" if a.partial else "not captured"
        text += (f"; {a.reason}" if a.reason.startswith(a.name)
                 else f"; {a.name} {what} ({a.reason})")
    return text
