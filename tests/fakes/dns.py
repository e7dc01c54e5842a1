"""A DNS server on a loopback address that records every question and answers "no such name"
(NXDOMAIN), or nothing at all for the names in ``silent`` (a resolver that never answers).

A process sees it when its ``/etc/resolv.conf`` names it: :meth:`FakeDns.resolv_conf` writes
such a file, and :func:`with_resolv_conf` runs a command in a private mount namespace with that
file bound over ``/etc/resolv.conf`` (root only; the machine's own file is untouched). The
glibc resolver has no port setting, so the server listens on port 53 of a random 127.x.y.z
address: no other test's server shares it.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType

NXDOMAIN = 3


class FakeDns:
    """See the module docstring; a context manager, started on entry."""

    def __init__(self) -> None:
        self.silent: set[str] = set()
        """Names that get no answer: the resolver waits out its own timeout."""
        self._questions: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            address = "127." + ".".join(str(random.randint(1, 254)) for _ in range(3))
            try:
                self._sock.bind((address, 53))
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free loopback address for the fake DNS server")
        self.address = address
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-dns")

    def __enter__(self) -> FakeDns:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def asked(self, name: str) -> list[int]:
        """The query types (1 A, 28 AAAA, ...) of every question about ``name`` so far."""
        wanted = name.lower().rstrip(".")
        with self._lock:
            return [qtype for asked, qtype in self._questions if asked == wanted]

    def resolv_conf(self, directory: Path) -> Path:
        """A resolv.conf naming only this server; the resolver waits up to 30 s for an answer
        and asks once, so a silent name outlasts any deadline of pcapd's."""
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {self.address}\noptions timeout:30 attempts:1\n")
        return path

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            parsed = _question(query)
            if parsed is None:
                continue
            name, qtype, end = parsed
            with self._lock:
                self._questions.append((name, qtype))
            if name in self.silent:
                continue
            ident, flags = struct.unpack("!HH", query[:4])
            header = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100) | NXDOMAIN,
                                 1, 0, 0, 0)
            self._sock.sendto(header + query[12:end], peer)


def _question(query: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, offset after the question) of a query's first question, or None."""
    if len(query) < 12 or struct.unpack("!H", query[4:6])[0] < 1:
        return None
    labels, at = [], 12
    while at < len(query) and query[at]:
        size = query[at]
        labels.append(query[at + 1:at + 1 + size].decode("ascii", "replace"))
        at += 1 + size
    if at + 5 > len(query):
        return None
    qtype = struct.unpack("!H", query[at + 1:at + 3])[0]
    return ".".join(labels).lower(), qtype, at + 5


def with_resolv_conf(resolv_conf: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a private mount namespace whose ``/etc/resolv.conf`` is ``resolv_conf``
    (the same process id: ``unshare`` and ``sh`` each exec the next)."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf), *argv]
