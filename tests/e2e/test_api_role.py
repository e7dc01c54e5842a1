"""``pcapd api --config FILE`` as a service: starts, answers status, refuses a request without
a token with a clear message, and exits cleanly on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from pcapd.certs import init_certs
from pcapd.proto import (
    CaptureOptions,
    Error,
    InitiatorSession,
    LocalTarget,
    Start,
    Status,
    StatusReply,
    Welcome,
)
from pcapd.transport.link import Link
from pcapd.transport.ws import open_websocket
from tests.e2e.procs import json_event, running
from tests.e2e.test_agents import free_port

ROOT = Path(__file__).resolve().parents[2]


def api_config(tmp: Path, port: int) -> Path:
    certs = init_certs(tmp / "certs").directory
    text = (ROOT / "config" / "api.yml").read_text()
    text = text.replace("/var/vcap/jobs/pcapd-api/config/certs", str(certs))
    text = text.replace("address: 0.0.0.0\n  port: 8080", f"address: 127.0.0.1\n  port: {port}")
    text = text.replace("/var/vcap/store/pcapd-api", str(tmp / "store"))
    path = tmp / "api.yml"
    path.write_text(text)
    return path


async def test_api_serves_status_refuses_local_targets_and_drains(tmp_path: Path) -> None:
    port = free_port()
    with trio.fail_after(60):
        async with running("api", "--config", str(api_config(tmp_path, port)),
                           stdout_lines=False) as api:
            await api.stderr.wait_for(json_event("listening"))
            async with open_websocket("127.0.0.1", port, ssl_context=None) as ws:
                link = Link(ws, InitiatorSession("client"), "api")
                await link.send(link.session.make_hello())  # type: ignore[union-attr]
                assert isinstance(await link.receive(), Welcome)
                await link.send(Status())
                status = await link.receive()
                assert isinstance(status, StatusReply)
                assert (status.healthy, status.draining, status.server_id, status.captures) == (
                    True, False, "pcap-api/0", 0)
                await link.send(Start(target=LocalTarget(),
                                      options=CaptureOptions(device="eth0")))
                refusal = await link.receive()
                # without a token nothing in the request is looked at (issue 12); with one, a
                # local target is refused naming `pcapd capture local` (tests/e2e/test_intake.py)
                assert isinstance(refusal, Error) and refusal.code == "UNAUTHENTICATED", refusal
                assert "log in" in refusal.text
            api.signal(signal.SIGTERM)
            assert await api.process.wait() == 0
    assert all(line.startswith("{") for line in api.stderr.lines if line)  # JSON logs only
