"""The jobs' bin/drain against a stand-in for the bpm-run process: the BOSH drain contract
(one integer on stdout; -N: call again in N seconds; 0: done) and exactly one SIGTERM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.release.release_tools import localize, needs_ruby, pcapd_command, render_job

pytestmark = needs_ruby

# Stands in for pcapd: counts SIGTERMs in a file; drains (exits 0) once the test creates
# `release`; a second SIGTERM makes it exit 3 at once, as pcapd's second signal would.
SERVICE = """
import os, signal, sys, time
count, release = sys.argv[1], sys.argv[2]
terms = 0
def on_term(signum, frame):
    global terms
    terms += 1
    with open(count, "w") as f:
        f.write(str(terms))
    if terms > 1:
        os._exit(3)
signal.signal(signal.SIGTERM, on_term)
open(count, "w").write("0")
while not (terms and os.path.exists(release)):
    time.sleep(0.01)
"""


@dataclass
class Drain:
    job: str
    script: Path
    pidfile: Path
    state: Path
    log: Path
    tmp: Path

    def __call__(self, *args: str) -> str:
        env = {**os.environ, "PCAPD_DRAIN_PIDFILE": str(self.pidfile),
               "PCAPD_DRAIN_STATE": str(self.state), "PCAPD_DRAIN_LOG": str(self.log)}
        done = subprocess.run(["bash", str(self.script), *args], capture_output=True,
                              text=True, env=env, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout

    def start_service(self) -> tuple[subprocess.Popen[bytes], Path, Path]:
        count, release = self.tmp / "terms", self.tmp / "release"
        count.unlink(missing_ok=True)
        release.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", SERVICE, str(count), str(release)])
        deadline = time.monotonic() + 10
        while not count.exists():  # its handler is installed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc, count, release


def make_drain(job: str, pki: dict[str, str], tmp_path: Path) -> Drain:
    """Render ``job`` with drain_timeout 7.5 and aim its bin/drain at files under tmp_path."""
    if job == "pcapd-agent":
        props = {"pcapd": {"agent": {"drain_timeout": 7.5, "tls": {
            "certificate": pki["agent"], "private_key": pki["agent-key"], "client_ca": pki["ca"]}}}}
    else:
        props = {"pcapd": {"api": {"drain_timeout": 7.5, "cf": {"api": "https://api.example.com"},
                                   "agents": {"tls": {"certificate": pki["api-client"],
                                                      "private_key": pki["api-client-key"],
                                                      "ca": pki["ca"]}}}}}
    rendered = render_job(job, props, tmp_path / "job")
    script = rendered / "bin/drain"
    text = script.read_text()
    assert f"JOB={job}\n" in text
    assert "DRAIN_TIMEOUT=8\n" in text  # 7.5 rounded up
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True, timeout=60)
    return Drain(job, script, tmp_path / "run/job.pid", tmp_path / "data/drain.state",
                 tmp_path / "log/drain.log", tmp_path)


@pytest.fixture(params=["pcapd-agent", "pcapd-api"])
def drain(request: pytest.FixtureRequest, pki: dict[str, str], tmp_path: Path) -> Drain:
    return make_drain(request.param, pki, tmp_path)


def test_nothing_running_is_drained(drain: Drain) -> None:
    assert drain("job_shutdown", "hash_unchanged") == "0\n"
    drain.pidfile.parent.mkdir(parents=True)
    drain.pidfile.write_text("not-a-pid\n")
    assert drain("job_changed", "hash_changed", "pcapd") == "0\n"
    drain.pidfile.write_text("999999999\n")  # no such process
    assert drain("job_check_status", "hash_unchanged") == "0\n"
    assert "is not running: done" in drain.log.read_text()


def test_one_sigterm_then_dynamic_drain_until_the_process_is_gone(drain: Drain) -> None:
    drain.pidfile.parent.mkdir(parents=True)
    proc, count, release = drain.start_service()
    try:
        assert drain("job_changed", "hash_changed", "pcapd") == "-2\n"
        pid, deadline = drain.state.read_text().split()
        assert int(pid) == proc.pid
        assert 0 < int(deadline) - time.time() <= 8 + 5 + 1  # drain_timeout + grace
        limit = time.monotonic() + 10
        while count.read_text() != "1":  # the service got its SIGTERM
            assert time.monotonic() < limit
            time.sleep(0.01)

        # still draining: called again, no second SIGTERM
        assert drain("job_check_status", "hash_unchanged") == "-2\n"
        assert drain("job_check_status", "hash_unchanged") == "-2\n"
        release.touch()
        assert proc.wait(timeout=10) == 0  # drained; a second SIGTERM would exit 3
        assert count.read_text() == "1"
        assert drain("job_check_status", "hash_unchanged") == "0\n"
        assert not drain.state.exists()
        log = drain.log.read_text()
        assert f"SIGTERM sent to {drain.job} (pid {proc.pid}); waiting up to 8s + 5s" in log
    finally:
        proc.kill()
        proc.wait()


def test_past_the_deadline_it_gives_up_without_a_second_signal(drain: Drain) -> None:
    drain.pidfile.parent.mkdir(parents=True)
    drain.state.parent.mkdir(parents=True)
    proc, count, _ = drain.start_service()
    try:
        drain.state.write_text(f"{proc.pid} {int(time.time()) - 1}\n")  # drained, time is up
        assert drain("job_check_status", "hash_unchanged") == "0\n"
        assert count.read_text() == "0"
        assert proc.poll() is None  # left to bpm stop
        assert "still running past drain_timeout" in drain.log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_state_of_an_earlier_process_starts_a_new_drain(drain: Drain) -> None:
    drain.pidfile.parent.mkdir(parents=True)
    drain.state.parent.mkdir(parents=True)
    proc, count, release = drain.start_service()
    try:
        drain.state.write_text("999999999 9999999999\n")  # a drain of a process long gone
        assert drain("job_changed", "hash_unchanged") == "-2\n"
        assert drain.state.read_text().split()[0] == str(proc.pid)
        release.touch()
        assert proc.wait(timeout=10) == 0
        assert count.read_text() == "1"
    finally:
        proc.kill()
        proc.wait()


def test_drains_a_real_agent(pki: dict[str, str], tmp_path: Path) -> None:
    """The rendered agent config, run by pcapd itself: one drain call stops it cleanly."""
    drain = make_drain("pcapd-agent", pki, tmp_path)
    rendered = drain.script.parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = localize("pcapd-agent", rendered)
    config.write_text(config.read_text().replace('"0.0.0.0"', '"127.0.0.1"')
                      .replace('"port": 9494', f'"port": {port}'))
    proc = subprocess.Popen([*pcapd_command(), "agent", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the agent did not start listening"
                time.sleep(0.05)
        drain.pidfile.parent.mkdir(parents=True)
        drain.pidfile.write_text(f"{proc.pid}\n")
        assert drain("job_shutdown", "hash_unchanged") == "-2\n"
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "draining" in err
        assert drain("job_check_status", "hash_unchanged") == "0\n"
    finally:
        proc.kill()
        proc.wait()
