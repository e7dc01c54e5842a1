"""Issue 17 end to end: ``pcapd record`` through a real ``pcapd api`` process, the fake UAA and
Cloud Controller, and real agents on two cells (network namespaces), the app's two instances
one on each. What is checked is what users see: the CLI's output, the saved pcapng as tshark
reads it, the api's answers and audit lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from pcapd.agent.pcap import DEFAULT_BUFFER_SIZE
from pcapd.pcapng import InterfaceStatistics, PcapngDecoder
from pcapd.proto import (
    CaptureList,
    CaptureOptions,
    CfTarget,
    Data,
    Download,
    End,
    Error,
    GetDownload,
    ListCaptures,
    ListRecordings,
    Message,
    Record,
    RecordingList,
    RecordingStarted,
    RecordRing,
    RecordSave,
    RecordStop,
    RingStatus,
    StoredCapture,
    Trigger,
)
from pcapd.proto.ring_note import RingNote
from tests.e2e.platform_landscape import Landscape, developer_tokens, start_process
from tests.e2e.procs import AGENT_PORT, PCAPD
from tests.fakes import ALICE, BOB
from tests.fakes.cloud_controller import App
from tests.fakes.uaa import make_user
from tests.links import agent_recordings, api_link
from tests.netns import Netns, send_udp
from tests.readers import run_tool, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    # a small api buffer: a saved window larger than it must still come out whole and ordered
    with Landscape(tmp_path_factory.mktemp("record"), cells=2, vms=2, api_settings={
            "recorder": {"per_user": 10},
            "buffer": {"size": 500, "upper_limit": 450, "lower_limit": 400}}) as built:
        built.rec_app = built.deploy_app("rec-app", instances=2)  # type: ignore[attr-defined]
        built.deploy_vms("dep", "router", teams=["team-a"])
        yield built


def app(landscape: Landscape) -> App:
    return landscape.rec_app  # type: ignore[attr-defined,no-any-return]


def containers(landscape: Landscape) -> list[Netns]:
    """Instance 0's and instance 1's container, one on each cell."""
    return [next(iter(cell.containers.values())) for cell in landscape.cells]


async def send_marked(landscape: Landscape, word: str, count: int = 10,
                      port: int = 9999) -> None:
    """``count`` datagrams ``<word>-<instance>`` + seq on each instance's loopback."""
    for index, container in enumerate(containers(landscape)):
        await send_udp(container, "127.0.0.1", port, count, marker=f"{word}-{index}".encode())


async def ask(landscape: Landscape, token: str, request: Record | ListRecordings | RecordStop
              | ListCaptures | GetDownload) -> Message:
    with trio.fail_after(40):
        async with api_link(landscape.api_port, token) as link:
            await link.send(request)
            return await link.receive()  # type: ignore[return-value]


async def saved(landscape: Landscape, token: str, save: RecordSave) -> tuple[bytes, Message]:
    """A ``record_save`` over the protocol: the pcapng and the last message (end or error)."""
    data = bytearray()
    with trio.fail_after(60):
        async with api_link(landscape.api_port, token) as link:
            await link.send(save)
            while True:
                msg = await link.receive()
                if isinstance(msg, Data):
                    data += msg.payload
                elif isinstance(msg, End | Error):
                    return bytes(data), msg


def record(landscape: Landscape, trigger: Trigger | None = None, keep: float = 60) -> Record:
    """Arm on both instances' loopback, keeping the test's datagrams (port 9999)."""
    return Record(target=CfTarget(app=app(landscape).guid), options=CaptureOptions(
        device="lo", filter="udp port 9999"), ring=RecordRing(keep=keep), trigger=trigger)


async def started(landscape: Landscape, token: str, request: Record) -> str:
    answer = await ask(landscape, token, request)
    assert isinstance(answer, RecordingStarted), answer
    assert sorted(s.name for s in answer.sources) == ["rec-app/0:lo", "rec-app/1:lo"]
    return answer.recording_id


def markers(path: Path) -> list[tuple[str, str, float]]:
    """(interface, payload marker up to the seq, time) of each packet, in file order."""
    rows = tshark_fields(path, "frame.interface_name", "data.data", "frame.time_epoch")
    found = []
    for iface, data, when in rows:
        payload = bytes.fromhex(data) if data else b""
        word = re.match(rb"[A-Za-z]+-[0-9]", payload)  # then a 4-byte seq, then dots
        found.append((iface, word[0].decode() if word else "?", float(when)))
    return found



async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(90):
        return await trio.run_process([PCAPD, *args], env=env, capture_stdout=True,
                                      capture_stderr=True, check=False)


async def rings_of(landscape: Landscape, token: str, rid: str) -> list[RingStatus]:
    """What the agents report of the recording's rings (``record list``'s source)."""
    listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList) and len(listing.recordings) == 1, listing
    return listing.recordings[0].sources


