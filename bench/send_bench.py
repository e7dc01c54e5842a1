"""CPU an agent spends sending Data messages over its mutual-TLS WebSocket link, per MB.

The agent's side alone: a ``serve_websocket`` server with the agent's certificate sends
``--count`` Data messages of ``--size`` bytes of payload (each payload a fresh buffer, as the
capture's ``take`` makes one a batch) to a reader in another process on loopback, which
discards them; the sender's own CPU time (user + system: TLS, framing, and the kernel's TCP
path, which on loopback also runs the receiving side's softirq) is divided by the bytes sent.
Three paths: ``wsproto`` (``encode_data`` joined, then trio-websocket's ``send_message``: how
every message was sent first), ``joined`` (pcapd frames the message, joins it once and writes
it with trio's ``SSLStream.send_all``: the path of 2026-12-06) and ``pcapd``
(``_compat.send_binary``: encrypted in pieces without the join and written to the socket with
one loop turn, what ``Link.send`` does with Data now). Beside the CPU: the turns of Trio's run
loop a message (each an ``epoll_wait``). Each size and path runs ``--rounds`` times,
alternating; the median is shown (the machine's load moves single runs by ±20 %).

Usage::

    .venv/bin/python bench/send_bench.py [--sizes 20000,100000,300000] [--mb 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from pcapd.certs import CertPaths, init_certs
from pcapd.proto.codec import data_header, encode_data
from pcapd.transport._compat import send_binary
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import open_websocket, serve_websocket

AGENT_NAME = "pcap-agent.service.cf.internal"
PACKET = 132
"""Bytes of a 100-byte frame as an EPB: the per-packet figure divides by this."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _read(pki: Path, port: int, count: int) -> None:
    paths = CertPaths.in_directory(pki)
    ctx = client_context(ca=paths.ca_cert, certificate=paths.api_client_cert,
                         private_key=paths.api_client_key)
    async with open_websocket("127.0.0.1", port, ssl_context=ctx,
                              server_hostname=AGENT_NAME) as ws:
        for _ in range(count):
            await ws.get_message()


async def _send_joined(ws: trio_websocket.WebSocketConnection, header: bytes,
                       payload: bytes) -> None:
    """The previous path: frame, join, ``SSLStream.send_all`` under the connection's lock."""
    impl: Any = ws
    size = len(header) + len(payload)
    frame = struct.pack("!BBQ", 0x82, 127, size) if size >= 65536 else struct.pack(
        "!BBH", 0x82, 126, size)
    async with impl._stream_lock:
        await impl._stream.send_all(b"".join((frame, header, payload)))


class LoopTurns(trio.abc.Instrument):
    """Turns of Trio's run loop (one ``epoll_wait`` each) while ``counting``."""

    def __init__(self) -> None:
        self.counting = False
        self.turns = 0

    def before_io_wait(self, timeout: float) -> None:
        self.turns += self.counting


async def _send(pki: Path, path: str, size: int, count: int) -> tuple[float, float]:
    """Seconds of this process's CPU to send ``count`` messages of ``size`` bytes, and the
    run loop's turns a message meanwhile."""
    paths = CertPaths.in_directory(pki)
    turns = LoopTurns()
    trio.lowlevel.add_instrument(turns)
    payload = os.urandom(size)
    spent: list[float] = []
    done = trio.Event()

    async def handler(ws: trio_websocket.WebSocketConnection, peer: str,
                      headers: list[tuple[bytes, bytes]]) -> None:
        start = _cpu()
        turns.counting = True
        for mark in range(1, count + 1):
            batch = bytes(bytearray(payload))  # a fresh buffer, as the capture's take() gives
            if path == "wsproto":
                await ws.send_message(encode_data(mark, batch))
            elif path == "joined":
                await _send_joined(ws, data_header(mark, len(batch)), batch)
            else:
                await send_binary(ws, data_header(mark, len(batch)), batch)
        spent.append(_cpu() - start)
        turns.counting = False
        done.set()
        await trio.sleep_forever()

    ctx = server_context(paths.agent_cert, paths.agent_key, client_ca=paths.ca_cert)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, ctx)
        port = listeners[0].socket.getsockname()[1]
        reader = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--reader", str(pki), str(port), str(count)])
        await done.wait()
        await reader.wait()
        nursery.cancel_scope.cancel()
    return spent[0], turns.turns / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,100000,300000",
                        help="payload bytes a message, comma-separated")
    parser.add_argument("--mb", type=float, default=40, help="MB sent per run (default 40)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reader", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        pki, port, count = args.reader
        trio.run(_read, Path(pki), int(port), int(count))
        return
    with tempfile.TemporaryDirectory(prefix="pcapd-send-bench-") as tmp:
        pki = Path(tmp) / "pki"
        init_certs(pki)
        print(f"load: {os.getloadavg()[0]:.2f}; {args.mb:g} MB a run, median of {args.rounds}")
        for size in (int(s) for s in args.sizes.split(",")):
            count = max(1, round(args.mb * 1e6 / size))
            runs: dict[str, list[float]] = {"wsproto": [], "joined": [], "pcapd": []}
            loop: dict[str, list[float]] = {path: [] for path in runs}
            for _ in range(args.rounds):
                for path, figures in runs.items():
                    cpu, turns = trio.run(_send, pki, path, size, count)
                    figures.append(cpu / (size * count / 1e6))
                    loop[path].append(turns)
            for path, figures in runs.items():
                per_mb = statistics.median(figures)
                print(f"{size:>8} B a message, {path:7}: {per_mb * 1e3:5.2f} ms/MB "
                      f"({per_mb * size:6.0f} µs a message, "
                      f"{per_mb * PACKET:5.3f} µs a {PACKET}-byte packet, "
                      f"{statistics.median(loop[path]):4.1f} loop turns a message)  "
                      f"runs {' '.join(f'{f * 1e3:.2f}' for f in figures)}")


if __name__ == "__main__":
    main()
