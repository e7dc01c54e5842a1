"""Notices recorded in the capture itself: an instance lost mid-capture shows up as a comment
on the next packet written (``frame.comment``), for whoever reads the file later — and for
Wireshark through extcap, where stderr is hidden (the same output path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.e2e.procs import streamed_capture
from tests.e2e.test_agents import agent, certs
from tests.netns import netns, send_udp
from tests.readers import tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]
__all__ = ["certs"]  # the fixture, used by name


async def test_a_lost_instance_is_a_comment_on_the_next_packet(tmp_path: Path,
                                                               certs: Path) -> None:
    with netns() as a, netns() as b, trio.fail_after(90):
        async with agent(tmp_path, certs, "a") as (_, port_a), \
                agent(tmp_path, certs, "b") as (agent_b, port_b), streamed_capture(
                "local", "--agent", f"127.0.0.1:{port_a}#{a.name}",
                "--agent", f"127.0.0.1:{port_b}#{b.name}", "--certs", str(certs),
                "-i", "lo", "udp", "port", "9999") as capture:
            await capture.wait_started(interfaces=2)
            await send_udp(a, "127.0.0.1", 9999, 5, marker=b"before")
            agent_b.process.kill()
            await capture.stderr.wait_for(lambda line: "INSTANCE_UNAVAILABLE" in line)
            await send_udp(a, "127.0.0.1", 9999, 5, marker=b"after")
            await capture.wait_for_bytes(b"after", 5)
            capture.interrupt()
            assert await capture.wait_exit() == 3, capture.stderr.text  # partial: b was lost
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "data.data", "frame.comment")
    assert len(rows) == 10  # every packet, one of them (the first written after the notice)
    [comment] = [comment for _, comment in rows if comment]  # carries the notice
    assert comment.startswith("pcapd INSTANCE_UNAVAILABLE") and b.name in comment
