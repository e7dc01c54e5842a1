"""One source of a capture on the api: what its account and its capture hear when its agent
cannot be reached, when a save names an instance that recorded nothing, and when it leaves.

The source feeds a small stand-in of its capture that keeps what it is told (the protocol in
:mod:`pcapd.api.source` is all a source sees of it) and a real :class:`~pcapd.merge.Merge`.
An agent that answers, loses its link and comes back is tested end to end in
``test_server_links.py`` and ``tests/e2e/test_faults.py``.
"""

from __future__ import annotations

import trio

from pcapd.api.agents import AgentJob, AgentPayload
from pcapd.api.ledger import Account
from pcapd.api.source import Dial, SourceRun
from pcapd.merge import Merge
from pcapd.proto import AgentTarget, CaptureLimits, CaptureOptions, Code, RecordSave
from tests.api.resolving import closed_port_url

GUARD = 10.0


class Owner:
    """The capture a source feeds (a :class:`~pcapd.api.source.SourceOwner`), keeping what it
    is told."""

    def __init__(self) -> None:
        self.merge = Merge()
        self.stop_requested = trio.Event()
        self.notices: list[tuple[Code, str]] = []
        self.gone: list[SourceRun] = []

    def push(self, source: SourceRun, payload: AgentPayload) -> None:
        raise AssertionError("no agent, no payload")

    def check_settled(self) -> None:
        raise AssertionError("no agent, no start")

    async def notify(self, code: Code, text: str, source: SourceRun | None = None, *,
                     party: str | None = None, count: int | None = None) -> None:
        self.notices.append((code, text))

    async def source_gone(self, source: SourceRun) -> None:
        self.gone.append(source)

    async def room(self, source: SourceRun) -> None:
        pass


def source(capture: Owner, *, saves: dict[str, RecordSave] | None = None) -> SourceRun:
    port = int(closed_port_url().rpartition(":")[2])  # nothing listens there
    job = AgentJob("127.0.0.1", port, AgentTarget(namespace="host", source="router/0"),
                   origin="router/0")
    dial = Dial(capture_id="c1", options=CaptureOptions(device="eth0"), limits=CaptureLimits(),
                ssl_context=None, server_name="agent", connect_timeout=2.0,
                reconnect_grace=5.0, saves=saves)
    return SourceRun(job, Account(index=0, origin="router/0"), capture, dial)


async def test_an_agent_that_cannot_be_reached_leaves_its_source_unavailable() -> None:
    capture = Owner()
    run = source(capture)
    with trio.fail_after(GUARD):
        await run.run()
    account = run.account
    address = run.job.address
    refused = f"all attempts to connect to {address} failed"
    assert account.failure == (
        "INSTANCE_UNAVAILABLE",
        f"router/0 ({address}) unavailable: {address}: cannot connect: {refused}")
    assert account.why == f"cannot connect to its agent at {address}: {refused}"
    assert capture.gone == [run] and capture.notices == []  # never started: no resume


async def test_a_save_of_an_instance_that_recorded_nothing_is_refused_without_a_connection(
        ) -> None:
    capture = Owner()
    run = source(capture, saves={"router/1": RecordSave(recording_id="r1", last=60)})
    with trio.fail_after(GUARD):
        await run.run()
    assert run.account.failure == ("INSTANCE_UNAVAILABLE", "router/0: not recorded")
    assert run.account.why == "start failed: router/0: not recorded"
    assert capture.gone == [run]


async def test_a_source_without_an_agent_stops_quietly_and_leaves_the_merge_once() -> None:
    capture = Owner()
    run = source(capture)
    await run.stop("requested")  # no agent link: nothing to ask
    run.merge_id = capture.merge.add_source(trio.current_time())
    assert capture.merge.statistics().sources == 1
    run.leave_merge()
    run.leave_merge()
    assert run.merge_id is None and capture.merge.statistics().sources == 0
