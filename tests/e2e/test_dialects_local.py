"""tcpdump's spellings in ``pcapd capture local``, end to end: a trailing filter expression,
``-s 0`` and ``-nn`` in a namespace with real traffic, and ``-D`` listing its devices."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from tests.e2e.procs import PCAPD, streamed_capture
from tests.netns import netns, send_udp, tcp_exchange, veth_pair
from tests.readers import tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]


async def test_trailing_expression_and_whole_packets(tmp_path: Path) -> None:
    with netns() as ns, trio.fail_after(60):
        async with streamed_capture("local", "--netns", ns.name, "-i", "lo", "-nn", "-s", "0",
                                    "udp", "and", "port", "9999") as capture:
            await capture.wait_started(interfaces=1)
            await tcp_exchange(ns, "127.0.0.1", 5, size=100, marker=b"Tdialect")
            await send_udp(ns, "127.0.0.1", 9999, 10, size=9000, marker=b"Udialect")
            await capture.wait_for_bytes(b"Udialect", 10)
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "ip.proto", "udp.dstport", "frame.len", "frame.cap_len")
    assert len(rows) == 10  # the filter held: no TCP, nothing else
    assert all(row[:2] == ["17", "9999"] for row in rows)
    assert all(row[2] == row[3] and int(row[2]) > 9000 for row in rows)  # -s 0: whole packets


def test_dash_D_lists_the_devices_of_each_namespace() -> None:
    with netns() as a, netns() as b, veth_pair(b, None) as pair:
        done = subprocess.run([PCAPD, "capture", "local", "-D", "--netns", a.name, "--netns",
                               b.name], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"1.{a.name}:lo", f"1.{b.name}:lo",
                                        f"2.{b.name}:{pair.a_dev}"]


def test_dash_D_names_a_missing_namespace_and_the_command_that_lists_them() -> None:
    done = subprocess.run([PCAPD, "capture", "local", "-D", "--netns", "pcapd-no-such-ns"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--netns pcapd-no-such-ns" in done.stderr and "ip netns list" in done.stderr
    assert done.stderr.count("\n") == 1
