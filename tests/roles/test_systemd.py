"""The systemd units of roles/systemd: checked by systemd's own tools, then run in their sandbox.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` read a copy of each unit
whose paths point at this checkout (verify insists that ExecStart's program exists). systemd is
not PID 1 here, so the units cannot be started; instead ``unitexec.py`` applies what a unit
asks for by hand (capability bounding set, dynamic user, seccomp filter with the unit's syscall
groups and address families, memory W^X, read-only file system, hidden /proc and homes) and
runs the unit's own ExecStartPre and ExecStart lines: the agent captures in a namespace created
after it started, the api serves ``/status`` and creates its store, and both drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import trio

from pcapd.certs import init_certs
from pcapd.config.model import AgentConfig, ApiConfig
from tests.netns import Netns, netns, send_udp
from tests.readers import tshark_fields
from tests.roles.unitexec import NOBODY, service_settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "roles" / "systemd"
UNITEXEC = Path(__file__).with_name("unitexec.py")
PCAPD = Path(sys.executable).with_name("pcapd")
INSTALLED = "/opt/pcapd/bin/pcapd"
MAX_EXPOSURE = {"agent": 3.0, "api": 1.5}
"""`systemd-analyze security` exposure (0 = locked down, 10 = unprotected); the agent needs root
with CAP_SYS_ADMIN and CAP_NET_RAW, the api nothing."""
CONFIG_DEFAULTS: dict[str, type[msgspec.Struct]] = {"agent": AgentConfig, "api": ApiConfig}


def unit_path(role: str) -> Path:
    return UNITS / f"pcapd-{role}.service"


def render(role: str, directory: Path, replacements: dict[str, str]) -> Path:
    """A copy of the unit, same file name, with installed paths replaced by real ones."""
    text = unit_path(role).read_text().replace(INSTALLED, str(PCAPD))
    for old, new in replacements.items():
        text = text.replace(old, new)
    path = directory / unit_path(role).name
    path.write_text(text)
    return path


def exec_line(unit: Path, key: str, credentials: Path | None = None) -> list[str]:
    (value,) = service_settings(unit)[key]
    if credentials is not None:
        value = value.replace("%d", str(credentials))
    return shlex.split(value)


def seconds(value: str) -> float:
    """systemd time spans as used here: ``45s``, ``5min``, ``30``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.parametrize("role", ["agent", "api"])
def test_systemd_analyze_verify_is_clean(role: str, tmp_path: Path) -> None:
    unit = render(role, tmp_path, {})
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning at all, none to document


@pytest.mark.parametrize("role", ["agent", "api"])
def test_security_exposure_stays_low(role: str, tmp_path: Path) -> None:
    unit = render(role, tmp_path, {})
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(unit)], capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE[role], result.stdout


@pytest.mark.parametrize("role", ["agent", "api"])
def test_stopping_is_the_drain_and_outlasts_it(role: str) -> None:
    settings = service_settings(unit_path(role))
    drain = next(f.default for f in msgspec.structs.fields(CONFIG_DEFAULTS[role])
                 if f.name == "drain_timeout")
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["KillMode"] == ["mixed"]  # SIGTERM to pcapd alone, SIGKILL to all after
    assert settings["SendSIGKILL"] == ["yes"]
    assert seconds(settings["TimeoutStopSec"][-1]) >= drain + 10
    assert "ExecReload" not in settings  # no reload: restart drains (documented in the unit)
    assert settings["Restart"] == ["on-failure"]
    (check,) = settings["ExecStartPre"]
    (start,) = settings["ExecStart"]
    assert check == f"{start} --check"


def test_only_the_agent_keeps_capabilities() -> None:
    agent, api = (service_settings(unit_path(role)) for role in ("agent", "api"))
    assert set(agent["CapabilityBoundingSet"][-1].split()) == {"CAP_NET_RAW", "CAP_SYS_ADMIN"}
    assert "CapabilityBoundingSet" in api and api["CapabilityBoundingSet"] == []
    assert "AF_PACKET" in agent["RestrictAddressFamilies"][-1]
    assert "AF_PACKET" not in api["RestrictAddressFamilies"][-1]
    assert api["DynamicUser"] == ["yes"]
    assert api["StateDirectory"] == ["pcapd"]


# --- the units' sandbox, applied by unitexec.py (root) -------------------------------------

@dataclass
class Service:
    process: trio.Process
    lines: list[str] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def wait_event(self, event: str) -> dict[str, object]:
        seen = 0
        while True:
            for line in self.lines[seen:]:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == event:
                    return entry
            seen = len(self.lines)
            if self.process.returncode is not None:
                raise AssertionError("the service ended:\n" + "\n".join(self.lines))
            await self.changed.wait()


async def _pump(stream: trio.abc.ReceiveStream, service: Service) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        service.lines.extend(line.decode(errors="replace") for line in complete)
        service.changed.set()
        service.changed = trio.Event()
    service.changed.set()


def sandboxed(unit: Path, argv: list[str], writable: Sequence[Path] = ()) -> list[str]:
    extra = [word for path in writable for word in ("--writable", str(path))]
    return [sys.executable, str(UNITEXEC), str(unit), *extra, "--", *argv]


