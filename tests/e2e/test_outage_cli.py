"""The CLI at 3 a.m. (issue 13): files never lost, partial captures named, signals in every phase.

Each test runs the console script as a user would (a child process) against the landscape's
real ``pcapd api`` and ``pcapd agent`` processes, the fakes of UAA and Cloud Controller, and
reads files with capinfos/tshark. The landscape has three cells and ``my-app`` four instances:
0 and 1 run on cells whose agents run, 2 on the cell whose agent is stopped (a capture that
includes it can only be partial), 3 is CRASHED (named, but it does not make a capture partial).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.platform_landscape import Landscape, api_captures, developer_tokens, free_port
from tests.e2e.procs import AGENT_PORT, PCAPD, Lines, _pump_lines, wait_until
from tests.netns import netns, send_udp, socket_in_netns
from tests.readers import run_tool, tshark_fields
from tests.s3_server import S3Server, new_bucket, running_moto
from tests.silent import SilentServer

pytestmark = [pytest.mark.root, pytest.mark.tools]

EXIT_PARTIAL = 3
HEALTHY = ("--instance", "0", "--instance", "1")
SIGNAL_PROMPTNESS = 3.0
"""Seconds a signalled pcapd may take to exit (it should be at once; the machine is shared)."""


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("landscape"), cells=3, vms=0) as built:
        app = built.deploy_app("my-app", instances=4)  # (agents see only namespaces made
        app.processes["web"].instances[3].state = "CRASHED"  # before they start: one app)
        dead = built.cells[2].agent
        assert dead is not None
        dead.stop()
        yield built


@pytest.fixture
def env(landscape: Landscape) -> dict[str, str]:
    return landscape.cf_home(*developer_tokens(landscape))


def pcapd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PCAPD, *args], capture_output=True, text=True, timeout=120,
                          check=False, env=env, stdin=subprocess.DEVNULL)


def interfaces(path: Path) -> str:
    """capinfos' interface list and comments (it must read the file without a warning)."""
    return run_tool("capinfos", path)


# --- 1. nothing touched until the capture has started ---------------------------------------


