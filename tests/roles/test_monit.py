"""The monit role: the snippets pass ``monit -t``, and pcapd-ctl starts and drains a process.

pcapd-ctl runs here against a stand-in for pcapd (a small script taking the same arguments)
that records what happens to it: its pid, the SIGTERM, the end of its drain. So the tests see
the pid file name the right process, the stop wait for the drain, a stuck process get SIGKILL
after the timeout, and a stale pid file never be signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONIT = ROOT / "roles" / "monit"
CTL = MONIT / "pcapd-ctl"
IN_CI = os.environ.get("CI") == "true"

STAND_IN = """\
import os, signal, sys, time
role, flag, config = sys.argv[1:4]
settings = dict(line.split(": ", 1) for line in open(config).read().splitlines() if line)
if sys.argv[4:] == ["--check"]:
    sys.exit(1 if settings.get("valid") == "no" else 0)
events = open(config + ".events", "a", buffering=1)
events.write(f"started {os.getpid()}\\n")
def term(signum, frame):
    events.write("SIGTERM\\n")
    if settings.get("ignore_term") == "yes":
        return
    time.sleep(float(settings.get("drain", "0")))
    events.write("drained\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(0.05)
"""


class Role:
    """pcapd-ctl for one role, with its settings pointing into a temporary directory."""

    def __init__(self, tmp: Path, role: str = "agent") -> None:
        self.role = role
        self.tmp = tmp
        self.stand_in = tmp / "pcapd"
        self.stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
        self.stand_in.chmod(0o755)
        self.config = tmp / f"{role}.yml"
        self.events_file = tmp / f"{role}.yml.events"
        self.pidfile = tmp / "run" / f"pcapd-{role}.pid"
        self.env = {**os.environ, "PCAPD": str(self.stand_in), "PCAPD_CONFIG": str(self.config),
                    "PCAPD_RUN_DIR": str(tmp / "run"), "PCAPD_LOG_DIR": str(tmp / "log"),
                    "PCAPD_STOP_TIMEOUT": "5"}

    def configure(self, **settings: str) -> None:
        self.config.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))

    def ctl(self, action: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CTL), action, self.role], capture_output=True, text=True,
                              timeout=60, check=False, env={**self.env, **env})

    def events(self) -> list[str]:
        return self.events_file.read_text().splitlines() if self.events_file.exists() else []

    def started_pids(self) -> list[int]:
        return [int(e.split()[1]) for e in self.events() if e.startswith("started ")]

    def kill_leftovers(self) -> None:
        """SIGKILL stand-ins still running: by pid, each checked to be this role's stand-in."""
        for pid in self.started_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if alive(pid) and str(self.stand_in).encode() in cmdline \
                    and str(self.config).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running, not a zombie left for an init that does not reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Role]:
    role = Role(tmp_path)
    role.configure(drain="1.0")
    try:
        yield role
    finally:
        role.kill_leftovers()


