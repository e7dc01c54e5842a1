"""Where the pcapng goes on the user's machine: a file or stdout, written off the Trio thread.

Every payload from the api is whole pcapng blocks, so the file is a valid pcapng after every
write — a capture cut short still opens in Wireshark. Writes happen in a worker thread (a
slow disk or a full pipe to Wireshark must not freeze the event loop that answers pings).

Nothing that exists is touched before the capture has started (SPEC §8): a regular file is
written as ``.NAME.partial`` next to its target and renamed into place at the end — also
after a failure, if the capture had started, since the file then holds whole blocks and
opens. An existing target is refused unless ``--force``; a FIFO or a device (``/dev/null``,
the FIFO Wireshark hands an extcap) is written in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

import trio

from pcapd.errors import PcapdError, UsageError

TO_PIPE = "pipe it (pcapd capture … -w - | wireshark -k -i -) or write a file (-w FILE)"


def check_target(target: str, *, force: bool, flag: str = "-w") -> Path | None:
    """Refuse, before anyone is contacted, a ``target`` that would lose or dump something.

    Returns the regular file to write through a partial file, or None to write in place
    (stdout, a FIFO, a device). Raises a one-line :class:`UsageError` for an existing file
    without ``force``, a missing directory, or stdout that is a terminal.
    """
    if target == "-":
        if sys.stdout.isatty():
            raise UsageError(f"{flag} -: stdout is a terminal, and a pcapng is binary: {TO_PIPE}")
        return None
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UsageError(f"{flag} {target}: cannot write: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        return None
    if mode is not None and not force:
        raise UsageError(f"{flag} {target}: the file exists: pass --force (-F) to overwrite it, "
                         "or choose another name")
    if mode is not None:
        path = path.resolve()  # a symbolic link: replace the file it names, keep the link
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"{flag} {target}: no directory {directory}: create it first, or "
                         "choose another path")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {target}: cannot write in {directory}: permission denied")
    return path


def partial_path(path: Path) -> Path:
    """``dir/NAME`` → ``dir/.NAME.partial``: where a file grows until it is complete."""
    return path.with_name(f".{path.name}.partial")


def put_in_place(partial: Path, target: Path, *, force: bool) -> None:
    """Rename the finished ``partial`` to ``target``; without ``force`` never over a file that
    appeared meanwhile (a hard link fails if the name is taken; rename would not)."""
    try:
        if force:
            os.replace(partial, target)
            return
        try:
            os.link(partial, target)
        except FileExistsError:
            raise PcapdError(f"{target} appeared while pcapd was writing: the capture is in "
                             f"{partial} (rename it yourself, or use --force)") from None
        except OSError:  # a file system without hard links: a plain rename
            if target.exists():
                raise PcapdError(f"{target} appeared while pcapd was writing: the capture is "
                                 f"in {partial}") from None
            os.replace(partial, target)
            return
        partial.unlink()
    except OSError as exc:
        raise PcapdError(f"cannot rename {partial} to {target}: {exc.strerror or exc}") from exc


class PcapngOutput:
    """An open destination for pcapng bytes."""

    def __init__(self, target: str, *, force: bool = False) -> None:
        self.target = target
        self.force = force
        self.bytes_written = 0
        self._file: BinaryIO | None = None
        self._final: Path | None = None
        self._partial: Path | None = None

    @property
    def to_stdout(self) -> bool:
        return self.target == "-"

    @property
    def writing_to(self) -> str:
        """Where the bytes go now: the partial file while a capture runs."""
        return str(self._partial or self.target)

    def open(self) -> None:
        """Check and open now, before contacting anyone: a bad path fails fast, and nothing
        that exists is touched."""
        self._final = check_target(self.target, force=self.force)
        if self.to_stdout:
            self._file = sys.stdout.buffer
            return
        where = self.target
        if self._final is not None:
            self._partial = partial_path(self._final)
            where = str(self._partial)
        try:
            self._file = open(where, "wb")  # noqa: SIM115 (closed in close())
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
        """Close; a partial file that holds something is renamed into place, an empty one
        (the capture never started) removed."""
        if self._file is not None and not self.to_stdout:
            self._file.close()
        self._file = None
        partial, self._partial = self._partial, None
        if partial is None or self._final is None:
            return
        if self.bytes_written == 0:
            with contextlib.suppress(OSError):
                partial.unlink()
            return
        put_in_place(partial, self._final, force=self.force)


def default_target(write: str | None) -> str:
    """``-w`` as given; without it stdout when it is a pipe, else an error saying what to do."""
    if write is not None:
        return write
    if not sys.stdout.isatty():
        return "-"
    raise UsageError("say where the capture goes: -w FILE, or -w - to pipe it "
                     "(pcapd capture … -w - | wireshark -k -i -)")
