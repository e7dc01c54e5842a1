"""Where ``pcapd capture local``'s CPU goes at a steady packet rate (root only).

The capture bench's topology and generator (``bench/capture_bench.py``: two namespaces joined by
a veth, 100-byte UDP frames sent with ``sendmmsg`` at a paced rate). ``pcapd capture local``
runs as a child under ``cProfile`` (its Trio thread's CPU while the traffic runs: the agent, the
api and the client share that thread) while ``tcpdump -w`` captures the same traffic beside it,
so the ratio comes from one run. Prints:

- CPU per packet of pcapd (all threads, from /proc) and of tcpdump, and their ratio;
- pcapd's CPU by thread (the Trio thread against the worker threads that write the file and
  run the compiled capture's reads);
- the Trio thread's functions by own time (cProfile's ``tottime``), grouped by the module they
  live in, then the top functions — with the profiler's overhead, which inflates functions
  called per message more than per batch; compare shares, not absolute times.

Usage::

    sudo .venv/bin/python bench/profile_local.py [--rate 200k] [--seconds 6] [--top 25]

A plain script, not a timed test. Everything made (namespaces, veth, files) is deleted on exit.
"""

from __future__ import annotations

import argparse
import os
import pstats
import secrets
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from capture_bench import (  # noqa: E402
    BPF,
    Pcapd,
    Tcpdump,
    build_generator,
    count_file,
    cpu_seconds,
    parse_rate,
    send,
    topology,
)

CHILD = """\
import cProfile, signal, sys, time
from pcapd.cli import main
profile = cProfile.Profile(time.thread_time)  # CPU of the Trio thread, not time asleep in epoll
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, lambda *_: profile.disable())
code = 1
try:
    code = main(sys.argv[2:])
finally:
    profile.disable()
    profile.dump_stats(sys.argv[1])
sys.exit(code)
"""
"""The child: profiles its Trio thread's CPU from SIGUSR1 to SIGUSR2 (the traffic), not the
start and the stop."""


class ProfiledPcapd(Pcapd):
    """``pcapd capture local`` as the capture bench runs it, under cProfile."""

    name = "pcapd"
    profile = Path()

    def argv(self) -> list[str]:
        return [sys.executable, "-c", CHILD, str(self.profile), *super().argv()[1:]]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``, by thread name (summed per name)."""
    out: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out["Trio thread" if task.name == str(pid) else name] += _task_cpu(task)
        except FileNotFoundError:  # a worker thread that ended meanwhile
            continue
    return out


def _task_cpu(task: Path) -> float:
    """One thread's user + system CPU (``/proc/PID/stat`` would be the whole process's)."""
    stat = (task / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def module_of(filename: str) -> str:
    """A short name for where a profiled function lives."""
    if filename == "~":
        return "builtins (C)"
    path = Path(filename)
    parts = path.parts
    for anchor in ("pcapd", "trio", "wsproto", "h11", "msgspec", "ssl.py"):
        if anchor in parts:
            i = parts.index(anchor)
            return "/".join(parts[i:]).removesuffix(".py")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    return path.name


def report(profile: Path, top: int) -> None:
    stats = pstats.Stats(str(profile))
    total = 0.0
    by_module: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        by_module[module_of(filename)] += tottime
        rows.append((tottime, calls, f"{module_of(filename)}:{line} {func}"))
    print(f"\nthe Trio thread under cProfile: {total:.2f} s of own time")
    print("by module:")
    for name, seconds in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * seconds / total:5.1f} %  {seconds:6.2f} s  {name}")
    print("top functions (own time):")
    for tottime, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"  {100 * tottime / total:5.1f} %  {tottime:6.2f} s  {calls:>9,} calls  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="200k", help="packets/s, 'k' = 1000 (default 200k)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of traffic")
    parser.add_argument("--top", type=int, default=25, help="rows of each table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    rate = parse_rate(args.rate)
    if rate == 0:
        parser.error("--rate: a paced rate, not 'max' (CPU per packet needs both tools to keep up)")
    count = round(rate * args.seconds)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {count:,} packets at "
          f"{rate:,}/s; filter {BPF!r}")
    with tempfile.TemporaryDirectory(prefix="pcapd-profile-") as tmp, topology() as topo:
        workdir = Path(tmp)
        generator = build_generator(workdir)
        marker = secrets.randbits(32)
        ProfiledPcapd.profile = workdir / "local.prof"
        pcapd = ProfiledPcapd(topo, workdir / "pcapd.pcapng")
        tcpdump = Tcpdump(topo, workdir / "tcpdump.pcap")
        try:
            pcapd.start()
            tcpdump.start()
            assert pcapd.proc is not None and tcpdump.proc is not None
            before = (cpu_seconds(pcapd.proc.pid), cpu_seconds(tcpdump.proc.pid),
                      thread_cpu(pcapd.proc.pid))
            pcapd.proc.send_signal(signal.SIGUSR1)
            sent = send(topo, generator, count, rate, marker)
            time.sleep(1.5)  # tcpdump's 1 s buffer timeout hands over its last block
            pcapd.proc.send_signal(signal.SIGUSR2)
            after = (cpu_seconds(pcapd.proc.pid), cpu_seconds(tcpdump.proc.pid),
                     thread_cpu(pcapd.proc.pid))
            for capture in (tcpdump, pcapd):
                capture.stop()
        finally:
            for capture in (tcpdump, pcapd):
                capture.kill()
        got = {name: count_file(path, marker, count)
               for name, path in (("pcapd", pcapd.path), ("tcpdump", tcpdump.path))}
        print(f"sent {sent.packets:,} in {sent.seconds:.2f} s ({sent.pps:,.0f}/s); lost: pcapd "
              f"{got['pcapd'].lost:,}, tcpdump {got['tcpdump'].lost:,}")
        per_packet = {name: (after[i] - before[i]) / sent.packets * 1e6
                      for i, name in enumerate(("pcapd", "tcpdump"))}
        print(f"CPU per packet: pcapd {per_packet['pcapd']:.2f} µs (under cProfile), tcpdump "
              f"{per_packet['tcpdump']:.2f} µs: ratio "
              f"{per_packet['pcapd'] / per_packet['tcpdump']:.1f} (without the profiler: "
              f"bench/capture_bench.py)")
        threads = {name: after[2].get(name, 0.0) - before[2].get(name, 0.0)
                   for name in after[2]}
        print("pcapd's CPU by thread: " + ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in sorted(threads.items(),
                                                                 key=lambda kv: -kv[1])))
        report(ProfiledPcapd.profile, args.top)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
