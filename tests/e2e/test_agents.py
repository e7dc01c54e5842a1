"""Captures through agents running as their own processes (``--agent ADDR#NETNS --certs DIR``).

The agents are real ``pcapd agent --config`` processes with mutual TLS from ``pcapd certs
init``; the tests kill them, kill the client, and hand them certificates they must refuse.
"""

from __future__ import annotations

import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from pcapd.certs import CertPaths, init_certs
from tests.e2e.procs import PCAPD, Proc, agent_status, json_event, running, streamed_capture
from tests.netns import netns, send_udp
from tests.readers import run_tool, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_config(tmp: Path, certs: Path, name: str, port: int) -> Path:
    path = tmp / f"agent-{name}.yml"
    path.write_text(f"""
id: test-agent/{name}
listen: {{address: 127.0.0.1, port: {port}}}
tls: {{certificate: {certs}/agent.crt, private_key: {certs}/agent.key, client_ca: {certs}/ca.crt}}
containers: {{netns_dir: /run/netns}}
log: {{level: info, format: json}}
""")
    return path


@asynccontextmanager
async def agent(tmp: Path, certs: Path, name: str,
                port: int | None = None) -> AsyncIterator[tuple[Proc, int]]:
    port = port or free_port()
    async with running("agent", "--config", str(agent_config(tmp, certs, name, port)),
                       stdout_lines=False) as proc:
        await proc.stderr.wait_for(json_event("listening"))
        yield proc, port


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return init_certs(tmp_path / "certs").directory


async def test_killed_agent_is_reported_and_the_other_stream_goes_on(tmp_path: Path,
                                                                     certs: Path) -> None:
    with netns() as a, netns() as b, trio.fail_after(90):
        async with agent(tmp_path, certs, "a") as (_, port_a), \
                agent(tmp_path, certs, "b") as (agent_b, port_b), streamed_capture(
                "local", "--agent", f"127.0.0.1:{port_a}#{a.name}",
                "--agent", f"127.0.0.1:{port_b}#{b.name}", "--certs", str(certs),
                "-i", "lo", "-f", "udp and not icmp") as capture:
            await capture.wait_started(interfaces=2)
            await send_udp(a, "127.0.0.1", 9999, 30, marker=b"before")
            await send_udp(b, "127.0.0.1", 9999, 30, marker=b"before")
            agent_b.process.kill()
            await capture.stderr.wait_for(lambda line: "INSTANCE_UNAVAILABLE" in line)
            await send_udp(a, "127.0.0.1", 9999, 30, marker=b"after")
            capture.interrupt()
            # stopped before the lost source came back: the capture is partial (exit 3)
            assert await capture.wait_exit() == 3, capture.stderr.text
            assert f"from 1 of 2 sources; {b.name} unavailable (lost" \
                in capture.stderr.lines[-1], capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "frame.interface_name", "data.data")
    from_a = [bytes.fromhex(d) for name, d in rows if name == f"{a.name}:lo"]
    assert sum(d.startswith(b"before") for d in from_a) == 30
    assert sum(d.startswith(b"after") for d in from_a) == 30
    assert "Number of interfaces in file: 2" in run_tool("capinfos", out)
    unavailable = [line for line in capture.stderr.lines if "INSTANCE_UNAVAILABLE" in line]
    assert b.name in unavailable[0]


async def test_killed_client_ends_the_agent_capture_within_5_seconds(tmp_path: Path,
                                                                     certs: Path) -> None:
    with netns() as a, trio.fail_after(60):
        async with agent(tmp_path, certs, "a") as (agent_a, port), streamed_capture(
                "local", "--agent", f"127.0.0.1:{port}#{a.name}", "--certs", str(certs),
                "-i", "lo") as capture:
            await capture.wait_started(interfaces=1)
            assert (await agent_status(CertPaths.in_directory(certs), "127.0.0.1",
                                       port)).captures == 1
            capture.process.kill()  # no goodbye: SIGKILL
            with trio.fail_after(5):
                await agent_a.stderr.wait_for(json_event("capture_ended"))
            assert (await agent_status(CertPaths.in_directory(certs), "127.0.0.1",
                                       port)).captures == 0


