"""Highest zero-loss capture rate of ``pcapd capture local`` next to ``tcpdump -w`` (root only).

Two network namespaces made for the run (``pcapd-bench-<pid>-tx`` and ``-rx``) are joined by a
veth pair addressed 198.19.255.1/30 → 198.19.255.2/30 (the benchmarking range, static
neighbour entries, no ARP). A C generator (``bench/flood.c``, compiled with ``gcc -O2`` into a
temporary directory) sends N UDP datagrams of 100-byte frames from the tx namespace with
``sendmmsg`` at a paced rate; each carries a run marker and its sequence number 0..N-1. For
each rate step, tcpdump and pcapd (alternating which goes first) capture the same generator
settings on the rx end of the veth, one after the other:

- ``ip netns exec RX tcpdump -i DEV -w FILE -B 32768 "udp and dst port P"``;
- ``pcapd capture local --netns RX -i DEV -f "udp and dst port P" -w FILE``.

Each capture is started and waited for (tcpdump's "listening on"; pcapd's Interface
Description Block in the file), the generator runs, the script waits ``SETTLE`` seconds (so
tcpdump's 1 s buffer timeout hands over the last ring block), then sends SIGINT and waits for the
capture to exit. Loss is counted from the file: every sequence number must be there (pcapd's
own decoders read both files). Beside it: the tool's own drop counts (tcpdump's "dropped by
kernel"; pcapd's kernel / agent / api drops from its summary line) and its CPU time per packet
while the traffic ran (user + system of all its threads, from /proc, 10 ms resolution), and per
rate the ratio of the two, pcapd's over tcpdump's (the step's repeats pooled), in the table and
again after it: issue #16's target for ``capture local`` is ≤ 4×, in one run.

"Highest zero-loss rate" is the achieved generator rate of the highest step below which no step
lost anything (in any repeat). The generator's achieved rate is what counts, not the target.

Usage::

    sudo .venv/bin/python bench/capture_bench.py [--rates 25k,50k,...,max] [--seconds 3]
                                                [--repeat 2] [--tmpdir DIR]

Everything made (namespaces, veth, files) is deleted on exit, also on Ctrl-C. A default run
takes three to four minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout: tests/ is a package

from pcapd.client.output import partial_path  # noqa: E402
from pcapd.pcapng import IDB, PcapDecoder, PcapngDecoder, sniff_format  # noqa: E402
from tests.netns import ip  # noqa: E402  (the tests' iproute2 runner)

PCAPD = Path(sys.executable).parent / "pcapd"
TEST_NET = ipaddress.ip_network("198.18.0.0/15")
TX_IP, RX_IP, PREFIX_LEN = "198.19.255.1", "198.19.255.2", 30
PORT = 40111
BPF = f"udp and dst port {PORT}"
PAYLOAD = 58
"""UDP payload bytes: 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 58 = 100-byte frames."""
SEQ_OFFSET = 28 + 14 + 20 + 8
"""Where the marker and sequence number sit in an Enhanced Packet Block (28-byte header)."""
MARKER_SEQ = struct.Struct(">II")
BATCH = 64
MIN_PACKETS = 50_000
MAX_RATE_GUESS = 600_000
"""Packets per second assumed for the unpaced step, to size N (about the generator's ceiling)."""
SETTLE = 1.5
"""Seconds between the generator's end and SIGINT: longer than tcpdump's 1 s buffer timeout."""
START_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0
DEFAULT_RATES = "25k,50k,75k,100k,150k,200k,250k,400k,max"


# -- setup: namespaces, veth, generator ---------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    tx: str
    rx: str
    tx_dev: str
    rx_dev: str


def _mac(ns: str, dev: str) -> str:
    return str(json.loads(ip("-n", ns, "-j", "link", "show", "dev", dev))[0]["address"])


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """tx and rx namespaces joined by a veth pair, addressed and up; all deleted on exit."""
    pid = os.getpid()
    topo = Topology(f"pcapd-bench-{pid}-tx", f"pcapd-bench-{pid}-rx", f"pcb{pid}t", f"pcb{pid}r")
    made: list[str] = []
    try:
        for ns in (topo.tx, topo.rx):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", topo.tx_dev, "netns", topo.tx, "type", "veth",
           "peer", "name", topo.rx_dev, "netns", topo.rx)
        for ns, dev, addr in ((topo.tx, topo.tx_dev, TX_IP), (topo.rx, topo.rx_dev, RX_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", topo.tx, "neigh", "replace", RX_IP, "lladdr", _mac(topo.rx, topo.rx_dev),
           "dev", topo.tx_dev, "nud", "permanent")
        ip("-n", topo.rx, "neigh", "replace", TX_IP, "lladdr", _mac(topo.tx, topo.tx_dev),
           "dev", topo.rx_dev, "nud", "permanent")
        _wait_up(topo)
        yield topo
    finally:
        if made:
            ip("-n", topo.tx, "link", "del", topo.tx_dev, check=False)
        for ns in reversed(made):
            ip("netns", "del", ns, check=False)


def _wait_up(topo: Topology) -> None:
    """Bounded poll: carrier comes up asynchronously and there is no event to wait on."""
    deadline = time.monotonic() + 5
    for ns, dev in ((topo.tx, topo.tx_dev), (topo.rx, topo.rx_dev)):
        while json.loads(ip("-n", ns, "-j", "link", "show", "dev", dev))[0]["operstate"] != "UP":
            if time.monotonic() > deadline:
                raise RuntimeError(f"veth {dev} in {ns} did not come up")
            time.sleep(0.01)


def build_generator(workdir: Path) -> Path:
    binary = workdir / "flood"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "flood.c")], check=True)
    return binary


