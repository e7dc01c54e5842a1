"""A small Cloud Foundry + BOSH landscape on one machine, for end-to-end tests (root only).

- Fakes of UAA, Cloud Controller and the BOSH director on loopback (``tests/fakes``).
- Diego cells and BOSH VMs: network namespaces with ``eth0`` wired to the host namespace
  (198.18.0.0/15), each running a real ``pcapd agent`` process on ``0.0.0.0:9494``.
- App containers: further namespaces named by instance guid, bind-mounted into their cell's
  ``containers.netns_dir``, listed in the cell's container metadata store.
- A real ``pcapd api`` process on loopback, configured for both platforms.

Everything is started by :class:`Landscape` (a context manager) and torn down by pid and name.
Processes' stderr is collected in full so a test can search every log line for secrets.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from pcapd.certs import CertPaths, init_certs
from tests.e2e.procs import AGENT_PORT, PCAPD, agent_status
from tests.fakes import ALICE, FakeCloudController, FakeDirector, FakeUAA
from tests.fakes.cloud_controller import App, Instance, Space
from tests.fakes.director import Instance as VmInstance
from tests.fakes.dns import with_resolv_conf
from tests.netns import Host, Netns, named_netns, netns_dir, vm


@dataclass
class Process:
    """A child process whose stderr is read into ``lines`` by a thread."""

    popen: subprocess.Popen[bytes]
    name: str
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def pump(self, ready_word: str) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if ready_word in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30) -> None:
        if not self._ready.wait(timeout) or self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_process(name: str, argv: list[str]) -> Process:
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    process = Process(popen, name)
    threading.Thread(target=process.pump, args=('"listening"',), daemon=True).start()
    process.wait_ready()
    return process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cell:
    host: Host
    netns_dir: Path
    store: Path
    containers: dict[str, Netns] = field(default_factory=dict)
    agent: Process | None = None


class Landscape:
    """The fakes, cells/VMs with agents, and the api; see the module docstring."""

    def __init__(self, tmp: Path, *, cells: int = 2, vms: int = 2,
                 storage: dict[str, object] | None = None,
                 api_settings: dict[str, object] | None = None,
                 agent_settings: dict[str, object] | None = None,
                 metadata_store: bool = True, api_resolv_conf: Path | None = None) -> None:
        """``api_settings`` and ``agent_settings``: config sections (``limits``, ``buffer``,
        ...) merged into the api's and every agent's config, key by key within a section.
        ``metadata_store`` False: the cells' agents run without ``containers.metadata_store``
        (they cannot check a container's app themselves; the api's checks must hold alone).
        ``api_resolv_conf``: the api (and the filter compilers it starts) resolve names with
        this file as ``/etc/resolv.conf`` (:class:`tests.fakes.dns.FakeDns`)."""
        self.tmp = tmp
        self.storage = storage or {"kind": "local", "path": str(tmp / "store")}
        self.api_settings = api_settings or {}
        self.agent_settings = agent_settings or {}
        self.n_cells, self.n_vms = cells, vms
        self.metadata_store = metadata_store
        self.api_resolv_conf = api_resolv_conf
        self.stack = ExitStack()
        self.processes: list[Process] = []
        self.cells: list[Cell] = []
        self.vms: list[Host] = []
        self.client_lines: list[str] = []

    def __enter__(self) -> Landscape:
        try:
            self._build()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stack.close()
        if kind is None:
            faults = [line for line in self.all_log_lines() if _internal_error(line)]
            assert not faults, ("an api or agent logged an internal error (a bug: it cost a "
                                "connection and must be fixed):\n" + "\n".join(faults[:3]))

    def _build(self) -> None:
        stack = self.stack
        self.uaa = stack.enter_context(FakeUAA())
        self.cc = stack.enter_context(FakeCloudController(self.uaa))
        self.director = stack.enter_context(FakeDirector(self.uaa))
        self.certs: CertPaths = init_certs(self.tmp / "certs")
        for i in range(self.n_cells):
            host = stack.enter_context(vm())
            directory = self.tmp / f"cell{i}" / "container-netns"
            directory.mkdir(parents=True)
            self.cells.append(Cell(host, directory, self.tmp / f"cell{i}" / "store.json"))
        self.vms = [stack.enter_context(vm()) for _ in range(self.n_vms)]
        self.org = self.cc.add_org("org")
        self.space = self.cc.add_space(self.org, "dev")
        self.other_space = self.cc.add_space(self.org, "elsewhere")
        self.api_port = free_port()
        stack.callback(self._stop_processes)
        argv = [PCAPD, "api", "--config", str(self._api_config())]
        if self.api_resolv_conf is not None:
            argv = with_resolv_conf(self.api_resolv_conf, argv)
        self.api = self._start(start_process("api", argv))

    def _start(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def _stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # --- apps and deployments ----------------------------------------------------------

    def deploy_app(self, name: str, instances: int, space: Space | None = None,
                   processes: dict[str, int] | None = None) -> App:
        """An app whose instances run in container namespaces, spread over the cells;
        ``processes``: further process types and their instance counts (``{"worker": 3}``),
        deployed with the ``web`` one (agents see only namespaces made before they start)."""
        app = self.cc.add_app(space or self.space, name, instances=self._place(instances))
        for process_type, count in (processes or {}).items():
            self.cc.add_process(app, process_type, self._place(count))
        for cell in self.cells:
            self._refresh_cell(cell, app)
        return app

    def _place(self, instances: int) -> list[Instance]:
        """``instances`` app instances, each in a container namespace of its own, spread over
        the cells."""
        placed: list[Instance] = []
        for index in range(instances):
            cell = self.cells[index % len(self.cells)]
            instance = Instance(index=index, host=cell.host.ip)
            container = self.stack.enter_context(named_netns(instance.instance_guid))
            cell.containers[instance.instance_guid] = container
            placed.append(instance)
        return placed

    def _refresh_cell(self, cell: Cell, app: App) -> None:
        store = json.loads(cell.store.read_text()) if cell.store.exists() else {}
        for guid in cell.containers:
            if guid not in store:
                store[guid] = {"handle": guid, "ip": "10.255.0.2", "metadata": {
                    "app_id": app.guid, "space_id": app.space.guid,
                    "container_workload": "app"}}
                self.stack.enter_context(netns_dir(cell.netns_dir, cell.containers[guid]))
        cell.store.write_text(json.dumps(store))
        if cell.agent is None:
            cell.agent = self._start_agent(cell.host, f"cell/{self.cells.index(cell)}",
                                           cell.netns_dir, cell.store)

    def deploy_groups(self, deployment: str, ids: dict[str, list[str]],
                      teams: list[str]) -> list[VmInstance]:
        """Instance groups of one deployment with chosen instance ids (``{"router": [ID, …]}``),
        one VM each, in the order of ``self.vms`` (there must be enough)."""
        placed = [(group, index, instance_id) for group, group_ids in ids.items()
                  for index, instance_id in enumerate(group_ids)]
        assert len(placed) <= len(self.vms), f"{len(placed)} instances, {len(self.vms)} VMs"
        hosts = self.vms[:len(placed)]
        instances = [VmInstance(job=group, index=index, id=instance_id, ips=[host.ip])
                     for (group, index, instance_id), host in zip(placed, hosts, strict=True)]
        self.director.add_deployment(deployment, teams=teams, instances=instances)
        for instance, host in zip(instances, hosts, strict=True):
            self._start_agent(host, f"{instance.job}/{instance.id}", None, None)
        return instances

    def deploy_vms(self, deployment: str, group: str, teams: list[str]) -> list[VmInstance]:
        instances = [VmInstance(job=group, index=i, ips=[host.ip])
                     for i, host in enumerate(self.vms)]
        self.director.add_deployment(deployment, teams=teams, instances=instances)
        for i, host in enumerate(self.vms):
            self._start_agent(host, f"{group}/{instances[i].id}", None, None)
        return instances

    # --- configs and processes -----------------------------------------------------------

    def _start_agent(self, host: Host, agent_id: str, directory: Path | None,
                     store: Path | None) -> Process:
        c = self.certs
        config: dict[str, object] = {
            "id": agent_id, "listen": {"address": "0.0.0.0", "port": AGENT_PORT},
            "tls": {"certificate": str(c.agent_cert), "private_key": str(c.agent_key),
                    "client_ca": str(c.ca_cert)}}
        if directory is not None:
            config["containers"] = {"netns_dir": str(directory)}
            if self.metadata_store:
                config["containers"]["metadata_store"] = str(store)  # type: ignore[index]
        path = self.tmp / f"agent-{host.ns.name}.json"
        path.write_text(json.dumps(_merged(config, self.agent_settings)))  # YAML ⊃ JSON
        return self._start(start_process(agent_id, host.ns.argv(
            PCAPD, "agent", "--config", str(path))))

    def _api_config(self) -> Path:
        c = self.certs
        config = {
            "id": "pcap-api/0", "listen": {"address": "127.0.0.1", "port": self.api_port},
            "agents": {"port": AGENT_PORT, "tls": {
                "certificate": str(c.api_client_cert), "private_key": str(c.api_client_key),
                "ca": str(c.ca_cert)}},
            "cf": {"api": self.cc.url}, "bosh": {"director": self.director.url},
            "storage": self.storage,
        }
        path = self.tmp / "api.json"
        path.write_text(json.dumps(_merged(config, self.api_settings)))
        return path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # --- the user's side ---------------------------------------------------------------

    def cf_home(self, token: str, refresh: str, space: Space | None = None) -> dict[str, str]:
        """An environment whose cf CLI config is logged in with these tokens."""
        space = space or self.space
        home = self.tmp / f"cf-home-{time.monotonic_ns()}"
        (home / ".cf").mkdir(parents=True)
        (home / ".cf" / "config.json").write_text(json.dumps({
            "ConfigVersion": 3, "Target": self.cc.url, "APIVersion": "3.90.0",
            "AuthorizationEndpoint": self.uaa.url, "UaaEndpoint": self.uaa.url,
            "AccessToken": f"bearer {token}", "RefreshToken": refresh,
            "UAAOAuthClient": "cf", "UAAOAuthClientSecret": "", "UAAGrantType": "",
            "SSLDisabled": False,
            "OrganizationFields": {"GUID": self.org.guid, "Name": self.org.name},
            "SpaceFields": {"GUID": space.guid, "Name": space.name, "AllowSSH": True}}))
        return {**os.environ, "CF_HOME": str(home), "PCAPD_API": self.api_url}

    def bosh_env(self, token: str, refresh: str) -> dict[str, str]:
        path = self.tmp / f"bosh-config-{time.monotonic_ns()}"
        path.write_text(json.dumps({"environments": [{
            "url": self.director.url, "alias": "lab", "access_token": token,
            "access_token_type": "bearer", "refresh_token": refresh}]}))
        return {**os.environ, "BOSH_CONFIG": str(path), "BOSH_ENVIRONMENT": "lab",
                "PCAPD_API": self.api_url}

    def all_log_lines(self) -> list[str]:
        return [line for process in self.processes for line in process.lines]

    def api_events(self, event: str) -> list[dict[str, object]]:
        """The api's JSON log entries whose ``event`` is ``event`` (audit lines and others)."""
        found = []
        for line in self.api.lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
        return found