@asynccontextmanager
async def running_unit(unit: Path, argv: list[str], writable: Sequence[Path] = ()
                       ) -> AsyncIterator[Service]:
    """The unit's ExecStart (``argv``) in its sandbox; killed (by pid) if still running."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(sandboxed(unit, argv, writable),
                                                   stderr=subprocess.PIPE)
        service = Service(process)
        assert process.stderr is not None
        nursery.start_soon(_pump, process.stderr, service)
        try:
            yield service
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drain(service: Service, unit: Path) -> None:
    """SIGTERM, as systemd stops the unit: exit 0 well within TimeoutStopSec."""
    service.process.send_signal(signal.SIGTERM)
    with trio.fail_after(seconds(service_settings(unit)["TimeoutStopSec"][-1])):
        assert await service.process.wait() == 0, "\n".join(service.lines)
    assert any('"draining"' in line for line in service.lines)


def check_config(unit: Path, credentials: Path | None = None,
                 writable: Sequence[Path] = ()) -> None:
    """The unit's ExecStartPre, in the sandbox: the config check passes."""
    result = subprocess.run(sandboxed(unit, exec_line(unit, "ExecStartPre", credentials),
                                      writable), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.root
@pytest.mark.tools
async def test_the_agent_captures_inside_its_sandbox(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs").directory
    port = free_port()
    config = tmp_path / "agent.yml"
    config.write_text(f"""
id: unit-test/0
listen: {{address: 127.0.0.1, port: {port}}}
tls: {{certificate: {certs}/agent.crt, private_key: {certs}/agent.key, client_ca: {certs}/ca.crt}}
containers: {{netns_dir: /run/netns}}
log: {{level: info, format: json}}
""")
    unit = render("agent", tmp_path, {"/etc/pcapd/agent.yml": str(config)})
    check_config(unit)
    out = tmp_path / "out.pcapng"
    with trio.fail_after(90):
        async with running_unit(unit, exec_line(unit, "ExecStart")) as agent:
            await agent.wait_event("listening")
            assert_malloc_settings(agent, unit)
            with netns() as ns:  # made after the start: it must still reach the agent
                async with trio.open_nursery() as nursery:
                    capture = await trio.lowlevel.open_process(
                        [str(PCAPD), "capture", "local", "--agent", f"127.0.0.1:{port}#{ns.name}",
                         "--certs", str(certs), "-f", "udp port 9999", "-c", "5", "-q", "-w",
                         str(out)], stderr=subprocess.PIPE)
                    nursery.start_soon(_send_until_exit, ns, capture)
                    assert await capture.wait() == 0
            await drain(agent, unit)
    rows = tshark_fields(out, "frame.interface_name", "udp.dstport")
    assert rows == [[f"{ns.name}:lo", "9999"]] * 5


def assert_malloc_settings(service: Service, unit: Path) -> None:
    """The unit's Environment= reached the process: glibc's malloc keeps the RSS flat
    (docs/performance.md, "Soak")."""
    environ = Path(f"/proc/{service.process.pid}/environ").read_bytes().split(b"\0")
    assert b"MALLOC_MMAP_THRESHOLD_=131072" in environ, service_settings(unit)
    if unit.name == "pcapd-api.service":
        assert b"MALLOC_ARENA_MAX=2" in environ


async def _send_until_exit(ns: Netns, process: trio.Process) -> None:
    while process.returncode is None:
        await send_udp(ns, "127.0.0.1", 9999, 1, size=64)
        await trio.sleep(0.05)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the dynamic user (nobody) can reach: pytest's tmp_path is root's only."""
    path = Path(tempfile.mkdtemp(prefix="pcapd-unit-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def credentials_dir(directory: Path, files: dict[str, Path]) -> Path:
    """What systemd makes of LoadCredential=: copies, readable by the service's user only."""
    credentials = directory / "credentials"
    credentials.mkdir(mode=0o700)
    for name, source in files.items():
        shutil.copyfile(source, credentials / name)
        (credentials / name).chmod(0o600)
        os.chown(credentials / name, NOBODY, NOBODY)
    os.chown(credentials, NOBODY, NOBODY)
    return credentials


@pytest.mark.root
async def test_the_api_serves_as_a_dynamic_user_inside_its_sandbox(open_dir: Path) -> None:
    certs = init_certs(open_dir / "certs").directory
    certs.chmod(0o755)
    for cert in certs.glob("*.crt"):
        cert.chmod(0o644)
    state = open_dir / "state"  # StateDirectory=pcapd, owned by the dynamic user
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    port = free_port()
    sources = {"api.yml": open_dir / "api.yml", "api-client.key": certs / "api-client.key"}
    credentials = open_dir / "credentials"
    sources["api.yml"].write_text(f"""
id: pcap-api/unit-test
listen: {{address: 127.0.0.1, port: {port}}}
agents: {{port: 9494, server_name: pcap-agent.service.cf.internal,
          tls: {{certificate: {certs}/api-client.crt, private_key: {credentials}/api-client.key,
                 ca: {certs}/ca.crt}}}}
cf: {{api: "http://127.0.0.1:9"}}
storage: {{kind: local, path: {state}/store}}
log: {{level: info, format: json}}
""")
    unit = render("api", open_dir, {"/etc/pcapd/api.yml": str(sources["api.yml"]),
                                    "/etc/pcapd/certs/api-client.key":
                                        str(sources["api-client.key"])})
    assert {value.split(":", 1)[0] for value in service_settings(unit)["LoadCredential"]} \
        == set(sources)
    assert credentials_dir(open_dir, sources) == credentials
    check_config(unit, credentials, [state])
    with trio.fail_after(60):
        async with running_unit(unit, exec_line(unit, "ExecStart", credentials),
                                [state]) as api:
            listening = await api.wait_event("listening")
            limit = int(service_settings(unit)["LimitNOFILE"][-1])  # (or all we may have)
            assert listening["open_files"] == min(limit, resource.getrlimit(
                resource.RLIMIT_NOFILE)[1])
            assert_malloc_settings(api, unit)
            status = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/status")
            assert status["healthy"] is True
            await drain(api, unit)
    store = state / "store"
    assert store.is_dir() and store.stat().st_uid == NOBODY


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        result: dict[str, object] = json.loads(response.read())
        return result
