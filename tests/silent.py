"""A peer that accepts TCP connections and never says a word: a hung api, UAA, director or
agent, a load balancer that black-holes. Used to put a client into a phase and keep it there
(connecting, refreshing a login, starting) until a test sends it a signal."""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """Listens (on ``listener``, or on a loopback port of its own) and holds every connection
    open without answering; ``accepted`` is set once someone connected."""

    def __init__(self, listener: socket.socket | None = None) -> None:
        if listener is None:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.listener = listener
        self.port = int(listener.getsockname()[1])
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self._held.append(self.listener.accept()[0])
            except OSError:
                continue
            self.accepted.set()

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self.listener.close()
