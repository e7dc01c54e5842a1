"""``pcapd capture local`` end to end: real namespaces, real libpcap, real mTLS, tshark reads.

Each test runs pcapd as the user would (the console script, a child process), waits for the
capture to start by decoding its stdout as it arrives, makes traffic inside namespaces it
created, stops pcapd with SIGINT and reads the result with tshark and capinfos.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from tests.e2e.procs import streamed_capture
from tests.netns import Netns, netns, send_udp, tcp_exchange
from tests.readers import inversions, run_tool, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]

UDP_COUNT = 50
TCP_ROUNDS = 20
TCP_SIZE = 100
FIELDS = ("frame.interface_name", "frame.time_epoch", "frame.len", "frame.cap_len", "ip.proto",
          "tcp.len", "data.data", "tcp.payload")


def markers(ns: Netns) -> tuple[bytes, bytes]:
    tag = ns.name[-6:].encode()
    return b"U" + tag, b"T" + tag


async def make_traffic(*namespaces: Netns) -> None:
    """UDP datagrams and a TCP exchange on ``lo`` in every namespace, all at once."""
    async with trio.open_nursery() as nursery:
        for ns in namespaces:
            udp, tcp = markers(ns)
            nursery.start_soon(lambda ns=ns, m=udp: send_udp(ns, "127.0.0.1", 9999, UDP_COUNT,
                                                             size=200, marker=m))
            nursery.start_soon(lambda ns=ns, m=tcp: tcp_exchange(ns, "127.0.0.1", TCP_ROUNDS,
                                                                 size=TCP_SIZE, marker=m))


def udp_sequences(rows: list[list[str]], name: str, marker: bytes) -> list[int]:
    """Sequence numbers of the marked UDP datagrams captured on interface ``name``."""
    found = []
    for row in rows:
        if row[0] == name and row[4] == "17" and row[6]:
            data = bytes.fromhex(row[6])
            if data.startswith(marker):
                found.append(int.from_bytes(data[len(marker):len(marker) + 4], "big"))
    return found


def tcp_payload_bytes(rows: list[list[str]], name: str) -> int:
    return sum(int(row[5]) for row in rows if row[0] == name and row[4] == "6" and row[5])


async def test_two_namespaces_are_merged_into_one_ordered_pcapng(tmp_path: Path) -> None:
    with netns() as a, netns() as b, trio.fail_after(60):
        async with streamed_capture("local", "--netns", a.name, "--netns", b.name, "-i", "lo",
                                    "-s", "64", "-f", "not icmp") as capture:
            await capture.wait_started(interfaces=2)
            await make_traffic(a, b)
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)

    rows = tshark_fields(out, *FIELDS)
    names = {row[0] for row in rows}
    assert names == {f"{a.name}:lo", f"{b.name}:lo"}
    for ns in (a, b):
        udp, _ = markers(ns)
        assert udp_sequences(rows, f"{ns.name}:lo", udp) == list(range(UDP_COUNT))
        assert tcp_payload_bytes(rows, f"{ns.name}:lo") == 2 * TCP_ROUNDS * TCP_SIZE
    # In time order, but for packets the merge let through late (a source silent longer than
    # merge.lateness: on a loaded machine); those are counted, and the summary says how many.
    late = re.search(r"(\d+) written out of order", capture.stderr.text)
    assert inversions(Decimal(row[1]) for row in rows) == (int(late[1]) if late else 0), (
        capture.stderr.text)
    udp_rows = [row for row in rows if row[4] == "17"]
    assert all((row[2], row[3]) == ("242", "64") for row in udp_rows)  # -s 64, original kept
    info = run_tool("capinfos", out)
    assert info.count("Number of stat entries = 1") == 2  # one statistics block per interface
    assert "Number of interfaces in file: 2" in info
    assert "packets written" in capture.stderr.text


async def test_a_direction_filter_keeps_the_first_packets_and_the_users_words(
    tmp_path: Path,
) -> None:
    """``inbound`` lost libpcap's first ring block (it became ``setdirection``); the file still
    records the filter as the user wrote it."""
    user_filter = "inbound and udp port 9999"
    with netns() as a, trio.fail_after(60):
        async with streamed_capture("local", "--netns", a.name, "-i", "lo",
                                    "-f", user_filter) as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(a, "127.0.0.1", 9999, UDP_COUNT, marker=b"first")
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, *FIELDS)
    assert udp_sequences(rows, f"{a.name}:lo", b"first") == list(range(UDP_COUNT))
    assert f"Filter string = {user_filter}\n" in run_tool("capinfos", out)


async def test_stdout_holds_nothing_but_pcapng_while_the_capture_runs() -> None:
    with netns() as a, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            pcapd = await trio.lowlevel.open_process(
                ["sh", "-c", f"'{_pcapd()}' capture local --netns {a.name} -i lo -f udp -w - "
                 "| tshark -r - -c 5 -T fields -e frame.interface_name"],
                stdout=-1, stderr=-1, start_new_session=True)
            # whatever happens, nothing of the pipeline outlives the test
            nursery.start_soon(_killed_at_exit, pcapd.pid)

            async def traffic() -> None:
                # until the pipeline ends (tshark leaves after 5 packets): the capture may
                # start well after the first datagrams (a loaded machine, the filter's compile)
                while pcapd.poll() is None:
                    await send_udp(a, "127.0.0.1", 9999, 5, marker=b"pipe")
                    await trio.sleep(0.05)  # pacing the sender, not waiting for an event

            nursery.start_soon(traffic)
            assert pcapd.stdout is not None
            out = b""
            async for chunk in pcapd.stdout:
                out += chunk
            assert await pcapd.wait() == 0
            nursery.cancel_scope.cancel()
    assert out.decode().split() == [f"{a.name}:lo"] * 5


async def _killed_at_exit(group: int) -> None:
    """Kill the process group ``group`` when the surrounding nursery ends."""
    try:
        await trio.sleep_forever()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


async def test_bad_filter_fails_before_any_agent_is_contacted(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    certs = tmp_path / "certs"
    await trio.run_process([_pcapd(), "certs", "init", str(certs)], capture_stderr=True)
    result = await trio.run_process(
        [_pcapd(), "capture", "local", "--agent", f"127.0.0.1:{port}#x", "--certs", str(certs),
         "-f", "tcp port x", "-w", str(tmp_path / "never.pcapng")],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert 'invalid BPF filter "tcp port x"' in err and err.count("\n") == 1, err
    assert not (tmp_path / "never.pcapng").exists()
    with trio.move_on_after(0.5) as nobody:  # the api would have dialled long before this
        await listener.accept()
    assert nobody.cancelled_caught, "an agent was contacted despite the bad filter"
    listener.close()


async def test_unknown_namespace_is_a_one_line_error() -> None:
    result = await trio.run_process(
        [_pcapd(), "capture", "local", "--netns", "pcapd-no-such-ns", "-i", "lo", "-w", "-"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "pcapd-no-such-ns" in err and err.startswith("pcapd: error:"), err
    assert result.stdout == b""


def _pcapd() -> str:
    from tests.e2e.procs import PCAPD

    return PCAPD


async def test_sigterm_stops_gracefully_with_statistics(tmp_path: Path) -> None:
    with netns() as a, trio.fail_after(60):
        async with streamed_capture("local", "--netns", a.name, "-i", "lo") as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(a, "127.0.0.1", 9999, 10, marker=b"term")
            capture.process.send_signal(signal.SIGTERM)
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    assert "Number of stat entries = 1" in run_tool("capinfos", out)
    rows = tshark_fields(out, "data.data", display_filter="udp and not icmp")
    assert sum(1 for row in rows if bytes.fromhex(row[0]).startswith(b"term")) == 10


async def test_capturing_host_lo_does_not_capture_its_own_stream(tmp_path: Path) -> None:
    """The agent's link and the user's link to the embedded api both cross the host; neither
    may feed the capture (a loop that would grow without end). pcapd runs inside a namespace of
    its own, so its ``lo`` carries nothing but pcapd's own traffic: none may be captured."""
    out = tmp_path / "idle.pcapng"
    with netns() as alone, trio.fail_after(30):
        result = await trio.run_process(
            alone.argv(_pcapd(), "capture", "local", "-i", "lo", "--duration", "2",
                       "-w", str(out)), capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr
    assert tshark_fields(out, "frame.number") == [], "pcapd captured its own links"


async def test_the_file_starts_with_its_header_when_packets_arrive_at_once(
        tmp_path: Path) -> None:
    """Packets that reach the api while it tells the user the capture started were once
    written before the section header (a file no reader opens): the README's quick start on a
    busy loopback. Five captures under a flood, each read whole by capinfos."""
    stop = trio.Event()

    async def flood() -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            while not stop.is_set():
                await sock.sendto(b"x" * 64, ("127.0.0.1", 9))
                await trio.sleep(0.0005)  # pacing the sender, not waiting for an event

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            for i in range(5):
                out = tmp_path / f"busy{i}.pcapng"
                await trio.run_process([_pcapd(), "capture", "local", "-i", "lo", "-c", "200",
                                        "--duration", "2", "-w", str(out)],
                                       capture_stdout=True, capture_stderr=True)
                run_tool("capinfos", "-c", out)  # raises on a damaged file
            stop.set()
