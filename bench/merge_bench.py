"""Offline merge throughput: ``pcapd merge`` against ``mergecap`` on the same files (not a test).

For each k (default 2, 8 and 32) it writes k pcapng files holding ``--packets`` packets in all
(default 2,000,000, the size issue #8 names) with pcapd's encoder: 60–100-byte packets on one
clock that advances 0–2 µs per packet, each packet going to a random input, as concurrent
captures interleave (the worst case for a merge: runs from one input are short); even-numbered
inputs have nanosecond interfaces, odd-numbered ones microsecond interfaces. It then times
``pcapd merge -w`` and ``mergecap -w`` on them as subprocesses (wall clock, start-up included,
best of ``--rounds``, the two tools taking turns), prints packets per second for both and the
ratio pcapd/mergecap, with each tool's best CPU time (user + system) and that ratio beside in
parentheses (on a machine shared with other work the CPU ratio moves less than the wall-clock
one), and decodes both outputs with pcapd's decoder to check that they hold the same packets in
the same order: every packet's timestamp in nanoseconds, original length and bytes. Exits 1 if
they differ, 2 if mergecap is missing. First it prints each tool's start-up cost: the best time
to merge a file of one packet. Usage::

    .venv/bin/python bench/merge_bench.py [--packets N] [--rounds N] [-k K ...] [--keep DIR]
    tox -e bench
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

from pcapd.pcapng import (
    PcapngDecoder,
    encode_enhanced_packet,
    encode_interface_description,
    encode_section_header,
    ticks_to_ns,
)

BASE_NS = 1_700_000_000 * 10**9
_LENGTHS = struct.Struct("<II")


def pcapd_command() -> list[str]:
    script = Path(sys.executable).with_name("pcapd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pcapd.cli"]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mergecap = subprocess.run(
        ["mergecap", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model};"
        f" load average {load}\n"
        f"python {platform.python_version()} ({platform.python_implementation()}),"
        f" {mergecap[0] if mergecap else 'mergecap: version unknown'}"
    )


def generate(directory: Path, k: int, packets: int, seed: int) -> list[Path]:
    """k pcapng inputs, ``packets`` packets in all, interleaved on one clock."""
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 16)
    paths = [directory / f"in{i:02d}.pcapng" for i in range(k)]
    files = [path.open("wb") for path in paths]
    buffers = [bytearray() for _ in range(k)]
    micro = [i % 2 == 1 for i in range(k)]
    for i in range(k):
        buffers[i] += encode_section_header(user_application="pcapd merge_bench")
        buffers[i] += encode_interface_description(
            link_type=1, snaplen=262144, name=f"bench{i}:eth0", tsresol=6 if micro[i] else 9
        )
    encode = encode_enhanced_packet
    ns = BASE_NS
    try:
        for _ in range(packets):
            ns += rng.randrange(2000)
            i = rng.randrange(k)
            size = rng.randrange(60, 101)
            offset = rng.randrange(len(pool) - size)
            ticks = ns // 1000 if micro[i] else ns
            buf = buffers[i]
            buf += encode(interface_id=0, timestamp=ticks, data=pool[offset : offset + size])
            if len(buf) > 1 << 22:
                files[i].write(buf)
                buf.clear()
        for fh, buf in zip(files, buffers, strict=True):
            fh.write(buf)
    finally:
        for fh in files:
            fh.close()
    return paths


def packets_of(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp in ns, original length, captured bytes) of every EPB, in file order."""
    decoder = PcapngDecoder()
    with path.open("rb") as fh:
        while True:
            data = fh.read(1 << 20)
            decoder.receive_data(data)
            while True:
                batch = decoder.next_packets()
                resolutions = [idb.tsresol for idb in decoder.interfaces]
                for block, ticks, interface in zip(*batch, strict=True):
                    caplen, original = _LENGTHS.unpack_from(block, 20)
                    ns = ticks_to_ns(ticks, resolutions[interface])
                    yield ns, original, block[28 : 28 + caplen]
                if decoder.next_raw() is None:
                    break
            if not data:
                return