def test_a_typo_in_the_app_leaves_yesterdays_capture_alone(env: dict[str, str],
                                                           tmp_path: Path) -> None:
    yesterday = tmp_path / "yesterday.pcapng"
    yesterday.write_bytes(b"yesterday" * 1000)
    refused = pcapd("capture", "cf", "my-ap", "-w", str(yesterday), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "yesterday.pcapng: the file exists: pass --force (-F)" in refused.stderr
    forced = pcapd("capture", "cf", "my-ap", "-F", "-w", str(yesterday), env=env)
    assert forced.returncode == 1, forced.stderr
    assert "INVALID_REQUEST: app my-ap not found" in forced.stderr
    assert yesterday.read_bytes() == b"yesterday" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yesterday.pcapng"]


def test_forced_capture_replaces_the_file_once_it_ran(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"old")
    done = pcapd("capture", "cf", "my-app", *HEALTHY, "-i", "lo", "--duration", "1", "-F",
                 "-w", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert "my-app/0:lo" in interfaces(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcapng"]


FAILED_STARTS = {
    "a bad filter": (["--instance", "0", "-i", "lo", "-f", "tcp port"],
                     'invalid BPF filter "tcp port"'),
    "an unreachable api": (["--instance", "0", "-i", "lo", "--api",
                            f"http://127.0.0.1:{free_port()}"], "cannot connect to"),
    "a missing device": (["--instance", "0", "-i", "eth7"], "eth7 not in the container"),
}


@pytest.mark.parametrize("why", FAILED_STARTS)
def test_a_start_that_fails_leaves_the_file_byte_identical(env: dict[str, str], tmp_path: Path,
                                                           why: str) -> None:
    args, said = FAILED_STARTS[why]
    kept = tmp_path / "kept.pcapng"
    kept.write_bytes(b"yesterday" * 1000)
    refused = pcapd("capture", "cf", "my-app", *args, "-w", str(kept), env=env)
    assert refused.returncode == 2, refused.stderr  # without -F: refused before anything
    assert "kept.pcapng: the file exists: pass --force (-F)" in refused.stderr
    forced = pcapd("capture", "cf", "my-app", *args, "-F", "-w", str(kept), env=env)
    assert forced.returncode == 1, forced.stderr
    assert said in forced.stderr.splitlines()[-1], forced.stderr
    assert "Traceback" not in forced.stderr
    assert kept.read_bytes() == b"yesterday" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pcapng"]


async def test_the_capture_grows_in_a_hidden_partial_file_renamed_at_the_end(
        env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"old")
    while_running: list[tuple[list[str], bytes]] = []

    def look() -> None:
        while_running.append((sorted(os.listdir(tmp_path)), out.read_bytes()))

    status, stderr = await interrupted_once_running(
        ["capture", "cf", "my-app", *HEALTHY, "-i", "lo", "-F", "-w", str(out)], env,
        signal.SIGINT, running="capturing 2 sources", before_signal=look)
    assert status == 0, stderr.text
    assert while_running == [([".out.pcapng.partial", "out.pcapng"], b"old")]
    assert sorted(os.listdir(tmp_path)) == ["out.pcapng"]
    assert "my-app/0:lo" in interfaces(out)


def test_a_download_never_destroys_a_file(env: dict[str, str], tmp_path: Path) -> None:
    stored = pcapd("capture", "cf", "my-app", "--instance", "0", "-i", "lo", "--duration", "1",
                   "--upload", env=env)
    assert stored.returncode == 0, stored.stderr
    found = re.search(r"stored capture ([0-9a-f]{32})", stored.stderr)
    assert found, stored.stderr
    capture_id = found[1]
    kept = tmp_path / "kept.pcapng"
    kept.write_bytes(b"keep me")

    refused = pcapd("captures", "download", capture_id, "-w", str(kept), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "kept.pcapng: the file exists: pass --force (-F)" in refused.stderr
    unknown = pcapd("captures", "download", "f" * 32, "-F", "-w", str(kept), env=env)
    assert unknown.returncode == 1, unknown.stderr
    assert "Traceback" not in unknown.stderr and len(unknown.stderr.splitlines()) == 1
    assert kept.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pcapng"]

    forced = pcapd("captures", "download", capture_id[:8], "-F", "-w", str(kept), env=env)
    assert forced.returncode == 0, forced.stderr
    assert "my-app/0:lo" in interfaces(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pcapng"]


def test_a_merge_never_destroys_a_file(env: dict[str, str], tmp_path: Path) -> None:
    captured = tmp_path / "captured.pcapng"
    done = pcapd("capture", "cf", "my-app", "--instance", "0", "-i", "lo", "--duration", "1",
                 "-w", str(captured), env=env)
    assert done.returncode == 0, done.stderr
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"not a capture at all")
    merged = tmp_path / "merged.pcapng"
    merged.write_bytes(b"keep me")
    names = sorted(p.name for p in tmp_path.iterdir())

    refused = pcapd("merge", "-w", str(merged), str(captured), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "merged.pcapng: the file exists: pass --force (-F)" in refused.stderr
    for bad in (garbage, tmp_path / "missing.pcapng"):
        failed = pcapd("merge", "-F", "-w", str(merged), str(captured), str(bad), env=env)
        assert failed.returncode == 1, failed.stderr
        assert bad.name in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert merged.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == names

    forced = pcapd("merge", "-F", "-w", str(merged), str(captured), env=env)
    assert forced.returncode == 0, forced.stderr
    assert "my-app/0:lo" in interfaces(merged)


# --- 4. a partial capture does not look complete ---------------------------------------------


def test_partial_capture_says_so_in_summary_file_and_exit_status(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "partial.pcapng"
    run = pcapd("capture", "cf", "my-app", "-i", "lo", "--duration", "1", "-w", str(out),
                env=env)
    assert run.returncode == EXIT_PARTIAL, run.stderr
    summary = run.stderr.strip().splitlines()[-1]
    assert "from 2 of 3 sources; my-app/2 unavailable (cannot connect to its agent" in summary
    assert "; my-app/3 is CRASHED" in summary
    info = interfaces(out)
    assert "pcapd: partial capture: 2 of 3 sources; my-app/2 unavailable" in info  # SHB comment
    assert "Name = my-app/2:lo" in info and "not captured: cannot connect" in info
    assert "Number of interfaces in file: 3" in info
    tshark_fields(out, "frame.interface_name")  # reads with no warning

    allowed = pcapd("capture", "cf", "my-app", "-i", "lo", "--duration", "1", "--allow-partial",
                    "-F", "-w", str(out), env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "2 of 3 sources" in allowed.stderr


def test_an_instance_the_platform_reports_crashed_is_named_but_not_partial(
        env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "crashed.pcapng"
    run = pcapd("capture", "cf", "my-app", "--instance", "0", "--instance", "3", "-i", "lo",
                "--duration", "1", "-w", str(out), env=env)
    assert run.returncode == 0, run.stderr
    summary = run.stderr.strip().splitlines()[-1]
    assert "from 1 source; my-app/3 is CRASHED" in summary, summary
    assert "partial" not in interfaces(out)


def test_stored_partial_capture_is_marked_in_the_list(env: dict[str, str]) -> None:
    run = pcapd("capture", "cf", "my-app", "-i", "lo", "--duration", "1", "--upload", env=env)
    assert run.returncode == EXIT_PARTIAL, run.stderr
    assert "from 2 of 3 sources; my-app/2 unavailable" in run.stderr
    listed = pcapd("captures", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "completed - partial: 2 of 3 sources" in listed.stdout


# --- 5. the effective limits are said when the capture starts --------------------------------


# --- 3. signals in every phase, also with SIGINT ignored ----------------------------------------


IGNORING_SIGINT = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]
"""Runs a command with SIGINT ignored, as bash starts ``pcapd … &`` in a script."""


async def interrupted_once_running(args: list[str], env: dict[str, str], signum: int,
                                   running: str = "capturing ",
                                   before_signal: Callable[[], None] = lambda: None,
                                   ) -> tuple[int, Lines]:
    """``pcapd ARGS`` started as a script's background job (SIGINT ignored), sent ``signum``
    once its stderr says ``running`` (and ``before_signal`` had a look); its exit status and
    stderr lines (:func:`signalled_when`)."""
    async def ready(stderr: Lines) -> None:
        await stderr.wait_for(lambda line: line.startswith(running))
        before_signal()

    status, _, stderr = await signalled_when(args, env, signum, ready=ready)
    return status, stderr


async def test_a_duration_beyond_the_apis_limit_is_said_at_the_start(env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    status, stderr = await interrupted_once_running(
        ["capture", "cf", "my-app", *HEALTHY, "-i", "lo", "--duration", "7200", "-w",
         str(tmp_path / "x.pcapng")], env, signal.SIGINT, running="limits:")
    assert status == 0, stderr.text
    assert "limits: 1h (the api's maximum; you asked 2h), 1.1 GB (the api's maximum)" \
        in stderr.lines, stderr.text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_during_a_running_capture_leaves_a_valid_file(
        env: dict[str, str], tmp_path: Path, signum: int) -> None:
    out = tmp_path / "running.pcapng"
    status, stderr = await interrupted_once_running(
        ["capture", "cf", "my-app", *HEALTHY, "-i", "lo", "-w", str(out)], env, signum,
        running="capturing 2 sources")
    assert status == 0, stderr.text
    assert "(stopped: stopped by the user)" in stderr.lines[-1], stderr.text
    assert "my-app/0:lo" in interfaces(out)
    assert not (tmp_path / ".running.pcapng.partial").exists()


@pytest.fixture
def hung_agent(landscape: Landscape) -> Iterator[SilentServer]:
    """Cell 2's agent (stopped) replaced by one that accepts connections and never answers:
    the api accepts a capture of my-app/2 and waits for that agent to start."""
    listener = socket_in_netns(landscape.cells[2].host.ns, socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", AGENT_PORT))
    with SilentServer(listener) as server:
        yield server


async def signalled_when(args: list[str], env: dict[str, str], signum: int,
                         ready: Callable[[Lines], Awaitable[None]] | None = None,
                         peer: SilentServer | None = None) -> tuple[int, float, Lines]:
    """``pcapd ARGS`` as a script's background job, sent ``signum`` once ``peer`` was
    connected to and ``ready`` (waiting on its stderr) returned; (exit status, seconds from
    the signal to the exit, stderr)."""
    process = await trio.lowlevel.open_process(
        [*IGNORING_SIGINT, PCAPD, *args], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = Lines()
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                assert process.stderr is not None
                nursery.start_soon(_pump_lines, process.stderr, stderr)
                if peer is not None:
                    assert await trio.to_thread.run_sync(peer.accepted.wait, 30), stderr.text
                if ready is not None:
                    await ready(stderr)
                sent = trio.current_time()
                process.send_signal(signum)
                status = await process.wait()
                return status, trio.current_time() - sent, stderr
    finally:
        if process.returncode is None:
            process.kill()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_while_the_agents_start_exits_130_at_once(
        landscape: Landscape, env: dict[str, str], hung_agent: SilentServer, tmp_path: Path,
        signum: int) -> None:
    out = tmp_path / "never.pcapng"
    status, took, stderr = await signalled_when(
        ["capture", "cf", "my-app", "--instance", "2", "-i", "lo", "-w", str(out)], env,
        signum, peer=hung_agent)  # the api accepted the capture and waits for the agent
    assert status == 130, stderr.text
    assert took < SIGNAL_PROMPTNESS, took
    assert stderr.lines[-1] == ("pcapd: interrupted before the capture started: nothing was "
                                "written"), stderr.text
    assert "Traceback" not in stderr.text
    assert os.listdir(tmp_path) == []

    async def let_go() -> bool:
        return await api_captures(landscape) == 0

    await wait_until(let_go, 30, "the api let the capture go")


@pytest.fixture(scope="module")
def s3_landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Landscape, S3Server]]:
    """One cell, one app instance, an api whose store is S3 (moto, which a test may stop)."""
    with running_moto() as s3, Landscape(tmp_path_factory.mktemp("s3-landscape"), cells=1,
                                         vms=0, storage=s3.storage(new_bucket())) as built:
        built.deploy_app("my-app", instances=1)
        yield built, s3


@contextmanager
def stalled(s3: S3Server) -> Iterator[None]:
    """S3 stalls: connections are accepted (by the kernel) and nothing is answered."""
    os.kill(s3.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(s3.pid, signal.SIGCONT)


def stored_captures(env: dict[str, str]) -> int:
    listed = pcapd("captures", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return len(json.loads(listed.stdout))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_while_the_api_stores_the_capture_ends_at_once(
        s3_landscape: tuple[Landscape, S3Server], signum: int) -> None:
    landscape, s3 = s3_landscape
    env = landscape.cf_home(*developer_tokens(landscape))
    before = await trio.to_thread.run_sync(stored_captures, env)
    with stalled(s3):
        async def storing(stderr: Lines) -> None:
            await stderr.wait_for(lambda line: line.startswith(
                "the capture has ended: the api is storing it"))

        status, took, stderr = await signalled_when(
            ["capture", "cf", "my-app", "-i", "lo", "--duration", "1", "--upload"], env,
            signum, ready=storing)
    assert status == 1, stderr.text
    assert took < SIGNAL_PROMPTNESS, took
    assert stderr.lines[-1] == ("pcapd: error: stopped waiting: the capture has ended and the "
                                "api goes on storing it; `pcapd captures list` shows it once "
                                "stored"), stderr.text

    async def stored() -> bool:  # it does, once S3 answers again
        return await trio.to_thread.run_sync(stored_captures, env) == before + 1

    await wait_until(stored, 60, "the api stored the capture")


def test_connecting_line_names_api_user_and_space(env: dict[str, str], tmp_path: Path) -> None:
    run = pcapd("capture", "cf", "my-app", *HEALTHY, "-i", "lo", "-c", "1", "--duration", "1",
                "-w", str(tmp_path / "x.pcapng"), env=env)
    first = run.stderr.splitlines()[0]
    assert first == f"connecting to {env['PCAPD_API']} (from PCAPD_API) as alice, org/dev", first


# --- 5. words: a closed pipe is not the user; one packet is one packet --------------------------


async def test_a_reader_that_closes_the_pipe_is_named_as_such() -> None:
    with netns() as ns, trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [PCAPD, "capture", "local", "--netns", ns.name, "-i", "lo", "-f", "udp port 9999",
             "-w", "-"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        stderr = Lines()
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None and process.stderr is not None
                nursery.start_soon(_pump_lines, process.stderr, stderr)
                assert await process.stdout.receive_some()  # the header: it runs
                await process.stdout.aclose()  # `| head -c 100` has what it wanted
                while process.returncode is None:  # the next write finds the pipe closed
                    await send_udp(ns, "127.0.0.1", 9999, 5)
                    with trio.move_on_after(0.5):
                        await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    assert process.returncode == 0, stderr.text
    assert "pcapd: the reader closed the pipe: stopping" in stderr.lines, stderr.text
    assert "(stopped: the reader closed the pipe)" in stderr.lines[-1], stderr.text
    assert "stopped by the user" not in stderr.text


async def test_one_packet_is_one_packet(tmp_path: Path) -> None:
    out = tmp_path / "one.pcapng"
    with netns() as ns, trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [PCAPD, "capture", "local", "--netns", ns.name, "-i", "lo", "-f", "udp port 9999",
             "-c", "1", "-w", str(out)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = Lines()
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(_pump_lines, process.stderr, stderr)
            await stderr.wait_for(lambda line: line.startswith("capturing 1 source"))
            while process.returncode is None:
                await send_udp(ns, "127.0.0.1", 9999, 1)
                with trio.move_on_after(0.5):
                    await process.wait()
    assert process.returncode == 0, stderr.text
    assert stderr.lines[-1].startswith(f"1 packet written to {out} from 1 source ("), stderr.text


# --- errors that show what exists ----------------------------------------------------------------


def test_an_unknown_instance_is_the_users_mistake_and_lists_those_there_are(
        env: dict[str, str]) -> None:
    run = pcapd("capture", "cf", "my-app", "--instance", "7", "-w", "/dev/null", env=env)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1] == ("pcapd: error: INVALID_REQUEST: my-app has no "
                                           "instance 7 (--instance); it has 0, 1, 2, 3 "
                                           "(`cf app my-app`)")


def test_an_unknown_device_names_the_instance_once_and_what_it_has(env: dict[str, str]) -> None:
    run = pcapd("capture", "cf", "my-app", "--instance", "0", "-i", "eth7", "-w", "/dev/null",
                env=env)
    assert run.returncode == 1, run.stderr
    error = run.stderr.splitlines()[-1]
    assert error == ("pcapd: error: INVALID_REQUEST: no source could be captured: my-app/0: "
                     "eth7 not in the container; it has: lo"), error
    assert "cell/" not in run.stderr


async def test_extcap_users_see_a_partial_capture_as_its_error(tmp_path: Path) -> None:
    """Wireshark shows an extcap's stderr when it exits non-zero: the partial summary."""
    fifo, log, out = tmp_path / "fifo", tmp_path / "extcap.log", tmp_path / "out.pcapng"
    os.mkfifo(fifo)
    with netns() as ns, trio.fail_after(60), out.open("wb") as sink:
        reader = await trio.lowlevel.open_process(["cat", str(fifo)], stdout=sink)
        process = await trio.lowlevel.open_process(
            [PCAPD, "--capture", "--extcap-interface", "pcapd-local", "--fifo", str(fifo),
             "--netns", f"{ns.name},{ns.name}-gone", "--device", "lo", "--log-file", str(log)],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            async def running() -> bool:  # its header reached the fifo's reader
                return out.stat().st_size > 0

            await wait_until(running, 30, "the extcap capture runs")
            process.terminate()  # as Wireshark stops an extcap
            assert process.stderr is not None
            shown = (await process.stderr.receive_some(65536)).decode()
            assert await process.wait() == EXIT_PARTIAL, shown
            await reader.wait()
        finally:
            for child in (process, reader):
                if child.returncode is None:
                    child.kill()
    assert f"from 1 of 2 sources; {ns.name}-gone unavailable" in shown, shown
    assert "partial capture: 1 of 2 sources" in interfaces(out)