async def until_aged(landscape: Landscape, token: str, rid: str, packets: int) -> None:
    """Until every ring has let ``packets`` go as older than ``--keep`` (as the agents say)."""
    with trio.fail_after(60):
        while True:
            if all(r.aged_out_time >= packets for r in await rings_of(landscape, token, rid)):
                return
            await trio.sleep(0.3)  # the agents age by their clock: nothing to wait on but it


def ring_notes(path: Path) -> dict[str, RingNote | None]:
    """Each interface's ring figures, as the file's statistics blocks say them."""
    decoder = PcapngDecoder()
    decoder.receive_data(path.read_bytes())
    notes = {}
    while (block := decoder.next_block()) is not None:
        if isinstance(block, InterfaceStatistics):
            name = decoder.interfaces[block.interface_id].name
            notes[name] = RingNote.find(block.comments)
    return notes


async def aged_out_metric(landscape: Landscape) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{landscape.api_url}/metrics")).text
    value, = [line.split()[-1] for line in text.splitlines()
              if line.startswith("pcapd_recording_packets_aged_out ")]
    return float(value)


async def test_save_last_holds_exactly_the_window_from_both_instances(
        landscape: Landscape, tmp_path: Path) -> None:
    """Three rounds on both instances: ``old`` ages out (older than --keep), ``mid`` is held
    but older than --last, ``new`` is the window. The file holds exactly the window, the
    statistics block of each interface says what its ring held and let go — as the agents
    list it — and so does the summary."""
    token, refresh = developer_tokens(landscape)
    env = landscape.cf_home(token, refresh)
    aged_before = await aged_out_metric(landscape)
    keep, last = 12, 3
    start = await cli(env, "record", "start", "cf", "rec-app", "-i", "lo", "--keep", f"{keep}s",
                      "udp", "port", "9999")
    assert start.returncode == 0, start.stderr.decode()
    rid = start.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", rid), start.stdout
    assert f": 2 instances (rec-app/0:lo, rec-app/1:lo) keep their last {keep}s" in \
        start.stderr.decode()
    await send_marked(landscape, "old")
    await until_aged(landscape, token, rid, 10)
    assert await aged_out_metric(landscape) == aged_before + 20
    await send_marked(landscape, "mid")
    await trio.sleep(last + 1)  # older than --last, younger than --keep: time passing is tested
    await send_marked(landscape, "new")
    out, everything = tmp_path / "window.pcapng", tmp_path / "everything.pcapng"
    asked = time.time()
    save = await cli(env, "record", "save", rid[:10], "--last", f"{last}s", "-w", str(out), "-q")
    assert save.returncode == 0, save.stderr.decode()
    whole_asked = time.time()
    whole = await cli(env, "record", "save", rid, "-w", str(everything), "-q")
    assert whole.returncode == 0, whole.stderr.decode()
    rings = await rings_of(landscape, token, rid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # noqa: ASYNC240
        "everything.pcapng", "window.pcapng"]

    packets = markers(out)
    for index in (0, 1):
        mine = [w for iface, w, _ in packets if iface == f"rec-app/{index}:lo"]
        assert mine == [f"new-{index}"] * 10, packets
    times = [t for *_, t in packets]
    assert times == sorted(times) and times[0] >= asked - last, (asked, times)
    assert "Number of interfaces in file: 2" in run_tool("capinfos", out)
    held = markers(everything)
    for index in (0, 1):
        mine = [w for iface, w, _ in held if iface == f"rec-app/{index}:lo"]
        assert mine == [f"mid-{index}"] * 10 + [f"new-{index}"] * 10, held
    assert min(t for *_, t in held) >= whole_asked - keep  # nothing older than --keep

    # what the agents list, the file's statistics blocks and the summary agree
    assert [(r.source.name, r.packets, r.aged_out_time, r.aged_out_size, r.captured)
            for r in rings] == [("rec-app/0:lo", 20, 10, 0, 30), ("rec-app/1:lo", 20, 10, 0, 30)]
    for path, window in ((out, 10), (everything, 20)):
        notes = ring_notes(path)
        assert {name: note and (note.window, note.held, note.aged_out_time, note.aged_out_size,
                                note.captured) for name, note in notes.items()} == {
            f"rec-app/{i}:lo": (window, 20, 10, 0, 30) for i in (0, 1)}, notes
    assert save.stderr.decode().splitlines()[-1] == (
        f"20 packets written to {out} from 2 sources (completed: 20 packets saved of 40 held, "
        "20 aged out (20 older than --keep, 0 over --max-bytes)); captured 20, dropped 0 "
        "(kernel 0, agent 0, api 0)")
    assert "40 packets saved of 40 held, 20 aged out (20 older than --keep" in \
        whole.stderr.decode()
    # an instance that sent its window is the save completing, not a stopped capture to report
    assert "CAPTURE_STOPPED" not in save.stderr.decode() + whole.stderr.decode()

    listing = await cli({**env, "COLUMNS": "200"}, "record", "list", "--json")
    assert listing.returncode == 0, listing.stderr.decode()
    row, = [r for r in json.loads(listing.stdout) if r["recording_id"] == rid]
    assert row["state"] == "armed" and row["instances"] == 2 and row["instances_lost"] == 0
    assert row["bytes_held"] > 0
    stop = await cli(env, "record", "stop", rid)
    assert stop.returncode == 0, stop.stderr.decode()
    gone = await saved(landscape, token, RecordSave(recording_id=rid))
    assert isinstance(gone[1], Error) and "stopped" in gone[1].text
    started_line, = [e for e in landscape.api_events("recording_started")
                     if e["recording_id"] == rid]
    assert started_line["app_guid"] == app(landscape).guid
    assert started_line["instances"] == ["rec-app/0", "rec-app/1"]
    assert started_line["filter"] == "udp port 9999"
    saved_lines = [e for e in landscape.api_events("recording_saved")
                   if e["recording_id"] == rid]
    stopped_line, = [e for e in landscape.api_events("recording_stopped")
                     if e["recording_id"] == rid]
    assert len(saved_lines) == 2
    for line in [*saved_lines, stopped_line]:  # who, what, where: as the start's line
        assert line["user"] == started_line["user"] == ALICE.user_name
        assert line["target"] == started_line["target"]
        assert line["app_guid"] == app(landscape).guid
        assert line["space_guid"] == landscape.space.guid
        assert line["instances"] == ["rec-app/0", "rec-app/1"]
    assert saved_lines[0]["last"] == last and saved_lines[0]["upload"] is False
    assert saved_lines[0]["sources"] == ["rec-app/0", "rec-app/1"]


