"""User filters compiled in a child process, with CPU, memory and wall-clock limits.

libpcap's ``pcap_compile`` holds the GIL from start to end, resolves host names in the filter
(a DNS lookup) and optimises in time that grows with about the cube of the number of ``or``
terms: ``port 1 or … or port 200`` (2.3 KiB) took 9 s of CPU, near the 8 KiB limit minutes
(docs/performance.md, "Under attack"). In a server's own process, even in a worker thread, that
froze every other request and every running capture. So the api and the agent compile a
user's filter only in a child: ``python -m pcapd.agent.bpf`` reads one request on stdin,
limits itself (:data:`~.bpf.CPU_SECONDS` of CPU, :data:`~.bpf.MEMORY` of memory),
compiles and writes the result on stdout; the parent waits without blocking its
event loop and kills it after :data:`WALL_SECONDS` (a slow DNS answer included). A child
costs ~40 ms to start, once per capture start and only for a non-empty filter.
"""

from __future__ import annotations

import signal
import sys
from typing import Final

import cypcap
import msgspec
import trio

from pcapd.agent.bpf import (
    CPU_SECONDS,
    DLT_EN10MB,
    CompileRequest,
    CompileResult,
    HandleError,
    InvalidFilter,
    Link,
    quoted,
)

WALL_SECONDS: Final = 5.0
"""Seconds until the child is killed, whatever it waits for (the resolver, the CPU)."""
CONCURRENT: Final = 2
"""Compiles running at once per process; more wait their turn (one per core here)."""

_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("bpf_compiles")


class FilterTooCostly(InvalidFilter):
    """The filter did not compile within the limits: refused like an invalid one."""


async def check_filter(expr: str, snaplen: int = 65535) -> None:
    """Raise :class:`InvalidFilter` unless ``expr`` compiles (within the limits)."""
    if expr.strip():
        await _run(CompileRequest(expr, [], DLT_EN10MB, snaplen, split=False))


async def capture_program(user_filter: str, exclude: list[Link], link_type: int, snaplen: int,
                          ) -> tuple[cypcap.Direction | None, str | None]:
    """The direction and program for a capture's handle (see :func:`.bpf.compile_program`):
    the program as :meth:`cypcap.BpfProgram.dumps` text, which either engine installs."""
    if not user_filter.strip() and not exclude:
        return None, None
    result = await _run(CompileRequest(user_filter, exclude, link_type, snaplen, split=True))
    direction = cypcap.Direction[result.direction] if result.direction else None
    return direction, result.program or None


async def filter_program(expr: str, link_type: int, snaplen: int) -> str:
    """A filter for the flight recorder's trigger, run by pcapd itself on each captured packet
    (``pcap_offline_filter``), never by the kernel: no direction split, no exclusions. The
    program as :meth:`cypcap.BpfProgram.dumps` text; :class:`InvalidFilter` unless it
    compiles (within the limits)."""
    result = await _run(CompileRequest(expr, [], link_type, snaplen, split=False))
    if not result.program:
        raise InvalidFilter(f"the BPF filter {quoted(expr)} is empty")
    return result.program


async def _kill(process: trio.Process) -> None:
    """Past the deadline the child is killed at once: Trio's default (SIGTERM, then SIGKILL
    5 s later) would let a child stuck in libpcap's optimiser, or ignoring SIGTERM, hold the
    user's start and a compile slot for twice ``WALL_SECONDS``."""
    process.kill()


async def _run(request: CompileRequest) -> CompileResult:
    try:
        limiter = _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(CONCURRENT)
        _limiter.set(limiter)
    async with limiter:
        with trio.move_on_after(WALL_SECONDS) as deadline:
            done = await trio.run_process(
                [sys.executable, "-I", "-m", "pcapd.agent.bpf"], stdin=msgspec.json.encode(request),
                capture_stdout=True, capture_stderr=True, check=False, deliver_cancel=_kill)
    if deadline.cancelled_caught:
        raise FilterTooCostly(
            f"the BPF filter {quoted(request.filter)} took too long to compile (over "
            f"{WALL_SECONDS:g} s: too many terms, or a host name that resolves slowly): use "
            "addresses, and ranges (portrange, net) instead of long lists")
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise FilterTooCostly(
            f"the BPF filter {quoted(request.filter)} is too costly to compile (over "
            f"{CPU_SECONDS} s of CPU; libpcap's optimiser grows with about the cube of the "
            "number of `or` terms): use ranges (portrange, net) instead of long lists")
    try:
        result = msgspec.json.decode(done.stdout, type=CompileResult)
    except msgspec.DecodeError:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise HandleError(f"the filter compiler failed (exit status {done.returncode}): "
                           f"{why[0][:200]}") from None
    if result.error is not None:
        raise InvalidFilter(result.error)
    return result
