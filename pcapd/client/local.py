"""``pcapd capture local``: agent, api and client in one process, over real mutual TLS.

Local mode is the product's main job on one machine, and it deliberately takes the long way:
the embedded agent serves mutual-TLS WebSockets on loopback with throw-away certificates, the
embedded api connects to it exactly as it would to a remote cell and serves the client over a
loopback WebSocket. So every capture in local mode exercises the code paths of the distributed
mode. With ``--agent ADDR[#NETNS]`` the api reaches agents running as their own processes
instead, with the certificates of ``pcapd certs init``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import trio

from pcapd.agent.server import serve_agent
from pcapd.api.resolve import LocalResolver
from pcapd.api.server import Api, serve_api
from pcapd.certs import CertPaths, make_throwaway_pki, write_pki
from pcapd.client.capture import ApiAddress, Interrupts, interruptible, run_capture
from pcapd.client.output import PcapngOutput
from pcapd.client.plan import capture_request, opened_output
from pcapd.client.progress import Header, Progress
from pcapd.config import AgentConfig, ApiConfig, local_api_config, parse_agent_config
from pcapd.config.model import AgentListenConfig, ApiListenConfig
from pcapd.errors import UsageError
from pcapd.proto import End, LocalTarget, Start
from pcapd.transport.groups import open_nursery

LOOPBACK = "127.0.0.1"
NETNS_DIR = "/run/netns"  # where `ip netns add` puts its namespaces
DEFAULT_AGENT_PORT = 9494


def parse_agent_spec(spec: str) -> tuple[str, int, str | None]:
    """``HOST[:PORT][#NETNS]`` → (host, port, netns); IPv6 as ``[::1]:9494``."""
    address, _, netns = spec.partition("#")
    host, port = address, DEFAULT_AGENT_PORT
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif address.count(":") == 1:
        host, _, text = address.partition(":")
        port = _port(text, spec)
    if not host:
        raise UsageError(f"--agent {spec}: expected HOST[:PORT][#NETNS]")
    return host, port, netns or None


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"--agent {spec}: port {text!r} is not a number from 1 to 65535")
    return int(text)


LOCAL_AGENT_BUFFER = {"size": 8000, "upper_limit": 7600, "lower_limit": 6400}
"""The embedded agent's packet buffer: eight times a cell agent's. The agent sends what its
buffer holds when its read lingers (``READ_LINGER``), so a buffer of 1,000 packets cut its
messages to ~950 packets and cost a wake-up, a TLS record run and a merge step per ~120 kB:
at 200 k packets/s, 1.27 µs a packet (6.1× tcpdump's); with 8,000, 0.77–0.82 µs (4.1×), the
same run (bench/capture_bench.py). On the user's own machine, in a process whose api already
buffers 10,000 packets; a cell's agent keeps its smaller default (operator-guide: sizing)."""


def _agent_config(pki: CertPaths, agents: int) -> AgentConfig:
    config = parse_agent_config({
        "id": f"local-agent/{os.getpid()}",
        "tls": {"certificate": str(pki.agent_cert), "private_key": str(pki.agent_key),
                "client_ca": str(pki.ca_cert)},
        "containers": {"netns_dir": NETNS_DIR},
        "limits": {"concurrent_captures": max(5, agents), "max_snaplen": 262144},
        "buffer": LOCAL_AGENT_BUFFER,
    }, "<local mode agent>")
    # port 0 (any free port) is no valid config value, but exactly right here
    return msgspec.structs.replace(config, listen=AgentListenConfig(address=LOOPBACK, port=0))


def _api_config(pki: CertPaths, storage: Path) -> ApiConfig:
    config = local_api_config({"certificate": str(pki.api_client_cert),
                               "private_key": str(pki.api_client_key),
                               "ca": str(pki.ca_cert)}, str(storage), api_id="local-api")
    return msgspec.structs.replace(config, listen=ApiListenConfig(address=LOOPBACK, port=0))


def _bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


@dataclass(frozen=True)
class LocalPlan:
    """Everything local mode prepares before the event loop starts (files, certificates)."""

    args: argparse.Namespace
    start: Start
    output: PcapngOutput
    pki: CertPaths
    agents: list[tuple[str, int, str | None]]
    storage: Path


@contextmanager
def local_plan(args: argparse.Namespace) -> Iterator[LocalPlan]:
    """Check the flags, open the output, make the throw-away certificates; clean up after.

    Blocking file work happens here, before ``trio.run``. An output file that received nothing
    (the capture could not start) is removed, so a failed run leaves no empty file behind.
    """
    if args.agent and args.netns:
        raise UsageError("--netns and --agent do not mix: with --agent, name each agent's "
                         "namespace as ADDR#NETNS")
    agents = [parse_agent_spec(spec) for spec in args.agent]
    if agents and args.certs is None:
        raise UsageError("--agent needs --certs DIR (the certificates of 'pcapd certs init')")
    start = capture_request(args, LocalTarget(netns=args.netns))
    with opened_output(args.write, force=args.force) as output, \
            tempfile.TemporaryDirectory(prefix="pcapd-local-") as tmp:
        if agents:
            pki = CertPaths.in_directory(Path(args.certs))
        else:
            pki = write_pki(make_throwaway_pki(), Path(tmp) / "pki")
        yield LocalPlan(args, start, output, pki, agents, Path(tmp) / "store")


async def capture_local(plan: LocalPlan) -> End:
    """Run ``pcapd capture local`` as planned; returns the api's ``end``. A signal while the
    embedded agent and api start ends it at once, as while connecting (exit 130)."""
    async with interruptible() as interrupts:
        return await _run(plan.args, plan.start, plan.output, plan.pki, plan.agents,
                          plan.storage, interrupts)
    raise AssertionError("unreachable: interruptible() raises when it cancels")


async def _run(args: argparse.Namespace, start: Start, output: PcapngOutput, pki: CertPaths,
               agents: list[tuple[str, int, str | None]], storage: Path,
               interrupts: Interrupts) -> End:
    async with open_nursery() as nursery:
        if agents:
            resolver = LocalResolver(agents, from_request=False)
        else:
            config = _agent_config(pki, len(args.netns))
            port = _bound_port(await nursery.start(serve_agent, config))
            resolver = LocalResolver([(LOOPBACK, port, None)], from_request=True)
        api = Api(_api_config(pki, storage), resolver)
        # the user's link to the embedded api is a Unix socket: a capture of lo must not
        # capture its own output (the agent's TCP link it leaves out by itself)
        socket_path = str(storage.parent / "api.sock")
        await nursery.start(partial(serve_api, api, unix_path=socket_path))
        with Progress(quiet=args.quiet, header=Header.of(start, "embedded api", output.target),
                      notes=getattr(output, "notes", None)) as progress:
            end = await run_capture(ApiAddress("local", 0, unix_path=socket_path), start,
                                    output, progress, interrupts=interrupts)
        progress.end(end, output.target)
        nursery.cancel_scope.cancel()
    return end