@dataclass(frozen=True)
class Sent:
    packets: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


def send(topo: Topology, generator: Path, count: int, rate: int, marker: int,
         dst: str = RX_IP) -> Sent:
    """Run the generator in the tx namespace: ``count`` datagrams at ``rate`` (0: unpaced)
    to ``dst`` (default: the rx end of the veth)."""
    if ipaddress.ip_address(dst) not in TEST_NET:  # never anything but the benchmarking range
        raise ValueError(f"refusing to send to {dst}: not in {TEST_NET}")
    argv = ["ip", "netns", "exec", topo.tx, str(generator), dst, str(PORT), str(count),
            str(rate), str(PAYLOAD), str(marker), str(BATCH)]
    budget = 30 + 3 * count / (rate or 100_000)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=budget, check=True)
    match = re.search(r"sent (\d+) in ([\d.]+) s", done.stdout)
    if match is None:
        raise RuntimeError(f"generator said {done.stdout!r} {done.stderr!r}")
    return Sent(int(match[1]), float(match[2]))


# -- the captures under test ----------------------------------------------------------------


@dataclass
class Captured:
    """What one capture run saw: from the file, and from the tool's own report."""

    received: int = 0
    """Packets of this run in the file (duplicates included)."""
    lost: int = 0
    """Sequence numbers 0..N-1 missing from the file."""
    tool_dropped: int | None = None
    """The tool's own drop count (kernel, plus pcapd's agent and api); None if not reported."""
    detail: str = ""
    cpu_seconds: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CaptureProcess:
    """A capture tool run as a child process, its stderr collected by a thread."""

    name = ""

    def __init__(self, topo: Topology, path: Path) -> None:
        self.topo = topo
        self.path = path
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def report(self, result: Captured) -> None:
        """Fill in the tool's own counts from its stderr."""
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():  # bounded poll: neither tool signals readiness otherwise
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early: {' | '.join(self.lines)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT}s")
            time.sleep(0.02)

    def _collect(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """SIGINT, and wait for a graceful exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not stop within {STOP_TIMEOUT}s") from None
        assert self._reader is not None
        self._reader.join(5)
        if code != 0:
            raise RuntimeError(f"{self.name} exited {code}: {' | '.join(self.lines[-5:])}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Tcpdump(CaptureProcess):
    name = "tcpdump"

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.topo.rx, "tcpdump", "-n", "-i", self.topo.rx_dev,
                "-w", str(self.path), "-B", "32768", BPF]

    def ready(self) -> bool:
        return any("listening on" in line for line in self.lines)

    def report(self, result: Captured) -> None:
        text = "\n".join(self.lines)
        match = re.search(r"(\d+) packets dropped by kernel", text)
        result.tool_dropped = int(match[1]) if match else None
        result.detail = f"kernel {result.tool_dropped}"


class Pcapd(CaptureProcess):
    name = "pcapd"

    def argv(self) -> list[str]:
        return [str(PCAPD), "capture", "local", "--netns", self.topo.rx, "-i", self.topo.rx_dev,
                "-f", BPF, "-w", str(self.path)]

    def ready(self) -> bool:
        """Started once the Interface Description Block is in the file (the handle is open).
        The CLI writes ``.NAME.partial`` and renames it at the end (pcapd.client.output)."""
        try:
            data = partial_path(self.path).read_bytes()
        except FileNotFoundError:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return False
        decoder = PcapngDecoder()
        decoder.receive_data(data)
        with contextlib.suppress(Exception):  # a half-written block: not yet
            while (raw := decoder.next_raw()) is not None:
                if raw.block_type == IDB:
                    return True
        return False

    def report(self, result: Captured) -> None:
        pattern = r"dropped (\d+) \(kernel (\d+), agent (\d+), api (\d+)\)"
        match = re.search(pattern, "\n".join(self.lines))
        if match is None:
            result.detail = "no summary"
            return
        result.tool_dropped = int(match[1])
        result.detail = f"kernel {match[2]}, agent {match[3]}, api {match[4]}"


def count_file(path: Path, marker: int, count: int) -> Captured:
    """Packets of run ``marker`` in a pcap or pcapng file, and how many of 0..count-1 are missing.

    Both formats come out of pcapd's decoders as Enhanced Packet Blocks, so the marker and
    sequence number sit at the same offset in either.
    """
    seen = bytearray(count)
    received = 0
    unpack = MARKER_SEQ.unpack_from
    with path.open("rb") as f:
        first = f.read(4)
        pcapng = sniff_format(first) == "pcapng"
        decoder: PcapngDecoder | PcapDecoder = PcapngDecoder() if pcapng else PcapDecoder()
        decoder.receive_data(first)
        while True:
            chunk = f.read(4 * 1024 * 1024)
            decoder.receive_data(chunk)
            while True:
                if isinstance(decoder, PcapngDecoder):
                    blocks = decoder.next_packets().blocks
                    more = blocks or decoder.next_raw() is not None
                else:
                    blocks = decoder.next_packets(0).blocks
                    more = blocks or decoder.next_record() is not None
                for block in blocks:
                    if len(block) >= SEQ_OFFSET + 8:
                        tag, seq = unpack(block, SEQ_OFFSET)
                        if tag == marker and seq < count:
                            seen[seq] = 1
                            received += 1
                if not more:
                    break
            if not chunk:
                break
    return Captured(received=received, lost=count - seen.count(1))


def capture_once(tool: type[CaptureProcess], topo: Topology, generator: Path, workdir: Path,
                 count: int, rate: int) -> tuple[Sent, Captured]:
    """One capture by ``tool`` of one generator run; the file is deleted afterwards."""
    marker = secrets.randbits(32)
    path = workdir / f"{tool.name}-{marker:08x}.{'pcap' if tool is Tcpdump else 'pcapng'}"
    capture = tool(topo, path)
    try:
        capture.start()
        cpu_before = capture.cpu_seconds()
        sent = send(topo, generator, count, rate, marker)
        time.sleep(SETTLE)
        cpu = capture.cpu_seconds() - cpu_before
        capture.stop()
    finally:
        capture.kill()
    try:
        result = count_file(path, marker, count)
    finally:
        path.unlink(missing_ok=True)
    capture.report(result)
    result.cpu_seconds = cpu
    return sent, result


# -- steps, table, summary --------------------------------------------------------------------


TOOLS: list[type[CaptureProcess]] = [Tcpdump, Pcapd]


@dataclass
class Step:
    target: int
    """Packets per second asked of the generator; 0: unpaced."""
    count: int
    runs: dict[str, list[tuple[Sent, Captured]]] = field(default_factory=dict)

    def lossless(self, tool: str) -> bool:
        return all(c.lost == 0 and not c.tool_dropped for _, c in self.runs.get(tool, []))

    def achieved(self, tool: str) -> float:
        """The lowest achieved rate of the tool's runs at this step (the claim it supports)."""
        return min(s.pps for s, _ in self.runs[tool])


def parse_rate(text: str) -> int:
    text = text.strip().lower()
    if text in ("max", "0"):
        return 0
    scale = 1000 if text.endswith("k") else 1
    rate = int(float(text.rstrip("k")) * scale)
    if rate < 0:
        raise ValueError(f"negative rate {text}")
    return rate


def highest_lossless(steps: list[Step], tool: str) -> float:
    """Achieved rate of the highest step with no loss at it or at any step below it."""
    best = 0.0
    for step in steps:  # in rising order, unpaced last
        if not step.lossless(tool):
            break
        best = max(best, step.achieved(tool))
    return best


def cpu_per_packet(runs: list[tuple[Sent, Captured]]) -> float:
    """CPU seconds per packet received over ``runs`` (all repeats of a step, pooled)."""
    return sum(c.cpu_seconds for _, c in runs) / max(sum(c.received for _, c in runs), 1)


def cpu_ratio(step: Step, tool: str = "pcapd", reference: str = "tcpdump") -> float:
    """``tool``'s CPU per packet over ``reference``'s at this step, in the same run (the issue
    #16 targets are such ratios: ≤ 4× for ``capture local``); NaN without both."""
    if not step.runs.get(tool) or not step.runs.get(reference):
        return float("nan")
    theirs = cpu_per_packet(step.runs[reference])
    return cpu_per_packet(step.runs[tool]) / theirs if theirs else float("nan")


def rate_label(target: int) -> str:
    return "max" if target == 0 else f"{target // 1000}k"


def _cell(sent: Sent, c: Captured) -> str:
    us = c.cpu_seconds / max(c.received, 1) * 1e6
    return (f"{sent.pps / 1000:7.1f}k {c.lost:>7} / {c.received:<7} "
            f"{us:5.2f} µs  {c.detail}")


def print_row(step: Step) -> None:
    repeats = max(len(step.runs.get(t.name, [])) for t in TOOLS)
    for i in range(repeats):
        cells = []
        for tool in TOOLS:
            runs = step.runs.get(tool.name, [])
            cells.append(_cell(*runs[i]) if i < len(runs) else "")
        label = rate_label(step.target) if i == 0 else ""
        ratio = f"{cpu_ratio(step):5.1f}×" if i == 0 else ""
        line = f"{label:>6} {step.count:>8}  {cells[0]:<58} {cells[1]:<66} {ratio}"
        print(line.rstrip(), flush=True)


def print_header() -> None:
    head = "achieved  lost / received  cpu/pkt  tool's own drops"
    print(f"{'target':>6} {'N':>8}  {'tcpdump: ' + head:<58} {'pcapd: ' + head:<66} "
          "cpu pcapd/tcpdump (the step's repeats pooled)")


def print_cpu_ratios(steps: list[Step]) -> None:
    """The same run's CPU ratios, one per rate: what issue #16's target (≤ 4×) is about."""
    ratios = ", ".join(f"{rate_label(step.target)} {cpu_ratio(step):.1f}×" for step in steps)
    print(f"CPU per packet, pcapd capture local / tcpdump -w: {ratios} (target ≤ 4×)")


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return " ".join((done.stdout + done.stderr).split("\n")[:2]).strip()


def print_machine() -> None:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}")
    print(f"kernel:  {platform.system()} {platform.release()}")
    print(f"python:  {platform.python_implementation()} {platform.python_version()}")
    print(f"tcpdump: {_first_line(['tcpdump', '--version'])}")
    print(f"pcapd:   {_first_line([str(PCAPD), 'version'])}, {_revision()}")
    print(f"load:    {_load()} (other work on the machine skews the figures)")