async def test_a_trigger_stores_the_window_before_and_after_it(landscape: Landscape,
                                                                tmp_path: Path) -> None:
    token, _ = developer_tokens(landscape)
    # the trigger: a datagram whose payload starts with "T" (the others' are lower case)
    rid = await started(landscape, token, record(landscape, Trigger(
        filter="udp port 9999 and udp[8] = 0x54", after=2.0, once=True), keep=30))
    await send_marked(landscape, "before")
    await send_udp(containers(landscape)[0], "127.0.0.1", 9999, 1, marker=b"Trigger-0")
    await send_marked(landscape, "after")
    await trio.sleep(3)  # past the trigger's window: later packets are outside it
    await send_marked(landscape, "late")
    stored = await stored_trigger(landscape, token, rid)
    assert stored.target.startswith("cf:") and "trigger" in stored.target
    link = await ask(landscape, token, GetDownload(capture_id=stored.capture_id))
    assert isinstance(link, Download)
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(link.url)
    assert response.status_code == 200
    out = tmp_path / "triggered.pcapng"
    out.write_bytes(response.content)
    words = [w for _, w, _ in markers(out)]
    for index in (0, 1):
        assert words.count(f"before-{index}") == 10 and words.count(f"after-{index}") == 10
        assert f"late-{index}" not in words
    assert words.count("Trigger-0") == 1
    listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList)
    shown, = listing.recordings
    assert shown.triggers_saved == 1 and shown.saved == [stored.capture_id]
    assert shown.state == "ended"  # --once: stopped after its window was saved
    assert [e for e in landscape.api_events("recording_triggered")
            if e["recording_id"] == rid and e["capture_id"] == stored.capture_id]
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = (await http.get(f"{landscape.api_url}/metrics")).text
    assert 'pcapd_recording_triggers_total{outcome="saved"} 1.0' in metrics
    assert "pcapd_recording_bytes_held" in metrics


async def stored_trigger(landscape: Landscape, token: str, rid: str) -> StoredCapture:
    """The capture the api stored for the recording's trigger, once it appears."""
    with trio.fail_after(60):
        while True:
            answer = await ask(landscape, token, ListCaptures())
            assert isinstance(answer, CaptureList)
            found = next((c for c in answer.captures if rid[:8] in c.target), None)
            if found is not None:
                return found
            await trio.sleep(0.2)  # the api saves on its own: nothing to wait on but the store


def restart_api(landscape: Landscape) -> None:
    landscape.api.stop()
    landscape.api = start_process("api", [PCAPD, "api", "--config",
                                          str(landscape.tmp / "api.json")])
    landscape.processes.append(landscape.api)


