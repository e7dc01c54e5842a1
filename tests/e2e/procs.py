"""Running pcapd's own processes in end-to-end tests, and reading what they say.

A capture writing to stdout is read as it comes: its stream is decoded with pcapd's incremental
pcapng decoder, so a test can wait for the *event* "the capture has started" (the header with
every interface's IDB arrived) before it sends traffic, instead of sleeping. Agents log one JSON
line per event on stderr; a test waits for "listening" or "capture ... ended" the same way.
What a process holds is read from /proc (:class:`Figures`); an agent is asked for its status
over its own mutual-TLS protocol, as the api asks (:func:`agent_status`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pcapd.certs import CertPaths
from pcapd.pcapng import IDB, PcapngDecoder
from pcapd.proto import StatusReply
from tests import links

PCAPD = os.environ.get("PCAPD_EXE") or str(Path(sys.executable).with_name("pcapd"))
AGENT_PORT = 9494
"""Where an agent listens unless its configuration says otherwise."""


@dataclass(frozen=True)
class Figures:
    """What a process holds, from /proc."""

    fds: int
    threads: int
    rss_mb: float

    @classmethod
    def of(cls, pid: int) -> Figures:
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines())
        return cls(fds=len(os.listdir(f"/proc/{pid}/fd")),
                   threads=int(status["Threads"]),
                   rss_mb=int(status["VmRSS"].split()[0]) / 1024)


async def agent_status(certs: CertPaths, address: str, port: int = AGENT_PORT) -> StatusReply:
    """Ask the agent at ``address:port`` for its status over mutual TLS, as the api asks."""
    return await links.agent_status(address, port, ca=certs.ca_cert,
                                    certificate=certs.api_client_cert,
                                    private_key=certs.api_client_key)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` until true; seconds it took. Fails after ``within`` seconds."""
    began = trio.current_time()
    with trio.move_on_after(within):
        while not await check():  # noqa: ASYNC110 (other processes: no event to await)
            await trio.sleep(0.1)
        return trio.current_time() - began
    raise AssertionError(f"not within {within}s: {what}")


@dataclass
class Lines:
    """The lines a process wrote to one stream, with a way to wait for a matching one."""

    lines: list[str] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, match: Callable[[str], bool]) -> str:
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            await self._changed.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def _pump_lines(stream: trio.abc.ReceiveStream, lines: Lines) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            lines.add(line.decode(errors="replace"))
    if pending:
        lines.add(pending.decode(errors="replace"))


@dataclass
class Proc:
    process: trio.Process
    stderr: Lines
    stdout_lines: Lines

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)


@asynccontextmanager
async def running(*args: str, stdout_lines: bool = True) -> AsyncIterator[Proc]:
    """``pcapd ARGS`` as a child process; killed (by pid) on exit if it still runs."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            [PCAPD, *args], stdout=subprocess.PIPE if stdout_lines else None,
            stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
        proc = Proc(process, Lines(), Lines())
        assert process.stderr is not None
        nursery.start_soon(_pump_lines, process.stderr, proc.stderr)
        if stdout_lines:
            assert process.stdout is not None
            nursery.start_soon(_pump_lines, process.stdout, proc.stdout_lines)
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


def json_event(event: str) -> Callable[[str], bool]:
    """A matcher for an agent's JSON log line with ``"event": event``."""

    def match(line: str) -> bool:
        try:
            return bool(json.loads(line).get("event") == event)
        except ValueError:
            return False

    return match


@dataclass
class StreamedCapture:
    """``pcapd capture ... -w -``: stdout decoded as pcapng while it arrives."""

    process: trio.Process
    stderr: Lines
    data: bytearray = field(default_factory=bytearray)
    interfaces: int = 0
    _decoder: PcapngDecoder = field(default_factory=PcapngDecoder)
    _changed: trio.Event = field(default_factory=trio.Event)
    done: bool = False

    async def pump(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.data += chunk
            self._decoder.receive_data(chunk)
            while (raw := self._decoder.next_raw()) is not None:
                if raw.block_type == IDB:
                    self.interfaces += 1
            self._changed.set()
            self._changed = trio.Event()
        self.done = True
        self._changed.set()

    async def wait_started(self, interfaces: int) -> None:
        """Until the header with ``interfaces`` IDBs has arrived: the capture runs."""
        while self.interfaces < interfaces:
            if self.done:
                raise AssertionError(f"capture ended before it started:\n{self.stderr.text}")
            await self._changed.wait()

    async def wait_for_bytes(self, needle: bytes, count: int) -> None:
        """Until ``needle`` (a packet's payload marker) appears ``count`` times in the stream."""
        while self.data.count(needle) < count:
            if self.done:
                raise AssertionError(f"stream ended before {count}× {needle!r}")
            await self._changed.wait()

    async def wait_exit(self) -> int:
        """The exit status, once the process ended and its whole stdout was read."""
        code = await self.process.wait()
        while not self.done:
            await self._changed.wait()
        return code

    def interrupt(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)


@asynccontextmanager
async def streamed_capture(*args: str, env: dict[str, str] | None = None, pcapd: str = PCAPD
                           ) -> AsyncIterator[StreamedCapture]:
    """``pcapd capture ARGS -w -`` with its stdout decoded as it comes (``pcapd``: another
    install's executable, e.g. a client-only venv's)."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            [pcapd, "capture", *args, "-w", "-"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)
        capture = StreamedCapture(process, Lines())
        assert process.stderr is not None
        nursery.start_soon(_pump_lines, process.stderr, capture.stderr)
        nursery.start_soon(capture.pump)
        try:
            yield capture
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