def _revision() -> str:
    """The commit the measured pcapd comes from, and whether pcapd/ differs from it."""
    repo = HERE.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "pcapd"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "git revision unknown"
    return f"git {head.strip()}" + (" + uncommitted changes in pcapd/" if dirty.strip() else "")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def run(args: argparse.Namespace, rates: list[int]) -> int:
    print_machine()
    print(f"frames:  {14 + 20 + 8 + PAYLOAD} bytes on the wire, sendmmsg batches of {BATCH}, "
          f"{args.seconds:g} s per step (N >= {MIN_PACKETS}), repeat {args.repeat}, "
          f"settle {SETTLE:g} s")
    print(f"filter:  {BPF!r}; tcpdump -B 32768 -w FILE; pcapd capture local --netns RX -w FILE")
    print()
    steps = [Step(rate, max(MIN_PACKETS, round((rate or MAX_RATE_GUESS) * args.seconds)))
             for rate in rates]
    with tempfile.TemporaryDirectory(prefix="pcapd-bench-", dir=args.tmpdir) as tmp, \
            topology() as topo:
        workdir = Path(tmp)
        generator = build_generator(workdir)
        print(f"veth {topo.tx}:{topo.tx_dev} {TX_IP} → {topo.rx}:{topo.rx_dev} {RX_IP}")
        print_header()
        for i, step in enumerate(steps):
            for r in range(args.repeat):
                order = TOOLS if (i + r) % 2 == 0 else TOOLS[::-1]
                for tool in order:
                    outcome = capture_once(tool, topo, generator, workdir, step.count,
                                           step.target)
                    step.runs.setdefault(tool.name, []).append(outcome)
            print_row(step)
    print(f"\n{_load()} at the end")
    print_cpu_ratios(steps)
    best = {tool.name: highest_lossless(steps, tool.name) for tool in TOOLS}
    ratio = best["pcapd"] / best["tcpdump"] if best["tcpdump"] else float("nan")
    print(f"highest zero-loss rate: tcpdump {best['tcpdump']:,.0f} pps, "
          f"pcapd {best['pcapd']:,.0f} pps, ratio {ratio:.2f}")
    for tool in TOOLS:
        if steps[-1].lossless(tool.name):
            print(f"note: {tool.name} lost nothing even at the highest step: its limit lies "
                  f"above, so its figure is a lower bound")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default=DEFAULT_RATES,
                        help=f"comma-separated packets/s, 'k' = 1000, 'max' = unpaced "
                             f"(default {DEFAULT_RATES})")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="seconds of traffic per step (default 3)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per step and tool; a step is lossless only if all are "
                             "(default 2)")
    parser.add_argument("--tmpdir", metavar="DIR", default=None,
                        help="where the capture files go while counted (default: system temp)")
    parser.add_argument("--skip-if-not-root", action="store_true",
                        help="without root, say so and exit 0 (as tox -e bench does)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds above 0")
    try:
        rates = sorted({parse_rate(r) for r in args.rates.split(",") if r.strip()},
                       key=lambda rate: rate or sys.maxsize)  # unpaced last
        if not rates:
            raise ValueError("no rate given")
    except ValueError as exc:
        parser.error(f"--rates {args.rates!r}: {exc}")
    if os.geteuid() != 0:
        print(f"capture_bench: {'skipped: it ' if args.skip_if_not_root else ''}needs root "
              "(network namespaces, capture): run it as root, e.g. sudo .venv/bin/python "
              "bench/capture_bench.py", file=sys.stderr)
        return 0 if args.skip_if_not_root else 2
    for tool in ("gcc", "tcpdump", "ip"):
        if shutil.which(tool) is None:
            print(f"capture_bench: {tool} not found", file=sys.stderr)
            return 2

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same cleanup path as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    try:
        return run(args, rates)
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and files removed", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"\ncapture_bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
