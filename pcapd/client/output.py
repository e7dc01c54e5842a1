"""Where the pcapng goes on the user's machine: a file or stdout, written off the Trio thread.

Every payload from the api is whole pcapng blocks, so the file is a valid pcapng after every
write — a capture cut short still opens in Wireshark. Writes happen in a worker thread (a
slow disk or a full pipe to Wireshark must not freeze the event loop that answers pings).
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

import trio

from pcapd.errors import UsageError


class PcapngOutput:
    """An open destination for pcapng bytes."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.bytes_written = 0
        self._file: BinaryIO | None = None

    @property
    def to_stdout(self) -> bool:
        return self.target == "-"

    def open(self) -> None:
        """Open now, before contacting anyone: a bad path fails fast, before any capture."""
        if self.to_stdout:
            self._file = sys.stdout.buffer
            return
        try:
            self._file = open(self.target, "wb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise UsageError(f"-w {self.target}: cannot write: {exc.strerror}") from exc

    async def write(self, payload: bytes | memoryview) -> None:
        assert self._file is not None
        data = bytes(payload)
        await trio.to_thread.run_sync(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
            self._file.flush()
        except BrokenPipeError:
            # the reader (tshark -c N, a closed Wireshark) has gone: stop writing, quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._file.fileno())
            os.close(devnull)
            raise
        self.bytes_written += len(data)

    def close(self) -> None:
        if self._file is not None and not self.to_stdout:
            self._file.close()
        self._file = None


def default_target(write: str | None) -> str:
    """``-w`` as given; without it stdout when it is a pipe, else an error saying what to do."""
    if write is not None:
        return write
    if not sys.stdout.isatty():
        return "-"
    raise UsageError("say where the capture goes: -w FILE, or -w - to pipe it "
                     "(pcapd capture … -w - | wireshark -k -i -)")
