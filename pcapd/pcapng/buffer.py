"""The input buffer both incremental decoders share.

One bytearray read through an offset. The consumed prefix is dropped only when it outweighs
what is left (or everything was read), so each byte is copied O(1) times however the input is
chunked: no ``buf = buf[n:]`` per block, which is quadratic on large buffers.
"""

from __future__ import annotations

_COMPACT_AFTER = 64 * 1024


class InputBuffer:
    """``receive_data`` side of a decoder; subclasses read ``_buf[_pos:]`` and ``_consume``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._base = 0  # stream offset of _buf[0]
        self._eof = False

    @property
    def offset(self) -> int:
        """Stream offset of the next item to be read."""
        return self._base + self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append input; ``b""`` means the input has ended."""
        if self._eof:
            if data:
                raise RuntimeError("receive_data() after end of input")
            return
        if not data:
            self._eof = True
        else:
            self._buf += data

    def _consume(self, end: int) -> None:
        """Mark ``_buf[:end]`` as read."""
        buf = self._buf
        if end == len(buf):
            buf.clear()
            self._base += end
            self._pos = 0
        elif end > _COMPACT_AFTER and end * 2 > len(buf):
            del buf[:end]
            self._base += end
            self._pos = 0
        else:
            self._pos = end