def test_start_writes_the_pid_of_the_process_and_is_idempotent(agent: Role) -> None:
    first = agent.ctl("start")
    assert first.returncode == 0, first.stderr
    (pid,) = agent.started_pids()
    assert agent.pidfile.read_text().strip() == str(pid)  # pcapd's own pid, not a wrapper's
    assert alive(pid)
    assert os.getsid(pid) == pid  # its own session: monit's process group may go away
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"MALLOC_MMAP_THRESHOLD_=131072" in environ  # glibc keeps the RSS flat
    again = agent.ctl("start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert agent.started_pids() == [pid]


def test_stop_sends_sigterm_and_waits_for_the_drain(agent: Role) -> None:
    assert agent.ctl("start").returncode == 0
    (pid,) = agent.started_pids()
    began = time.monotonic()
    stop = agent.ctl("stop")
    took = time.monotonic() - began
    assert stop.returncode == 0, stop.stderr
    assert agent.events()[1:] == ["SIGTERM", "drained"]
    assert 1.0 <= took < 5.0  # waited for the 1 s drain, not for the timeout
    assert not alive(pid)
    assert not agent.pidfile.exists()
    assert "SIGKILL" not in stop.stderr
    assert agent.ctl("stop").returncode == 0  # stopping a stopped role is fine


def test_a_process_that_outlives_the_timeout_is_killed(agent: Role) -> None:
    agent.configure(ignore_term="yes")
    assert agent.ctl("start").returncode == 0
    (pid,) = agent.started_pids()
    began = time.monotonic()
    stop = agent.ctl("stop", PCAPD_STOP_TIMEOUT="0.5")
    took = time.monotonic() - began
    assert stop.returncode == 0, stop.stderr
    assert "SIGKILL" in stop.stderr
    assert agent.events()[1:] == ["SIGTERM"]
    assert 0.5 <= took < 4.0
    assert not alive(pid)
    assert not agent.pidfile.exists()


def test_a_stale_pid_file_is_never_signalled(agent: Role) -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        agent.pidfile.parent.mkdir(parents=True)
        agent.pidfile.write_text(f"{bystander.pid}\n")  # alive, but not pcapd with this config
        assert agent.ctl("stop").returncode == 0
        assert bystander.poll() is None
        assert not agent.pidfile.exists()
        agent.pidfile.write_text(f"{bystander.pid}\n")
        assert agent.ctl("start").returncode == 0  # starts, instead of "already running"
        (pid,) = agent.started_pids()
        assert agent.pidfile.read_text().strip() == str(pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_config_that_fails_its_check_is_not_started(agent: Role) -> None:
    agent.configure(valid="no")
    start = agent.ctl("start")
    assert start.returncode == 1
    assert "--check" in start.stderr and start.stderr.count("\n") == 1
    assert agent.started_pids() == []
    assert not agent.pidfile.exists()


def test_misuse_exits_2() -> None:
    for args in ([], ["start"], ["start", "router"], ["restart", "agent"]):
        result = subprocess.run([str(CTL), *args], capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 2, args
        assert result.stderr.startswith("usage: pcapd-ctl")


def stop_timeout(snippet: str) -> int:
    words = snippet.split("stop program", 1)[1].split("\n", 1)[0].split()
    return int(words[words.index("timeout") + 1])


@pytest.mark.parametrize("role", ["agent", "api"])
def test_monits_stop_timeout_outlasts_pcapd_ctls(role: str) -> None:
    snippet = (MONIT / f"pcapd-{role}.monitrc").read_text()
    ctl_default = int(CTL.read_text().split("PCAPD_STOP_TIMEOUT:-", 1)[1].split("}", 1)[0])
    assert stop_timeout(snippet) > ctl_default >= 30 + 10  # above the default drain_timeout


@pytest.mark.skipif(shutil.which("monit") is None and not IN_CI,
                    reason="needs monit (dev/setup installs it)")
@pytest.mark.parametrize("role", ["agent", "api"])
def test_monit_accepts_the_snippet(role: str, tmp_path: Path) -> None:
    snippet = (MONIT / f"pcapd-{role}.monitrc").read_text()
    assert "/opt/pcapd/bin/pcapd-ctl" in snippet
    control = tmp_path / "monitrc"
    control.write_text(f"set idfile {tmp_path}/monit.id\nset statefile {tmp_path}/monit.state\n"
                       + snippet.replace("/opt/pcapd/bin/pcapd-ctl", str(CTL)))
    control.chmod(0o600)  # monit refuses a control file others can read
    result = subprocess.run(["monit", "-t", "-c", str(control)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Control file syntax OK" in result.stdout + result.stderr
    assert "does not exist" not in result.stdout + result.stderr


REAPER = """\
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
while os.wait()[0] != child.pid:
    pass
"""


def monit_status(control: Path) -> str:
    return subprocess.run(["monit", "-c", str(control), "status"], capture_output=True,
                          text=True, timeout=30, check=False).stdout


def wait_for(what: str, check: Callable[[], bool], seconds: float = 20) -> None:
    """Poll ``check``: monit's state is only seen through its status command."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.root
@pytest.mark.skipif(shutil.which("monit") is None and not IN_CI,
                    reason="needs monit (dev/setup installs it)")
def test_monit_starts_and_drains_the_role(tmp_path: Path) -> None:
    """A real monit daemon with the snippet, as PID 1's child in its own PID namespace (an init
    that reaps, as on a VM: a stopped process must not linger as a zombie). Pids recorded in
    there are the namespace's, so nothing here signals them: killing the namespace's init ends
    whatever is left."""
    agent, tmp = Role(tmp_path), tmp_path
    agent.configure(drain="1.0")
    control = tmp / "monitrc"
    settings = " ".join(f"{k}={agent.env[k]}" for k in
                        ("PCAPD", "PCAPD_CONFIG", "PCAPD_RUN_DIR", "PCAPD_LOG_DIR"))
    snippet = (MONIT / "pcapd-agent.monitrc").read_text() \
        .replace("/opt/pcapd/bin/pcapd-ctl", f"/usr/bin/env {settings} {CTL}") \
        .replace("/var/run/pcapd/", f"{tmp}/run/")
    control.write_text(f"set daemon 1\nset log {tmp}/monit.log\nset idfile {tmp}/monit.id\n"
                       f"set statefile {tmp}/monit.state\nset pidfile {tmp}/monit.pid\n"
                       f"set httpd unixsocket {tmp}/monit.sock\n  allow localhost\n" + snippet)
    control.chmod(0o600)
    monit = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                              sys.executable, "-c", REAPER, "monit", "-I", "-c", str(control)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("monit to start pcapd", lambda: len(agent.started_pids()) == 1
                 and "status                       OK" in monit_status(control))
        subprocess.run(["monit", "-c", str(control), "stop", "pcapd-agent"], check=True,
                       timeout=30, capture_output=True)
        wait_for("monit to stop pcapd", lambda: "Not monitored" in monit_status(control))
        assert agent.events()[1:] == ["SIGTERM", "drained"]
        log = (tmp / "monit.log").read_text()
        assert "'pcapd-agent' stop action done" in log, log
        assert not agent.pidfile.exists()
    finally:
        monit.kill()  # unshare --kill-child takes the namespace's init, and with it monit, along
        monit.wait()
