"""A ring's pieces in files: ``recorder.storage: directory`` (the ephemeral disk).

Theory of operation. Each recording owns ``<recorder.directory>/<recording id>/`` (0700). Its
pieces are appended to *segment* files (0600, opened ``O_NOFOLLOW|O_EXCL`` relative to the
directory's descriptor, so no symlink planted there is followed); a segment is rotated when the
next piece would take it past ``segment_bytes`` and deleted as soon as its last piece is freed
(aged out by time or size). ``held`` is the bytes of the segment files, so the ring's size rule
(``held <= max_bytes``) bounds the disk, not just the packets. The index (timestamps of each
piece) stays in the ring's memory; only packet bytes are here.

A window hands out the pieces between its ends as :class:`FileSlice` objects, read when the
save sends them: each holds a duplicate of its segment's descriptor (one per segment,
shared), so a segment deleted meanwhile stays readable, and its disk space is returned when
the last slice of it is gone.

Everything here is blocking file I/O: the recorder calls it from worker threads
(``trio.to_thread``), one call at a time per recording, never on the Trio thread. A write error
(``ENOSPC``) propagates: it ends that recording, not the agent nor the other recordings.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
               | os.O_CLOEXEC)


@dataclass(slots=True)
class _Segment:
    fd: int
    size: int = 0
    live: int = 0
    """Pieces of this segment not yet freed."""


class _Pin:
    """A duplicate of a segment's descriptor, closed when the last slice of it is gone."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = os.dup(fd)
        self.name = name
        self._close = weakref.finalize(self, os.close, self.fd)


class FileSlice:
    """Bytes of a segment file, read on ``bytes(slice)`` (blocking: off the Trio thread)."""

    __slots__ = ("_length", "_offset", "_pin")

    def __init__(self, pin: _Pin, offset: int, length: int) -> None:
        self._pin, self._offset, self._length = pin, offset, length

    def __len__(self) -> int:
        return self._length

    def __bytes__(self) -> bytes:
        return _read(self._pin.fd, self._offset, self._length, self._pin.name)


def prepare_directory(path: Path) -> None:
    """Create the rings' directory (0700) or empty it: rings of a previous run are lost with
    it (an agent restart loses its rings). Refuses a symlink or a non-directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(
                f"recorder.directory {path} is not a directory (a symlink is refused)") from None
        os.chmod(path, 0o700, follow_symlinks=False)
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def free_space(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DirectoryStore:
    """One recording's pieces in segment files under ``root/<name>/`` (see the module)."""

    def __init__(self, root: Path, name: str, segment_bytes: int) -> None:
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"not a safe directory name: {name!r}")
        self.path = root / name
        self.segment_bytes = max(1, segment_bytes)
        os.mkdir(self.path, 0o700)
        self._dir = os.open(self.path, _DIR_FLAGS)
        self._segments: dict[int, _Segment] = {}
        self._pins: weakref.WeakValueDictionary[int, _Pin] = weakref.WeakValueDictionary()
        """Each segment's descriptor duplicate while a window's slices hold it."""
        self._current: int | None = None
        self._next = 0
        self.held = 0
        self.closed = False

    def put(self, blocks: bytes) -> object:
        n = self._current
        seg = None if n is None else self._segments[n]
        if seg is None or (seg.size and seg.size + len(blocks) > self.segment_bytes):
            n, self._next = self._next, self._next + 1
            seg = self._segments[n] = _Segment(os.open(_name(n), _FILE_FLAGS, 0o600,
                                                       dir_fd=self._dir))
            self._current = n
        offset = seg.size
        view = memoryview(blocks)
        try:
            while view:
                view = view[os.write(seg.fd, view):]
        finally:
            written = len(blocks) - len(view)
            seg.size += written
            self.held += written
        seg.live += 1
        return (n, offset, len(blocks))

    def get(self, ref: object) -> bytes:
        n, offset, length = _ref(ref)
        return _read(self._segments[n].fd, offset, length, f"{self.path}/{_name(n)}")

    def part(self, ref: object, start: int, end: int) -> FileSlice:
        n, offset, _ = _ref(ref)
        pin = self._pins.get(n)
        if pin is None:
            pin = self._pins[n] = _Pin(self._segments[n].fd, f"{self.path}/{_name(n)}")
        return FileSlice(pin, offset + start, end - start)

    def free(self, ref: object) -> None:
        n = _ref(ref)[0]
        seg = self._segments[n]
        seg.live -= 1
        if seg.live == 0:
            self._drop(n)

    def clear(self) -> None:
        for n in list(self._segments):
            self._drop(n)

    def close(self) -> None:
        """Delete every file and the recording's directory."""
        if self.closed:
            return
        self.closed = True
        self.clear()
        os.close(self._dir)
        shutil.rmtree(self.path, ignore_errors=True)

    def _drop(self, n: int) -> None:
        seg = self._segments.pop(n)
        os.close(seg.fd)
        os.unlink(_name(n), dir_fd=self._dir)
        self.held -= seg.size
        if self._current == n:
            self._current = None


def _read(fd: int, offset: int, length: int, name: str) -> bytes:
    parts = []
    while length:
        part = os.pread(fd, length, offset)
        if not part:
            raise OSError(f"segment {name} is shorter than written")
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _name(n: int) -> str:
    return f"segment-{n:08d}.epb"


def _ref(ref: object) -> tuple[int, int, int]:
    assert isinstance(ref, tuple) and len(ref) == 3
    return ref


__all__ = ["DirectoryStore", "free_space", "prepare_directory"]