async def test_a_trigger_while_no_api_watched_is_saved_after_the_restart(
        landscape: Landscape) -> None:
    token, _ = developer_tokens(landscape)
    rid = await started(landscape, token, record(landscape, Trigger(
        filter="udp port 9999 and udp[8] = 0x54", after=1.0), keep=30))
    landscape.api.stop()
    await send_marked(landscape, "unwatched")
    await send_udp(containers(landscape)[1], "127.0.0.1", 9999, 1, marker=b"Trigger-1")
    await trio.sleep(2)
    await send_marked(landscape, "later")  # the trigger's window is whole on the agent
    restart_api(landscape)
    stored = await stored_trigger(landscape, token, rid)
    assert stored.packets == 21  # both instances' 10 before it and the trigger; not "later"
    listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList)
    assert listing.recordings[0].triggers_saved == 1
    assert listing.recordings[0].state == "recording"  # without --once it goes on
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def test_an_api_restart_between_start_and_save_loses_nothing(
        landscape: Landscape, tmp_path: Path) -> None:
    token, _ = developer_tokens(landscape)
    rid = await started(landscape, token, record(landscape))
    await send_marked(landscape, "kept")
    restart_api(landscape)
    listing = await ask(landscape, token, ListRecordings())
    assert isinstance(listing, RecordingList)
    assert rid in [r.recording_id for r in listing.recordings]
    data, end = await saved(landscape, token, RecordSave(recording_id=rid))
    assert isinstance(end, End), end
    out = tmp_path / "after-restart.pcapng"
    out.write_bytes(data)
    words = [w for _, w, _ in markers(out)]
    assert sorted(words) == sorted(["kept-0"] * 10 + ["kept-1"] * 10)
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def test_a_user_whose_permission_was_removed_cannot_save(landscape: Landscape) -> None:
    dave = make_user("dave-dev")
    landscape.cc.grant(dave, "developer", landscape.space)
    token = landscape.uaa.issue(dave)
    rid = await started(landscape, token, record(landscape))
    await send_marked(landscape, "secret")
    landscape.cc.revoke(dave, "developer", landscape.space)
    landscape.cc.grant(dave, "auditor", landscape.space)
    data, answer = await saved(landscape, landscape.uaa.issue(dave),
                               RecordSave(recording_id=rid))
    assert isinstance(answer, Error) and answer.code == "PERMISSION_DENIED", answer
    assert b"secret" not in data
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def test_a_trigger_after_the_permission_was_removed_is_not_handed_out(
        landscape: Landscape, tmp_path: Path) -> None:
    """The api saves a trigger's window on its own, with no token of the owner's: the
    permission is asked again when its download link is asked for. Erin armed a trigger,
    lost the developer role, and the trigger fired: no link (and the store's capture stays
    where it is, for an operator); restored, she gets it."""
    erin = make_user("erin-dev")
    landscape.cc.grant(erin, "developer", landscape.space)
    rid = await started(landscape, landscape.uaa.issue(erin), record(landscape, Trigger(
        filter="udp port 9999 and udp[8] = 0x54", after=0.5, once=True), keep=30))
    landscape.cc.revoke(erin, "developer", landscape.space)
    landscape.cc.grant(erin, "auditor", landscape.space)
    await send_marked(landscape, "secret")
    await send_udp(containers(landscape)[0], "127.0.0.1", 9999, 1, marker=b"Trigger-0")
    token, refresh = landscape.uaa.issue_pair(erin)
    stored = await stored_trigger(landscape, token, rid)
    answer = await ask(landscape, token, GetDownload(capture_id=stored.capture_id))
    assert isinstance(answer, Error) and answer.code == "PERMISSION_DENIED", answer
    assert "stored by a trigger of your recording" in answer.text, answer.text
    out = tmp_path / "refused.pcapng"
    denied = await cli(landscape.cf_home(token, refresh), "captures", "download", stored.capture_id,
                       "-w", str(out))
    assert denied.returncode != 0 and not out.exists(), denied
    assert b"Traceback" not in denied.stderr and b"you may not" in denied.stderr, denied.stderr
    landscape.cc.grant(erin, "developer", landscape.space)
    answer = await ask(landscape, token, GetDownload(capture_id=stored.capture_id))
    assert isinstance(answer, Download), answer


async def test_another_user_can_neither_see_nor_save_nor_stop(landscape: Landscape) -> None:
    alice, _ = developer_tokens(landscape)
    rid = await started(landscape, alice, record(landscape))
    bob = landscape.uaa.issue(BOB)
    listing = await ask(landscape, bob, ListRecordings())
    assert isinstance(listing, RecordingList) and listing.recordings == []
    unknown = "0" * 32
    for request in (RecordStop(recording_id=rid), RecordStop(recording_id=unknown)):
        answer = await ask(landscape, bob, request)
        assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST"
        assert answer.text == f"no recording {request.recording_id} of yours " \
                              "(`pcapd record list` shows yours)"
    _, answer = await saved(landscape, bob, RecordSave(recording_id=rid))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST"
    assert "no recording" in answer.text
    listing = await ask(landscape, alice, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList)
    assert listing.recordings[0].state == "recording"  # bob's stop did nothing
    assert isinstance(await ask(landscape, alice, RecordStop(recording_id=rid)), RecordingList)


