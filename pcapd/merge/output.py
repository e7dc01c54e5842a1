"""The output of ``pcapd merge``: a file that appears under its name only once complete.

A regular output file is written as a hidden temporary file in the same directory
(``.NAME.XXXXXXXX.tmp``) and renamed over its name when complete, so a failed or interrupted
merge leaves no partial file, and the output may be one of the inputs. A file that existed keeps
its permissions, a symbolic link its target; a device or FIFO (``/dev/null``) is written in place,
and ``-`` is stdout. Every ``OSError`` becomes :class:`MergeOutputError`, naming the output.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from pcapd.errors import PcapdError

__all__ = ["MergeOutputError", "Output", "open_output"]

_WRITE_BUFFER = 1024 * 1024


class MergeOutputError(PcapdError):
    """The output cannot be created or written (nothing is left behind)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


@contextlib.contextmanager
def open_output(target: str) -> Iterator[io.BufferedWriter]:
    """The output stream; a regular file appears under its name only once complete."""
    if target == "-":
        with _writing("stdout"):
            stdout = io.FileIO(sys.stdout.fileno(), "wb", closefd=False)
        with _closing(io.BufferedWriter(stdout, _WRITE_BUFFER), "stdout") as fh:
            yield fh
        return
    path = Path(target)
    try:
        mode = path.stat().st_mode
        path = path.resolve()  # a symbolic link: replace the file it names, keep the link
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise MergeOutputError(target, f"cannot write: {exc.strerror or exc}") from exc
    if mode is not None and not stat.S_ISREG(mode):  # /dev/null, a FIFO: write in place
        with _writing(target):
            raw = io.FileIO(path, "wb")
        with _closing(io.BufferedWriter(raw, _WRITE_BUFFER), target) as fh:
            yield fh
        return
    tmp, fd = _create_temporary(path)
    try:
        with _closing(io.BufferedWriter(io.FileIO(fd, "wb"), _WRITE_BUFFER), target) as fh:
            yield fh
        with _writing(target):
            if mode is not None:  # an existing file keeps its permissions, as if overwritten
                os.chmod(tmp, stat.S_IMODE(mode))
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _closing(fh: io.BufferedWriter, target: str) -> Iterator[io.BufferedWriter]:
    """Close (and so flush) ``fh`` at the end; after an error, close it quietly."""
    try:
        yield fh
    except BaseException:
        with contextlib.suppress(OSError):
            fh.close()
        raise
    with _writing(target):
        fh.close()


def _create_temporary(path: Path) -> tuple[Path, int]:
    # O_EXCL with a random name, rather than mkstemp: the file gets the mode of any new file
    # (0666 less the umask), not mkstemp's 0600, and keeps it through the rename.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")  # not secrets: 4 ms
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise MergeOutputError(str(path), f"cannot create: {exc.strerror or exc}") from exc
    raise MergeOutputError(str(path), "cannot create a temporary file next to it")


@contextlib.contextmanager
def _writing(target: str) -> Iterator[None]:
    try:
        yield
    except BrokenPipeError as exc:
        raise MergeOutputError(target, "the reader went away (broken pipe)") from exc
    except OSError as exc:
        raise MergeOutputError(target, f"cannot write: {exc.strerror or exc}") from exc


class Output:
    """The output section: blocks in order, interface ids, the kept statistics."""

    def __init__(self, fh: io.BufferedWriter, target: str) -> None:
        self._fh = fh
        self._target = "stdout" if target == "-" else target
        self.interfaces = 0
        self._statistics: dict[int, bytes] = {}

    def write(self, block: bytes) -> None:
        with _writing(self._target):
            self._fh.write(block)

    def write_blocks(self, blocks: list[bytes]) -> None:
        if blocks:
            with _writing(self._target):
                self._fh.write(b"".join(blocks))

    def add_interface(self, idb: bytes) -> int:
        """Write an IDB now; its id is the number of IDBs before it."""
        self.write(idb)
        self.interfaces += 1
        return self.interfaces - 1

    def keep_statistics(self, interface_id: int, isb: bytes) -> None:
        self._statistics[interface_id] = isb

    def finish(self) -> None:
        self.write_blocks([self._statistics[i] for i in sorted(self._statistics)])
