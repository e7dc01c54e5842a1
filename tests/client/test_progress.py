"""The live view as pure code: rendered on a rich Console of a fixed size, asserted on what a
person would see there."""

from __future__ import annotations

import io

from rich.console import Console

from pcapd.client.progress import ROUTE_HINT_AFTER, Header, Progress, route_hint
from pcapd.proto import (
    CaptureLimits,
    CaptureOptions,
    CfTarget,
    LocalTarget,
    Notice,
    Source,
    SourceStatistics,
    Start,
    Started,
    Statistics,
)

START = Start(target=CfTarget(app="my-app", instances=[]),
              options=CaptureOptions(device="eth0", filter="tcp port 8080"),
              limits=CaptureLimits(max_duration=300.0, max_bytes=500_000_000))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def screen(progress: Progress) -> str:
    """What the terminal shows: the view printed on its own console, as text."""
    progress.console.print(progress.render())
    return progress.console.export_text()


def view(sources: int, height: int = 20, width: int = 120) -> tuple[Progress, Clock]:
    clock = Clock()
    console = Console(file=io.StringIO(), width=width, height=height, record=True,
                      force_terminal=False)
    progress = Progress(console=console, quiet=True, clock=clock,
                        header=Header.of(START, "pcap.sys.example.com:443", "out.pcapng"))
    progress.started(Started(capture_id="c1", sources=[
        Source(id=n, name=f"my-app/{n}:eth0") for n in range(sources)]))
    return progress, clock


def stats(n: int, state: str = "capturing", **counters: int) -> SourceStatistics:
    base = {"packets": 10, "bytes": 1000, "written": 10}
    return SourceStatistics(source=n, state=state, **{**base, **counters})  # type: ignore[arg-type]


def test_header_says_target_api_filter_output_time_and_limits() -> None:
    progress, clock = view(2)
    clock.now += 65
    top = " ".join(screen(progress).split("\n")[:2])  # 120 columns: the header wraps
    for part in ("cf my-app:eth0", "via pcap.sys.example.com:443", "filter 'tcp port 8080'",
                 "→ out.pcapng", "1:05 elapsed, 3:55 left", "limits 500.0 MB, duration 5:00"):
        assert part in top, top


def test_totals_agree_with_the_rows_on_the_first_refresh() -> None:
    progress, _ = view(3)
    progress.statistics(Statistics(sources=[stats(n, packets=n + 1, bytes=100 * (n + 1),
                                                  written=n + 1) for n in range(3)]))
    [total] = [line for line in screen(progress).splitlines() if line.startswith("total")]
    assert total.split() == ["total", "(3", "sources)", "6", "600", "B", "6", "0"]


def test_thirty_sources_on_twenty_rows_keep_every_red_row_visible() -> None:
    progress, _ = view(30, height=20)
    progress.statistics(Statistics(sources=[
        stats(n, "unavailable" if n == 29 else "capturing",
              agent_dropped=7 if n == 17 else 0) for n in range(30)]))
    progress.notice(Notice(code="INSTANCE_UNAVAILABLE", origin="my-app/30",
                           text="my-app/30: cannot connect to its agent"))
    shown = screen(progress)
    lines = shown.splitlines()
    assert len(lines) <= 20 - 1, shown
    assert "limits 500.0 MB" in " ".join(lines), shown  # the (wrapped) header too
    assert any("my-app/29:eth0" in line and "unavailable" in line for line in lines), shown
    assert any("my-app/30" in line and "unavailable" in line for line in lines), shown
    assert any("my-app/17:eth0" in line and "congested" in line for line in lines), shown
    assert any("28 sources" in line and "capturing" in line for line in lines), shown
    assert "total (31 sources)" in shown


def test_few_sources_are_listed_one_by_one() -> None:
    progress, _ = view(3, height=20)
    progress.statistics(Statistics(sources=[stats(n) for n in range(3)]))
    shown = screen(progress)
    assert all(f"my-app/{n}:eth0" in shown for n in range(3))
    assert "sources " not in shown.replace("sources)", "")


def test_a_cf_capture_on_eth0_that_sees_nothing_on_the_apps_port_says_try_lo() -> None:
    progress, clock = view(2)
    quiet = Statistics(sources=[stats(n, packets=0, bytes=0, written=0) for n in range(2)])
    clock.now += ROUTE_HINT_AFTER - 1
    progress.statistics(quiet)
    assert "hint:" not in progress.console.export_text(clear=False)
    clock.now += 1
    progress.statistics(quiet)
    progress.statistics(quiet)
    hints = [line for line in progress.console.export_text().splitlines() if "hint:" in line]
    assert hints == ["hint: nothing captured on eth0 in 10s with filter 'tcp port 8080': "
                     "gorouter reaches the container's eth0 as TLS to envoy (port 61001); the "
                     "plain hop to the app's port is on lo: try -i lo"]


def test_no_route_hint_where_it_would_be_wrong() -> None:
    header = Header.of(START, "api", "out.pcapng")
    assert route_hint(header, 60, 0) is not None
    assert route_hint(header, 60, 1) is None  # something came
    for other in (
            Start(target=START.target, options=CaptureOptions(device="lo", filter="port 8080")),
            Start(target=START.target, options=CaptureOptions(device="eth0", filter="port 61001")),
            Start(target=START.target, options=CaptureOptions(device="eth0", filter="udp")),
            Start(target=LocalTarget(), options=CaptureOptions(device="eth0", filter="port 80"))):
        assert route_hint(Header.of(other, "api", "-"), 60, 0) is None