async def test_nothing_older_than_keep_is_held_on_the_agents(landscape: Landscape) -> None:
    token, _ = developer_tokens(landscape)
    rid = await started(landscape, token, record(landscape, keep=3))
    await send_marked(landscape, "aging")
    await trio.sleep(5)  # longer than --keep: that time passes is what is tested
    await send_marked(landscape, "fresh")
    listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList)
    rings = listing.recordings[0].sources
    assert [(r.source.name, r.packets, r.aged_out_time, r.captured) for r in rings] == [
        ("rec-app/0:lo", 10, 10, 20), ("rec-app/1:lo", 10, 10, 20)]
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def test_a_window_larger_than_the_api_buffer_to_a_slow_reader_is_whole_and_ordered(
        landscape: Landscape, tmp_path: Path) -> None:
    token, _ = developer_tokens(landscape)
    rid = await started(landscape, token, record(landscape))
    async with trio.open_nursery() as nursery:  # both instances at once: times interleave
        for index, container in enumerate(containers(landscape)):
            nursery.start_soon(lambda c=container, i=index: send_udp(
                c, "127.0.0.1", 9999, 3000, size=100, marker=f"bulk-{i}".encode()))
    data = bytearray()
    with trio.fail_after(120):
        async with api_link(landscape.api_port, token) as link:
            await link.send(RecordSave(recording_id=rid))
            while not isinstance(msg := await link.receive(), End | Error):
                if isinstance(msg, Data):
                    data += msg.payload
                    await trio.sleep(0.02)  # a slow reader: the api must not drop for it
    assert isinstance(msg, End), msg
    assert msg.totals.api_dropped == 0 and msg.totals.late == 0, msg.totals
    out = tmp_path / "bulk.pcapng"
    out.write_bytes(data)
    packets = markers(out)
    assert sorted(w for _, w, _ in packets) == ["bulk-0"] * 3000 + ["bulk-1"] * 3000
    times = [t for *_, t in packets]
    assert times == sorted(times)
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def test_bosh_vms_record_and_save_through_the_cli(landscape: Landscape,
                                                        tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.teams.team-a.admin"])
    env = landscape.bosh_env(token, refresh)
    instances = landscape.director.deployments["dep"].instances
    start = await cli(env, "record", "start", "bosh", "-d", "dep", "-g", "router", "-i", "eth0",
                      "--keep", "1m", "--until", "10m", "udp", "port", "9999")
    assert start.returncode == 0, start.stderr.decode()
    rid = start.stdout.decode().strip()
    for index, vm in enumerate(landscape.vms):
        await send_udp(None, vm.ip, 9999, 5, marker=f"vm-{index}".encode())
    out = tmp_path / "vms.pcapng"
    save = await cli(env, "record", "save", "--bosh", rid, "-w", str(out), "-q")
    assert save.returncode == 0, save.stderr.decode()
    found = sorted((iface, w) for iface, w, _ in markers(out))
    assert found == sorted([(f"router/{instances[i].id}:eth0", f"vm-{i}")
                            for i in (0, 1) for _ in range(5)])
    listing = await cli(env, "record", "list", "--bosh")
    assert listing.returncode == 0 and rid in listing.stdout.decode()
    stop = await cli(env, "record", "stop", "--bosh", rid[:6])
    assert stop.returncode == 0, stop.stderr.decode()
    listing = await cli(env, "record", "list", "--bosh")
    line, = [x for x in listing.stdout.decode().splitlines() if x.startswith(rid)]
    assert line.split("\t")[2] == "stopped"


async def test_an_agent_restart_shows_its_ring_as_lost(landscape: Landscape,
                                                      tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    rid = await started(landscape, token, record(landscape))
    await send_marked(landscape, "before-restart")
    cell = landscape.cells[0]  # instance 0's
    assert cell.agent is not None
    cell.agent.stop()
    cell.agent = landscape._start_agent(cell.host, "cell/0", cell.netns_dir, cell.store)
    listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
    assert isinstance(listing, RecordingList)
    rings = listing.recordings[0].sources
    assert [(r.source.name, r.state) for r in rings] == [("rec-app/0:lo", "lost"),
                                                          ("rec-app/1:lo", "recording")]
    assert "restarted" in rings[0].text and rings[1].packets == 10
    _, end = await saved(landscape, token, RecordSave(recording_id=rid))
    assert isinstance(end, End), end
    assert [(a.name, a.partial, "restarted" in a.reason) for a in end.absent] == [
        ("rec-app/0", True, True)]
    assert end.totals.written == 10
    out = tmp_path / "partial.pcapng"  # the CLI: a partial save, as a partial capture
    partial = await cli(landscape.cf_home(token, refresh), "record", "save", rid, "-w",
                        str(out), "-q")
    err = partial.stderr.decode()
    assert partial.returncode == 3, err
    assert "1 of 2 sources; rec-app/0 unavailable" in err and "restarted" in err, err
    assert [iface for iface, _, _ in markers(out)] == ["rec-app/1:lo"] * 10
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


# --- attackers and unlucky users ---------------------------------------------------------------


async def test_no_recording_is_armed_nor_listed_without_a_valid_token(
        landscape: Landscape) -> None:
    for token in ("not-a-jwt", landscape.uaa.expired(BOB)):
        for request in (record(landscape), ListRecordings(), RecordStop(recording_id="0" * 32)):
            answer = await ask(landscape, token, request)
            assert isinstance(answer, Error) and answer.code == "UNAUTHENTICATED", answer
    alice, _ = developer_tokens(landscape)
    listing = await ask(landscape, alice, ListRecordings())
    assert isinstance(listing, RecordingList)
    assert not [r for r in listing.recordings if r.state == "recording"], listing
    assert not [line for line in landscape.all_log_lines() if "Traceback" in line]


# The protocol's schema already refuses "/", "%" and a leading dot (a link sending one is answered
# as malformed); these pass it and reach the store's key, where they must be unknown ids.
@pytest.mark.parametrize("forged", ["a..b", "x.json", "0" * 33, "A" * 32, "x_y-z.."])
async def test_a_forged_recording_id_is_an_unknown_one(landscape: Landscape,
                                                       forged: str) -> None:
    alice, _ = developer_tokens(landscape)
    answer = await ask(landscape, alice, RecordStop(recording_id=forged))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    _, answer = await saved(landscape, alice, RecordSave(recording_id=forged))
    assert isinstance(answer, Error) and answer.code == "INVALID_REQUEST", answer
    assert not [line for line in landscape.all_log_lines() if "Traceback" in line]


async def test_a_save_never_overwrites_a_file_without_force(landscape: Landscape,
                                                            tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    env = landscape.cf_home(token, refresh)
    rid = await started(landscape, token, record(landscape))
    kept = tmp_path / "yesterday.pcapng"
    kept.write_bytes(b"yesterday's capture")
    save = await cli(env, "record", "save", rid, "-w", str(kept), "-q")
    err = save.stderr.decode()
    assert save.returncode != 0 and "-F" in err and "Traceback" not in err, err
    assert kept.read_bytes() == b"yesterday's capture"
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == ["yesterday.pcapng"]
    unknown = await cli(env, "record", "stop", "f" * 32)
    err = unknown.stderr.decode()
    assert unknown.returncode != 0 and "no recording" in err and "Traceback" not in err, err
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


# --- more of what users and operators see -------------------------------------------------------


async def test_a_saved_window_uploaded_is_listed_and_downloaded_as_any_stored_capture(
        landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    env = landscape.cf_home(token, refresh)
    rid = await started(landscape, token, record(landscape))
    await send_marked(landscape, "stored")
    save = await cli(env, "record", "save", rid[:8], "--upload")
    err = save.stderr.decode()
    assert save.returncode == 0, err
    found = re.search(r"^stored capture ([0-9a-z-]+): 20 packets, .* from 2 sources \(completed:"
                      r" 20 packets saved of 20 held, 0 aged out", err, re.MULTILINE)
    assert found, err
    capture_id = found[1]
    listed = await cli(env, "captures", "list")
    assert listed.returncode == 0, listed.stderr.decode()
    row, = [line.split("\t") for line in listed.stdout.decode().splitlines()
            if line.startswith(capture_id)]
    assert row[4] == "20" and row[6] == "completed", row  # packets, how it ended
    out = tmp_path / "stored.pcapng"
    download = await cli(env, "captures", "download", capture_id[:12], "-w", str(out), "-q")
    assert download.returncode == 0, download.stderr.decode()
    assert "Number of interfaces in file: 2" in run_tool("capinfos", out)
    assert sorted(w for _, w, _ in markers(out)) == ["stored-0"] * 10 + ["stored-1"] * 10
    assert [(n.window, n.held) if n else None for n in ring_notes(out).values()] == [
        (10, 10), (10, 10)]
    saved_line, = [e for e in landscape.api_events("recording_saved")
                   if e["recording_id"] == rid]
    assert saved_line["upload"] is True and saved_line["capture_id"]
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


async def agents_recordings(landscape: Landscape) -> set[str]:
    """Every recording the cells' agents know, asked of the agents themselves."""
    certs = landscape.certs
    found: set[str] = set()
    for cell in landscape.cells:
        answer = await agent_recordings(cell.host.ip, AGENT_PORT, ca=certs.ca_cert,
                                        certificate=certs.api_client_cert,
                                        private_key=certs.api_client_key)
        found |= {r.recording_id for r in answer.recordings}
    return found


async def test_record_start_without_the_permission_is_refused_and_arms_nothing(
        landscape: Landscape) -> None:
    frank = make_user("frank-auditor")  # sees the app, may not capture it
    landscape.cc.grant(frank, "auditor", landscape.space)
    token, refresh = landscape.uaa.issue_pair(frank)
    before = await agents_recordings(landscape)
    start = await cli(landscape.cf_home(token, refresh), "record", "start", "cf", "rec-app",
                      "-i", "lo", "--keep", "1m", "udp", "port", "9999")
    err = start.stderr.decode()
    assert start.returncode == 1 and start.stdout == b"", err  # could not start (user guide)
    assert "you may not capture app rec-app" in err and "Space Developer" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert await agents_recordings(landscape) == before
    assert not [e for e in landscape.api_events("recording_started")
                if e["user"] == frank.user_name]
    listing = await ask(landscape, token, ListRecordings())
    assert isinstance(listing, RecordingList) and listing.recordings == []


async def triggers_metric(landscape: Landscape, outcome: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{landscape.api_url}/metrics")).text
    prefix = f'pcapd_recording_triggers_total{{outcome="{outcome}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines()
               if line.startswith(prefix))


async def test_a_second_trigger_within_the_interval_is_counted_not_stored(
        landscape: Landscape) -> None:
    """The same incident seen by both instances (recorder.trigger_interval, 5 minutes): one
    stored window; the other trigger is counted in ``record list`` and an audit line."""
    token, refresh = developer_tokens(landscape)
    suppressed_before = await triggers_metric(landscape, "suppressed")
    rid = await started(landscape, token, record(landscape, Trigger(
        filter="udp port 9999 and udp[8] = 0x54", after=1.0), keep=30))
    await send_marked(landscape, "calm")
    for index, container in enumerate(containers(landscape)):
        await send_udp(container, "127.0.0.1", 9999, 1, marker=f"Trigger-{index}".encode())
    with trio.fail_after(60):
        while True:
            listing = await ask(landscape, token, ListRecordings(recording_ids=[rid]))
            assert isinstance(listing, RecordingList)
            shown, = listing.recordings
            if shown.triggers_saved + shown.triggers_suppressed >= 2:
                break
            await trio.sleep(0.3)  # the api handles triggers on its own: nothing else to watch
    assert (shown.triggers_saved, shown.triggers_suppressed) == (1, 1)
    stored = await stored_trigger(landscape, token, rid)
    captures = await ask(landscape, token, ListCaptures())
    assert isinstance(captures, CaptureList)
    assert [c.capture_id for c in captures.captures if rid[:8] in c.target] == [
        stored.capture_id]
    rows = await cli({**landscape.cf_home(token, refresh), "COLUMNS": "200"}, "record", "list",
                     "--json")
    row, = [r for r in json.loads(rows.stdout) if r["recording_id"] == rid]
    assert (row["triggers_fired"], row["triggers_suppressed"]) == (1, 1)
    line, = [e for e in landscape.api_events("recording_trigger_suppressed")
             if e["recording_id"] == rid]
    assert line["origin"] in ("rec-app/0", "rec-app/1") and line["user"] == ALICE.user_name
    assert await triggers_metric(landscape, "suppressed") == suppressed_before + 1
    assert isinstance(await ask(landscape, token, RecordStop(recording_id=rid)), RecordingList)


# --- ten times --max-bytes: the agent stays within its budget -----------------------------------

BUDGET = 16 << 20
"""--max-bytes of these tests: ten times it dwarfs what the agent needs whatever it keeps."""
DATAGRAM = 1400
SLACK = 8 << 20
"""The interpreter's and the allocator's own growth under load (measured: 2-5 MiB)."""
KERNEL_RING = DEFAULT_BUFFER_SIZE
"""libpcap's kernel ring of the recording's capture, mapped into the agent (TPACKET_V3)."""


@pytest.fixture(scope="module", params=["memory", "directory"])
def lean(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    """One cell, one instance; its agent keeps rings in its memory, or in a directory."""
    tmp = tmp_path_factory.mktemp(f"record-{request.param}")
    recorder: dict[str, object] = {"storage": request.param}
    if request.param == "directory":
        recorder["directory"] = str(tmp / "rings")
    with Landscape(tmp, cells=1, vms=0, agent_settings={"recorder": recorder}) as built:
        built.rec_app = built.deploy_app("lean-app", instances=1)  # type: ignore[attr-defined]
        yield built


@dataclass
class Peaks:
    """The most the agent held at any moment sampled."""

    anon: int = 0
    """The process's anonymous memory (its heap: where a ring in memory is)."""
    mapped: int = 0
    """Its mapped pages (libraries, and libpcap's kernel ring, mapped into the process)."""
    disk: int = 0
    """Bytes allocated to the ring's files (``du``)."""
    apparent: int = 0
    """Bytes of the ring's files (their sizes)."""
    samples: int = 0

    def sample(self, pid: int, files: Path | None) -> None:
        self.anon = max(self.anon, rss(pid, "RssAnon"))
        self.mapped = max(self.mapped, rss(pid, "RssFile") + rss(pid, "RssShmem"))
        if files is not None:
            sizes = [(st.st_size, st.st_blocks * 512) for st in _stats(files)]
            self.apparent = max(self.apparent, sum(size for size, _ in sizes))
            self.disk = max(self.disk, sum(blocks for _, blocks in sizes))
        self.samples += 1


def rss(pid: int, kind: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kb, = [line.split()[1] for line in status.splitlines() if line.startswith(f"{kind}:")]
    return int(kb) * 1024


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _stats(directory: Path) -> list[os.stat_result]:
    found = []
    for path in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
            found.append(path.stat())
    return found


async def test_ten_times_max_bytes_keeps_the_agent_within_its_budget(
        lean: Landscape) -> None:
    """An instance sends ten times ``--max-bytes`` while the agent is sampled from outside.

    In a directory the ring's files never hold more than ``max_bytes``: the oldest pieces make
    room before a piece is written (pcapd/agent/ring.py), so their sizes are bounded exactly;
    ``du`` adds each file's last partial block — at most 17 segment files (a rotated segment
    holds more than max_bytes/8 less a piece of max_bytes/16), ≤ 68 KiB with 4 KiB blocks;
    one segment (max_bytes/8) is the bound asserted, leaving room for a filesystem that
    allocates ahead. The agent's RSS is read in two parts: its mapped pages grow by the
    capture's kernel ring (32 MiB, mapped in and touched as traffic passes) and no more; its
    anonymous memory by at most the ring (in memory only), two read batches in flight (4096
    packets each: the capture's buffer and the bytes handed to the ring) and :data:`SLACK`."""
    storage = lean.agent_settings["recorder"]["storage"]  # type: ignore[index]
    token, _ = developer_tokens(lean)
    agent = lean.cells[0].agent
    assert agent is not None
    pid = agent.popen.pid  # `ip netns exec` execs the agent: the same process
    assert "agent" in cmdline(pid)
    anon, mapped = rss(pid, "RssAnon"), rss(pid, "RssFile") + rss(pid, "RssShmem")
    answer = await ask(lean, token, Record(
        target=CfTarget(app=lean.rec_app.guid),  # type: ignore[attr-defined]
        options=CaptureOptions(device="lo", filter="udp port 9999"),
        ring=RecordRing(keep=600, max_bytes=BUDGET)))
    assert isinstance(answer, RecordingStarted), answer
    rid = answer.recording_id
    files = (Path(lean.agent_settings["recorder"]["directory"]) / f"{rid}-0"  # type: ignore[index]
             if storage == "directory" else None)
    container = next(iter(lean.cells[0].containers.values()))
    peaks = Peaks()
    sent = 0
    async with trio.open_nursery() as nursery:
        async def sampler() -> None:
            while True:
                peaks.sample(pid, files)
                await trio.sleep(0.02)  # a sampling period, not synchronisation

        nursery.start_soon(sampler)
        with trio.fail_after(300):
            while True:
                ring, = await rings_of(lean, token, rid)
                epb = ring.bytes // ring.packets if ring.packets else DATAGRAM
                if ring.captured * epb >= 10 * BUDGET:
                    break
                await send_udp(container, "127.0.0.1", 9999, BUDGET // DATAGRAM,
                               size=DATAGRAM, marker=b"flood")
                sent += BUDGET // DATAGRAM
        peaks.sample(pid, files)
        nursery.cancel_scope.cancel()
    assert ring.bytes <= BUDGET and ring.aged_out_size > 0
    assert ring.captured == ring.packets + ring.aged_out_size + ring.aged_out_time
    batches = 2 * 4096 * epb
    grew, kernel = peaks.anon - anon, peaks.mapped - mapped
    report = (f"{storage}: {peaks.samples} samples, {sent} datagrams sent, "
              f"{ring.captured} captured ({ring.captured * epb >> 20} MiB), kernel dropped "
              f"{ring.kernel_dropped}; anonymous memory grew {grew >> 10} KiB, mapped "
              f"{kernel >> 10} KiB; disk {peaks.disk}, apparent {peaks.apparent}")
    assert kernel <= KERNEL_RING + (4 << 20), report
    if files is None:
        assert grew <= BUDGET + batches + SLACK, report
    else:
        assert 0 < peaks.apparent <= BUDGET, report
        assert peaks.disk <= BUDGET + BUDGET // 8, report
        assert grew <= batches + SLACK, report  # the ring is not in memory
    stopped = await ask(lean, token, RecordStop(recording_id=rid))
    assert isinstance(stopped, RecordingList)
    if files is not None:
        with trio.fail_after(10):
            while True:
                if not _stats(files.parent):  # the files go in a worker thread, at once
                    break
                await trio.sleep(0.05)