def same_packets(ours: Path, theirs: Path) -> tuple[bool, int, str]:
    """Compare both files packet by packet; (same, packets compared, first difference)."""
    count = 0
    for count, (a, b) in enumerate(zip_longest(packets_of(ours), packets_of(theirs)), 1):
        if a != b:
            return False, count, f"packet {count}: pcapd {a!r:.120} / mergecap {b!r:.120}"
    return True, count, ""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of ``command``."""
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, _children_cpu() - cpu


def rate(packets: int, seconds: float) -> str:
    return f"{packets / seconds / 1e6:6.2f} M/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=2_000_000, help="packets over all inputs")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool; best counts")
    parser.add_argument("-k", type=int, nargs="+", default=[2, 8, 32], help="input counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="write the files here, keep them")
    parser.add_argument(
        "--fresh-output",
        action="store_true",
        help="remove each output before each run, so that both tools write a new file (by"
        " default later rounds replace the last output: pcapd renames over it, mergecap"
        " truncates it, and ext4 charges the two differently)",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run pcapd as the environment says (PYTHONDONTWRITEBYTECODE compiles every module"
        " on every run) instead of with its bytecode cached, as an installed pcapd has it",
    )
    args = parser.parse_args()
    if shutil.which("mergecap") is None:
        print("mergecap not found: install Wireshark's command-line tools (dev/setup)")
        return 2
    pcapd = pcapd_command()
    print(machine())
    print(f"pcapd: {' '.join(pcapd)}; {args.packets:,} packets, best of {args.rounds} runs")
    cache = tempfile.TemporaryDirectory(prefix="merge_bench.pyc.")  # removed at exit, at the latest
    env = None
    if not args.no_bytecode_cache:
        # An installed package has its modules compiled (pip writes the .pyc files); a dev
        # shell with PYTHONDONTWRITEBYTECODE=1 would compile them on every run (~20 ms). Cache
        # them outside the tree instead; the start-up runs below fill the cache.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache.name
        print(f"pcapd's bytecode cached in {cache.name} (--no-bytecode-cache: compile every run)")
    with tempfile.TemporaryDirectory(prefix="merge_bench.") as scratch:
        (one,) = generate(Path(scratch), 1, 1, args.seed)
        out = Path(scratch) / "out.pcapng"
        command = [*pcapd, "merge", "-F", "-w", str(out), str(one)]  # -F: over the last round's
        ours = min(timed(command, env)[0] for _ in range(5))
        theirs = min(timed(["mergecap", "-w", str(out), str(one)])[0] for _ in range(5))
    print(f"start-up (one packet): pcapd {ours * 1e3:.0f} ms, mergecap {theirs * 1e3:.0f} ms\n")
    print(
        f"{'k':>3}  {'pcapd merge (cpu)':>31}  {'mergecap (cpu)':>31}  {'pcapd/mergecap (cpu)':>20}"
        "  outputs"
    )
    failed = False
    for k in args.k:
        with tempfile.TemporaryDirectory(prefix="merge_bench.") as scratch:
            directory = args.keep / f"k{k}" if args.keep else Path(scratch)
            directory.mkdir(parents=True, exist_ok=True)
            inputs = [str(p) for p in generate(directory, k, args.packets, args.seed + k)]
            ours, theirs = directory / "pcapd.pcapng", directory / "mergecap.pcapng"
            pcapd_times, mergecap_times = [], []
            for _ in range(args.rounds):
                if args.fresh_output:
                    ours.unlink(missing_ok=True)
                    theirs.unlink(missing_ok=True)
                pcapd_times.append(timed([*pcapd, "merge", "-F", "-w", str(ours), *inputs], env))
                mergecap_times.append(timed(["mergecap", "-w", str(theirs), *inputs]))
            p, m = min(t for t, _ in pcapd_times), min(t for t, _ in mergecap_times)
            pc, mc = min(c for _, c in pcapd_times), min(c for _, c in mergecap_times)
            same, compared, difference = same_packets(ours, theirs)
            verdict = f"same ({compared:,} packets)" if same else f"DIFFER: {difference}"
            failed = failed or not same or compared != args.packets
            print(
                f"{k:>3}  {p:6.2f} s {rate(args.packets, p)} ({pc:5.2f} s)"
                f"  {m:6.2f} s {rate(args.packets, m)} ({mc:5.2f} s)"
                f"  {p and m / p:13.2f} ({pc and mc / pc:4.2f})  {verdict}",
                flush=True,
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load} at the end")
    cache.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