async def test_agent_refuses_a_client_certificate_from_another_ca(tmp_path: Path,
                                                                  certs: Path) -> None:
    stranger = init_certs(tmp_path / "stranger").directory
    mixed = tmp_path / "mixed"  # trusts the agent's CA, but presents a stranger's certificate
    mixed.mkdir()
    shutil.copy(certs / "ca.crt", mixed / "ca.crt")
    for name in ("api-client.crt", "api-client.key"):
        shutil.copy(stranger / name, mixed / name)
    with trio.fail_after(60):
        async with agent(tmp_path, certs, "a") as (agent_a, port):
            result = await trio.run_process(
                [PCAPD, "capture", "local", "--agent", f"127.0.0.1:{port}", "--certs",
                 str(mixed), "-i", "lo", "-w", str(tmp_path / "x.pcapng")],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 1
            err = result.stderr.decode()
            assert "no source could be captured" in err and "client certificate" in err, err
            await agent_a.stderr.wait_for(lambda line: "refused connection" in line)


async def test_api_refuses_an_agent_certificate_with_the_wrong_name(tmp_path: Path) -> None:
    wrong = init_certs(tmp_path / "wrong", agent_server_name="someone-else.internal").directory
    with trio.fail_after(60):
        async with agent(tmp_path, wrong, "a") as (_, port):
            result = await trio.run_process(
                [PCAPD, "capture", "local", "--agent", f"127.0.0.1:{port}", "--certs",
                 str(wrong), "-i", "lo", "-w", str(tmp_path / "x.pcapng")],
                capture_stdout=True, capture_stderr=True, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1
    # pcapd's words and where; the reason after them is OpenSSL's wording (not asserted)
    assert f"127.0.0.1:{port}: TLS handshake failed: " in err, err
    assert not (tmp_path / "x.pcapng").exists()


async def test_agent_sigterm_drains_its_capture(tmp_path: Path, certs: Path) -> None:
    with netns() as a, trio.fail_after(60):
        async with agent(tmp_path, certs, "a") as (agent_a, port), streamed_capture(
                "local", "--agent", f"127.0.0.1:{port}#{a.name}", "--certs", str(certs),
                "-i", "lo", "-f", "udp and not icmp") as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(a, "127.0.0.1", 9999, 20, marker=b"drain")
            agent_a.signal(signal.SIGTERM)
            assert await agent_a.process.wait() == 0
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "data.data")
    assert sum(1 for (d,) in rows if bytes.fromhex(d).startswith(b"drain")) == 20
    assert "Number of stat entries = 1" in run_tool("capinfos", out)


async def test_an_agent_restarted_mid_capture_is_resumed_and_the_gap_marked(
        tmp_path: Path, certs: Path) -> None:
    with netns() as a, netns() as b, trio.fail_after(90):
        async with agent(tmp_path, certs, "a") as (_, port_a), \
                agent(tmp_path, certs, "b") as (agent_b, port_b), streamed_capture(
                    "local", "--agent", f"127.0.0.1:{port_a}#{a.name}",
                    "--agent", f"127.0.0.1:{port_b}#{b.name}", "--certs", str(certs),
                    "-i", "lo", "-f", "udp and not icmp") as capture:
            await capture.wait_started(interfaces=2)
            await send_udp(b, "127.0.0.1", 9999, 10, marker=b"first")
            await capture.wait_for_bytes(b"first", 10)  # through the agent before it dies
            agent_b.process.kill()
            await capture.stderr.wait_for(lambda line: "INSTANCE_UNAVAILABLE" in line)
            async with agent(tmp_path, certs, "b", port_b):  # the agent comes back
                await capture.stderr.wait_for(lambda line: "CAPTURE_RESUMED" in line)
                await send_udp(b, "127.0.0.1", 9999, 10, marker=b"second")
                await send_udp(a, "127.0.0.1", 9999, 10, marker=b"steady")
                capture.interrupt()
                assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "resumed.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "frame.interface_name", "data.data", "frame.comment")
    from_b = [(bytes.fromhex(d), c) for name, d, c in rows if name == f"{b.name}:lo"]
    assert sum(d.startswith(b"first") for d, _ in from_b) == 10
    assert sum(d.startswith(b"second") for d, _ in from_b) == 10
    comments = [c for _, c in from_b if c]
    assert len(comments) == 1 and "resumed after a gap" in comments[0]
    assert "Number of interfaces in file: 2" in run_tool("capinfos", out)
