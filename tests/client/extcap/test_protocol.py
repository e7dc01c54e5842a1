"""``pcapd extcap`` as Wireshark runs it: separate processes, flags in, sentences out, a fifo.

Wireshark runs each executable in its extcap folder: the console script itself, or a link to
it under another name (the installation the README describes); both are run here. The
captures are real: a network namespace, packets sent in it, the fifo read by tshark, the
capture ended the two ways Wireshark ends one (SIGTERM, a closed fifo). Last, tshark drives
the whole exchange itself, through a link in its personal extcap folder.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from pcapd import __version__
from pcapd.cli import build_parser
from pcapd.client.extcap import protocol
from pcapd.errors import UsageError
from tests.netns import Netns, netns, send_udp

PCAPD = Path(sys.executable).with_name("pcapd")
WRAPPER = Path(__file__).resolve().parents[3] / "roles" / "wireshark" / "pcapd-extcap"
SENTENCE = re.compile(r"(extcap|interface|dlt|arg|value) ((?:\{[a-z]+=[^{}]*\})+)")
FIELD = re.compile(r"\{([a-z]+)=([^{}]*)\}")
EXPECTED_CALLS = {
    "pcapd-cf": ["--app", "--instances", "--process-type", "--device", "--snaplen", "--api",
                 "--cacert", "--insecure", "--log-file"],
    "pcapd-bosh": ["--deployment", "--groups", "--instance-ids", "--environment", "--device",
                   "--snaplen", "--api", "--cacert", "--insecure", "--log-file"],
    "pcapd-local": ["--netns", "--device", "--snaplen", "--log-file"],
}
REQUIRED = {"pcapd-cf": {"--app"}, "pcapd-bosh": {"--deployment", "--groups"},
            "pcapd-local": set()}


@pytest.fixture(scope="module")
def extcap_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wireshark personal configuration folder whose extcap folder links to pcapd."""
    config = tmp_path_factory.mktemp("wireshark")
    (config / "extcap").mkdir()
    (config / "extcap" / "pcapd-extcap").symlink_to(PCAPD)
    return config


@pytest.fixture(params=["console script", "link", "wrapper"])
def executable(request: pytest.FixtureRequest, extcap_folder: Path) -> Path:
    """pcapd as Wireshark may find it: itself, a link to it, roles/wireshark/pcapd-extcap."""
    return {"console script": PCAPD, "link": extcap_folder / "extcap" / "pcapd-extcap",
            "wrapper": WRAPPER}[request.param]


