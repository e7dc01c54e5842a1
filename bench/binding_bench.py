"""Per-packet cost of reading packets from libpcap into pcapng EPBs, per binding (root only).

Fills a large ring on ``lo`` with N UDP datagrams (100-byte frames) without reading, then
times reading all of them back with ``dispatch`` in non-blocking mode, for each path:

- ``cypcap count``: a callback that only counts (the binding's floor);
- ``cypcap float``: ``hdr.ts`` / ``hdr.len`` (right at microsecond precision only);
- ``cypcap raw header``: pcapd's nanosecond header read (:mod:`pcapd.agent.pkthdr`);
- ``pcapd read_batch``: the engine's whole path (header read, EPB encode, join), via Trio;
- ``pcapy-ng`` and ``libpcap`` (ctypes), with an EPB encode, when importable: install them in a
  throwaway venv and pass its site-packages with ``--site`` (same CPython).

On ``lo`` the kernel puts both copies of each packet (outgoing and incoming) in the ring and
libpcap skips the outgoing one in C: that cost is included. Usage::

    sudo .venv/bin/python bench/binding_bench.py [--packets 100000] [--rounds 5] [--site DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

PORT = 40123
BPF = f"udp dst port {PORT}"
BUFFER = 128 * 1024 * 1024


def fill(count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"p" * 58  # 14 + 20 + 8 + 58 = 100-byte frames
    for _ in range(count):
        sock.sendto(payload, ("127.0.0.1", PORT))
    sock.close()
    time.sleep(0.05)  # let the kernel retire the last ring block (buffer timeout 5 ms)


def cypcap_handle() -> Any:
    import cypcap

    pcap = cypcap.create("lo")
    pcap.set_snaplen(65535)
    pcap.set_timeout(0.005)
    pcap.set_buffer_size(BUFFER)
    pcap.set_tstamp_precision(cypcap.TstampPrecision.NANO)
    pcap.activate()
    pcap.setfilter(BPF, netmask=cypcap.NETMASK_UNKNOWN)
    pcap.setnonblock(True)
    return pcap


def drain_cypcap(pcap: Any, callback: Callable[[Any, bytes], None], seen: list[Any]) -> float:
    start = time.perf_counter()
    while True:
        before = len(seen)
        pcap.dispatch(256, callback)
        if len(seen) == before:
            return time.perf_counter() - start


def run_cypcap(kind: str, count: int) -> float:
    from pcapd.agent.pkthdr import header_offset, raw_reader
    from pcapd.pcapng import encode_enhanced_packet

    pcap = cypcap_handle()
    seen: list[Any] = []
    append = seen.append
    if kind == "count":

        def callback(hdr: Any, data: bytes) -> None:
            append(1)

    elif kind == "float":

        def callback(hdr: Any, data: bytes) -> None:
            append((hdr.ts, hdr.len))

    else:
        offset = header_offset()
        assert offset is not None, "Pkthdr layout probe failed on this build"
        read = raw_reader(offset, nanoseconds=True)
        if kind == "raw":

            def callback(hdr: Any, data: bytes) -> None:
                append(read(hdr))

        else:

            def callback(hdr: Any, data: bytes) -> None:
                ts, length = read(hdr)
                append(encode_enhanced_packet(interface_id=0, timestamp=ts, data=data,
                                              original_length=length))  # fmt: skip

    try:
        fill(count)
        elapsed = drain_cypcap(pcap, callback, seen)
    finally:
        pcap.close()
    assert len(seen) == count, f"read {len(seen)} of {count}"
    return elapsed


def run_engine(count: int) -> float:
    import trio

    from pcapd.agent.pcap import open_handle

    async def main() -> float:
        async with open_handle("lo", filter=BPF, buffer_size=BUFFER) as cap:
            await trio.to_thread.run_sync(fill, count)
            start = time.perf_counter()
            batch = await cap.read_batch(max_packets=count, max_wait=0)
            elapsed = time.perf_counter() - start
            assert batch.packets == count, f"read {batch.packets} of {count}"
            return elapsed

    return trio.run(main)


def run_pcapy(count: int) -> float:
    import pcapy  # type: ignore[import-not-found]

    from pcapd.pcapng import encode_enhanced_packet

    pcap = pcapy.create("lo")
    pcap.set_snaplen(65535)
    pcap.set_timeout(5)  # milliseconds here
    pcap.set_buffer_size(BUFFER)
    pcap.activate()
    pcap.setfilter(BPF)
    pcap.setnonblock(1)
    seen: list[bytes] = []
    append = seen.append

    def callback(hdr: Any, data: bytes) -> None:
        sec, usec = hdr.getts()
        append(encode_enhanced_packet(interface_id=0, timestamp=(sec * 1_000_000 + usec) * 1000,
                                      data=data, original_length=hdr.getlen()))  # fmt: skip

    fill(count)
    start = time.perf_counter()
    while True:
        before = len(seen)
        pcap.dispatch(256, callback)
        if len(seen) == before:
            break
    elapsed = time.perf_counter() - start
    pcap.close()
    assert len(seen) == count, f"read {len(seen)} of {count}"
    return elapsed


def run_ctypes_libpcap(count: int) -> float:
    import libpcap as pcap  # type: ignore[import-not-found]

    from pcapd.pcapng import encode_enhanced_packet

    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE + 1)
    handle = pcap.create(b"lo", errbuf)
    pcap.set_snaplen(handle, 65535)
    pcap.set_timeout(handle, 5)
    pcap.set_buffer_size(handle, BUFFER)
    pcap.set_tstamp_precision(handle, pcap.PCAP_TSTAMP_PRECISION_NANO)
    assert pcap.activate(handle) == 0
    program = pcap.bpf_program()
    assert pcap.compile(handle, ctypes.byref(program), BPF.encode(), 1, 0xFFFFFFFF) == 0
    pcap.setfilter(handle, ctypes.byref(program))
    pcap.setnonblock(handle, 1, errbuf)
    seen: list[bytes] = []
    append = seen.append

    @pcap.pcap_handler  # type: ignore[untyped-decorator]
    def callback(user: Any, hdr_p: Any, data_p: Any) -> None:
        hdr = hdr_p.contents
        data = ctypes.string_at(data_p, hdr.caplen)
        append(encode_enhanced_packet(interface_id=0,
                                      timestamp=hdr.ts.tv_sec * 1_000_000_000 + hdr.ts.tv_usec,
                                      data=data, original_length=hdr.len))  # fmt: skip

    fill(count)
    start = time.perf_counter()
    while True:
        before = len(seen)
        pcap.dispatch(handle, 256, callback, None)
        if len(seen) == before:
            break
    elapsed = time.perf_counter() - start
    pcap.close(handle)
    assert len(seen) == count, f"read {len(seen)} of {count}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--site", help="site-packages of a venv holding pcapy-ng and libpcap")
    args = parser.parse_args()
    if args.site:
        sys.path.append(args.site)
    runs: list[tuple[str, Callable[[int], float]]] = [
        ("cypcap count", lambda n: run_cypcap("count", n)),
        ("cypcap float ts", lambda n: run_cypcap("float", n)),
        ("cypcap raw header (ns)", lambda n: run_cypcap("raw", n)),
        ("cypcap raw header + EPB", lambda n: run_cypcap("epb", n)),
        ("pcapd read_batch (ns, EPB)", run_engine),
    ]
    optional: list[tuple[str, str, Callable[[int], float]]] = [
        ("pcapy", "pcapy-ng getts + EPB (us)", run_pcapy),
        ("libpcap", "libpcap ctypes + EPB (ns)", run_ctypes_libpcap),
    ]
    for module, name, fn in optional:
        try:
            __import__(module)
        except ImportError:
            print(f"{name}: not importable, skipped (see --site)")
        else:
            runs.append((name, fn))
    print(f"{args.packets} packets of 100 bytes per round, median of {args.rounds} rounds")
    for name, fn in runs:
        times = [fn(args.packets) / args.packets * 1e6 for _ in range(args.rounds)]
        print(f"{name:30} {statistics.median(times):6.2f} µs/packet"
              f"  (min {min(times):.2f}, max {max(times):.2f})")  # fmt: skip


if __name__ == "__main__":
    struct.calcsize("P") == 8 or sys.exit("64-bit CPython only")
    main()