def _internal_error(line: str) -> bool:
    """Whether a JSON log line reports an exception nothing expected (``log.exception``)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "exception" in entry


def _merged(config: dict[str, object], settings: dict[str, object]) -> dict[str, object]:
    """``config`` with ``settings``: a section given as a dict is merged key by key."""
    merged = dict(config)
    for key, value in settings.items():
        base = merged.get(key)
        merged[key] = ({**base, **value} if isinstance(base, dict) and isinstance(value, dict)
                       else value)
    return merged


def developer_tokens(landscape: Landscape) -> tuple[str, str]:
    landscape.cc.grant(ALICE, "developer", landscape.space)
    return landscape.uaa.issue_pair(ALICE)


# --- asking the api and the agents what runs -----------------------------------------------------


def agents(landscape: Landscape) -> dict[str, tuple[Host, Process]]:
    """Every agent of the landscape by its id: where it listens and its process."""
    found: dict[str, tuple[Host, Process]] = {}
    hosts = [cell.host for cell in landscape.cells] + landscape.vms
    for process in landscape.processes:
        if process is landscape.api or process.name == "api":
            continue
        for host in hosts:
            if host.ns.name in " ".join(str(a) for a in process.popen.args):  # type: ignore[union-attr]
                found[process.name] = (host, process)
    return found


async def api_captures(landscape: Landscape) -> int:
    """Captures running on the api, from its ``GET /status``."""
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{landscape.api_url}/status")
    return int(reply.json()["captures"])


async def agent_captures(landscape: Landscape, host: Host) -> int:
    """Captures running on the agent at ``host``, asked over mutual TLS as the api asks."""
    return (await agent_status(landscape.certs, host.ip)).captures


async def all_idle(landscape: Landscape) -> bool:
    """Whether no capture runs on the api or on any agent."""
    if await api_captures(landscape):
        return False
    for host, _ in agents(landscape).values():
        if await agent_captures(landscape, host):
            return False
    return True