def call(executable: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {**(os.environ if env is None else env), "PCAPD": str(PCAPD)}  # for the wrapper
    return subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def sentences(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """Each line parsed by the extcap grammar; a line that does not parse fails the test."""
    parsed = []
    for line in stdout.splitlines():
        match = SENTENCE.fullmatch(line)
        assert match, f"not an extcap sentence: {line!r}"
        parsed.append((match[1], dict(FIELD.findall(match[2]))))
    return parsed


# --- what Wireshark asks -------------------------------------------------------------------

def test_interfaces_are_listed_with_pcapds_version(executable: Path) -> None:
    result = call(executable, "--extcap-interfaces", "--extcap-version=4.0")
    assert (result.returncode, result.stderr) == (0, "")
    parsed = sentences(result.stdout)
    assert parsed[0] == ("extcap", {"version": __version__})
    interfaces = {fields["value"]: fields["display"] for kind, fields in parsed[1:]
                  if kind == "interface"}
    assert list(interfaces) == ["pcapd-cf", "pcapd-bosh", "pcapd-local"]
    assert all(display.startswith("pcapd: ") for display in interfaces.values())


@pytest.mark.parametrize("interface", list(EXPECTED_CALLS))
def test_the_link_type_is_ethernet(executable: Path, interface: str) -> None:
    result = call(executable, "--extcap-dlts", "--extcap-interface", interface)
    assert (result.returncode, result.stderr) == (0, "")
    assert sentences(result.stdout) == [("dlt", {"number": "1", "name": "EN10MB",
                                                 "display": "Ethernet"})]


@pytest.mark.parametrize("interface", list(EXPECTED_CALLS))
def test_the_capture_dialog_offers_each_option(executable: Path, interface: str) -> None:
    result = call(executable, "--extcap-config", "--extcap-interface", interface)
    assert (result.returncode, result.stderr) == (0, "")
    args = [fields for kind, fields in sentences(result.stdout) if kind == "arg"]
    assert [a["number"] for a in args] == [str(n) for n in range(len(args))]
    assert [a["call"] for a in args] == EXPECTED_CALLS[interface]
    assert {a["call"] for a in args if a.get("required") == "true"} == REQUIRED[interface]
    for a in args:
        assert a["type"] in protocol.ARG_TYPES
        assert a["display"] and a["tooltip"]
        if "validation" in a:
            re.compile(a["validation"])
    defaults = {a["call"]: a.get("default") for a in args}
    assert defaults["--device"] == ("lo" if interface == "pcapd-local" else "eth0")


def test_a_capture_filter_is_checked_by_libpcap(executable: Path) -> None:
    ok = call(executable, "--extcap-capture-filter", "udp port 53", "--extcap-interface",
              "pcapd-cf")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")  # no output: valid
    bad = call(executable, "--extcap-capture-filter", "udp port x53", "--extcap-interface",
               "pcapd-cf")
    assert bad.returncode == 0
    assert len(bad.stdout.splitlines()) == 1  # Wireshark shows this line as the reason
    assert "x53" in bad.stdout and "invalid BPF filter" in bad.stdout


@pytest.mark.parametrize(("args", "words"), [
    (["--extcap-config", "--extcap-interface", "pcapd-nope"], "pcapd-nope"),
    (["--capture", "--extcap-interface", "pcapd-cf", "--fifo", "/nonexistent/f"], "--app"),
    (["--capture", "--extcap-interface", "pcapd-local"], "--fifo"),
    (["--capture", "--extcap-interface", "pcapd-local", "--fifo", "f", "--app", "x"],
     "--app is not an option of pcapd-local"),
    (["--extcap-version"], None),
])
def test_misuse_is_one_line(args: list[str], words: str | None) -> None:
    result = call(PCAPD, *args)
    if words is None:
        assert result.returncode == 0
        assert sentences(result.stdout) == [("extcap", {"version": __version__})]
        return
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pcapd: error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr


# --- a capture call is `pcapd capture ... -w FIFO` -----------------------------------------

def parsed(*argv: str) -> argparse.Namespace:
    if argv[0] == "extcap":  # as main() does
        argv = ("extcap", *protocol.joined_values(list(argv[1:])))
    return build_parser().parse_args(list(argv))


def translated(*extcap_argv: str) -> argparse.Namespace:
    """Wireshark's call (the --capture line) → the `pcapd capture` command it runs."""
    command = protocol.capture_command(parsed("extcap", *extcap_argv))
    assert command[0] == "capture"
    return parsed(*command)


def same(a: argparse.Namespace, b: argparse.Namespace) -> None:
    ignore = ("handler", "_given")  # how a flag was spelled does not matter
    assert {k: v for k, v in vars(a).items() if k not in ignore} == \
           {k: v for k, v in vars(b).items() if k not in ignore}


def test_local_capture_call_is_capture_local() -> None:
    same(translated("--capture", "--extcap-interface", "pcapd-local", "--extcap-capture-filter",
                    "udp port 53", "--fifo", "/tmp/fifo", "--netns", "a, b", "--snaplen", "96"),
         parsed("capture", "local", "--netns", "a", "--netns", "b", "-i", "lo", "-s", "96",
                "-f", "udp port 53", "-w", "/tmp/fifo", "-q"))


def test_cf_capture_call_is_capture_cf() -> None:
    same(translated("--capture", "--extcap-interface", "pcapd-cf", "--fifo", "/tmp/fifo",
                    "--app", "-odd-name", "--instances", "0, 2", "--process-type", "worker",
                    "--api", "https://pcap.sys.example.com", "--cacert", "/ca.pem",
                    "--insecure"),
         parsed("capture", "cf", "--instance", "0", "--instance", "2", "--process-type",
                "worker", "-w", "/tmp/fifo", "-q", "--api", "https://pcap.sys.example.com",
                "--cacert", "/ca.pem", "-k", "--", "-odd-name"))


def test_cf_defaults_are_the_dialogs() -> None:
    same(translated("--capture", "--extcap-interface", "pcapd-cf", "--fifo", "F", "--app", "a"),
         parsed("capture", "cf", "a", "-w", "F", "-q"))


def test_bosh_capture_call_is_capture_bosh() -> None:
    same(translated("--capture", "--extcap-interface", "pcapd-bosh", "--fifo", "F",
                    "--extcap-capture-filter", "tcp", "--deployment", "cf", "--groups",
                    "router,diego-cell", "--instance-ids", "id-1 id-2", "--environment", "prod",
                    "--device", "eth1", "--api", "https://pcap.example.com"),
         parsed("capture", "bosh", "-d", "cf", "-g", "router", "-g", "diego-cell", "-e", "prod",
                "-i", "eth1", "-f", "tcp", "-w", "F", "-q", "--api", "https://pcap.example.com",
                "--instance", "id-1", "--instance", "id-2"))


def test_instance_indices_must_be_numbers() -> None:
    with pytest.raises(UsageError, match="--instances"):
        protocol.capture_command(parsed("extcap", "--capture", "--extcap-interface", "pcapd-cf",
                                      "--fifo", "F", "--app", "a", "--instances", "0,web"))


def test_the_pure_part_never_imports_trio() -> None:
    code = "import sys, pcapd.client.extcap.protocol, pcapd.cli; print('trio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"


def test_a_capture_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    """No cf login: the one line Wireshark shows; the log file has the command and the line."""
    env = {**os.environ, "HOME": str(tmp_path), "CF_HOME": str(tmp_path)}
    env.pop("PCAPD_API", None)
    log = tmp_path / "extcap.log"
    result = call(PCAPD, "--capture", "--extcap-interface", "pcapd-cf", "--fifo",
                  str(tmp_path / "fifo"), "--app", "my-app", "--log-file", str(log), env=env)
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("pcapd: error: ") and result.stderr.count("\n") == 1
    assert "cf login" in result.stderr
    lines = log.read_text().splitlines()
    assert "pcapd capture cf" in lines[0] and "-- my-app" in lines[0]
    assert lines[-1] == result.stderr.strip()


def wireshark_run(fifo: Path) -> str:
    """One capture that fails after it opened the fifo (no such device), read as Wireshark
    reads it: the fifo to its end, then the extcap is done with at once (SIGKILL, as Wireshark
    stops reading it); what had reached stderr by then is what Wireshark can show."""
    process = subprocess.Popen(
        [str(PCAPD), "--capture", "--extcap-interface", "pcapd-local", "--fifo", str(fifo),
         "--device", "pcapd-nosuch0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with open(fifo, "rb") as reader:  # blocks until pcapd opens its end
            while reader.read(65536):
                pass
        process.kill()
        assert process.stderr is not None
        return process.stderr.read().decode()
    finally:
        process.kill()
        process.wait()


@pytest.mark.root
def test_the_reason_of_a_failed_capture_reaches_wireshark_every_time(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    lost = [text for text in (wireshark_run(fifo) for _ in range(40))
            if "pcapd-nosuch0" not in text]
    assert lost == [], f"{len(lost)} of 40 runs lost the reason"


@pytest.mark.tools
def test_tshark_finds_the_interfaces_and_their_options(extcap_folder: Path) -> None:
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(extcap_folder)}
    listing = call(Path("tshark"), "-D", env=env)
    assert listing.returncode == 0, listing.stderr
    for value, display in [("pcapd-cf", "pcapd: Cloud Foundry app"),
                           ("pcapd-local", "pcapd: this machine (network namespaces)")]:
        assert f"{value} ({display})" in listing.stdout
    prefs = call(Path("tshark"), "-G", "currentprefs", env=env).stdout
    # the preference names the README gives for tshark -o
    for name in ("extcap.pcapd_cf.app", "extcap.pcapd_cf.processtype",
                 "extcap.pcapd_bosh.instanceids", "extcap.pcapd_local.netns"):
        assert f"#{name}:" in prefs


# --- real captures (root: network namespaces, packet sockets) ------------------------------

@dataclass
class Reader:
    """A process whose stdout lines are collected as they arrive."""

    process: trio.Process
    lines: list[str] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    changed: trio.Event = field(default_factory=trio.Event)

    def rows(self, port: int) -> list[list[str]]:
        return [row for row in (line.split("\t") for line in self.lines)
                if len(row) > 1 and row[1] == str(port)]

    async def wait_rows(self, port: int, count: int) -> None:
        while len(self.rows(port)) < count:
            await self.changed.wait()


async def _pump(stream: trio.abc.ReceiveStream, reader: Reader) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        reader.lines.extend(line.decode() for line in complete)
        reader.changed.set()
        reader.changed = trio.Event()
    reader.changed.set()


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk


@asynccontextmanager
async def reading(argv: list[str], env: dict[str, str] | None = None) -> AsyncIterator[Reader]:
    """``argv`` (a tshark) as a child process; killed on exit if it still runs."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, env=env)
        reader = Reader(process)
        assert process.stdout is not None and process.stderr is not None
        nursery.start_soon(_pump, process.stdout, reader)
        nursery.start_soon(_collect, process.stderr, reader.stderr)
        try:
            yield reader
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


FIELDS = ["-T", "fields", "-e", "frame.interface_name", "-e", "udp.dstport", "-e", "data.data"]
PROBE, MARKED = 9998, 9999


def extcap_capture(ns: Netns, fifo: Path, log: Path) -> list[str]:
    """The call Wireshark makes for pcapd-local with the namespace filled in, via the link."""
    return [str(PCAPD), "--capture", "--extcap-interface", "pcapd-local",
            "--extcap-capture-filter", "udp", "--fifo", str(fifo), "--netns", ns.name,
            "--device", "lo", "--log-file", str(log)]


async def probe_until(ns: Netns, done: trio.Event) -> None:
    """One datagram every 50 ms until ``done``: shows when the capture runs."""
    while not done.is_set():
        await send_udp(ns, "127.0.0.1", PROBE, 1, size=64, marker=b"probe")
        await trio.sleep(0.05)


@pytest.fixture
def namespace() -> Iterator[Netns]:
    with netns() as ns:
        yield ns


def graceful_end(log: Path) -> str:
    """The summary line pcapd writes once the api's end arrived: the capture ended complete."""
    lines = log.read_text().splitlines()
    assert lines and " packets written to " in lines[-1], log.read_text()
    return lines[-1]


@pytest.mark.root
@pytest.mark.tools
async def test_wireshark_stops_the_capture_with_sigterm(namespace: Netns, tmp_path: Path) -> None:
    fifo, log = tmp_path / "fifo", tmp_path / "extcap.log"
    os.mkfifo(fifo)
    with trio.fail_after(60):
        async with reading(["tshark", "-r", str(fifo), "-l", *FIELDS]) as tshark, \
                trio.open_nursery() as nursery:
            pcapd = await trio.lowlevel.open_process(extcap_capture(namespace, fifo, log),
                                                     stderr=subprocess.PIPE)
            seen = trio.Event()
            nursery.start_soon(probe_until, namespace, seen)
            await tshark.wait_rows(PROBE, 1)  # the capture runs
            seen.set()
            await send_udp(namespace, "127.0.0.1", MARKED, 20, marker=b"marked")
            await tshark.wait_rows(MARKED, 20)
            pcapd.send_signal(signal.SIGTERM)
            with trio.fail_after(10):  # promptly: Wireshark sends SIGKILL after 30 s
                assert await pcapd.wait() == 0
            assert pcapd.stderr is not None
            assert await pcapd.stderr.receive_some() == b""  # nothing for Wireshark to show
            assert await tshark.process.wait() == 0  # the fifo ended, the file was whole
    rows = tshark.rows(MARKED)
    assert {row[0] for row in rows} == {f"{namespace.name}:lo"}
    seqs = [int(row[2][len(b"marked".hex()):][:8], 16) for row in rows]
    assert seqs == list(range(20))
    assert "stopped" in graceful_end(log)


@pytest.mark.root
@pytest.mark.tools
async def test_a_closed_fifo_ends_the_capture(namespace: Netns, tmp_path: Path) -> None:
    fifo, log = tmp_path / "fifo", tmp_path / "extcap.log"
    os.mkfifo(fifo)
    with trio.fail_after(60):
        async with reading(["tshark", "-r", str(fifo), "-l", "-c", "5", *FIELDS]) as tshark, \
                trio.open_nursery() as nursery:
            pcapd = await trio.lowlevel.open_process(extcap_capture(namespace, fifo, log),
                                                     stderr=subprocess.PIPE)
            done = trio.Event()
            nursery.start_soon(probe_until, namespace, done)
            assert await tshark.process.wait() == 0  # read 5 packets, closed the fifo
            with trio.fail_after(10):  # the next write finds the pipe broken
                assert await pcapd.wait() == 0
            done.set()
            assert pcapd.stderr is not None
            assert await pcapd.stderr.receive_some() == b""
    assert len(tshark.rows(PROBE)) == 5
    assert "the reader closed the pipe" in log.read_text()
    graceful_end(log)


@pytest.mark.root
@pytest.mark.tools
async def test_tshark_runs_the_extcap_itself(namespace: Netns, extcap_folder: Path,
                                             tmp_path: Path) -> None:
    """tshark lists, configures, starts (fifo) and stops (SIGTERM after -c) pcapd-local."""
    log = tmp_path / "extcap.log"
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(extcap_folder)}
    argv = ["tshark", "-i", "pcapd-local", "-o", f"extcap.pcapd_local.netns:{namespace.name}",
            "-o", f"extcap.pcapd_local.logfile:{log}", "-f", f"udp port {PROBE}", "-c", "5",
            *FIELDS]
    with trio.fail_after(60):
        async with reading(argv, env=env) as tshark, trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(probe_until, namespace, done)
            assert await tshark.process.wait() == 0, tshark.stderr.decode()
            done.set()
    assert [row[0] for row in tshark.rows(PROBE)] == [f"{namespace.name}:lo"] * 5
    assert b"Error by extcap pipe" not in tshark.stderr, tshark.stderr.decode()
    assert f"--filter=udp port {PROBE}" in log.read_text().splitlines()[0]
    graceful_end(log)  # tshark waited for it: SIGTERM, then the drain


def test_apps_instances_and_devices_are_reloadable_selectors() -> None:
    lines = protocol.config_sentences(protocol.CF)
    parsed = sentences("\n".join(lines))
    args = {fields["call"]: fields for kind, fields in parsed if kind == "arg"}
    for call in ("--app", "--instances", "--device"):
        assert args[call]["type"] == "selector" and args[call]["reload"] == "true"
    device = args["--device"]["number"]
    shown = [(f["value"], f.get("default")) for kind, f in parsed
             if kind == "value" and f["arg"] == device]
    assert shown == [("eth0", "true"), ("lo", None)]
    assert protocol.reloadable(protocol.CF, "app") is protocol.CF.arg("app")
    assert protocol.reloadable(protocol.CF, "--instances") is protocol.CF.arg("instances")
    with pytest.raises(UsageError, match="reloads --app, --instances, --device"):
        protocol.reloadable(protocol.CF, "--process-type")
