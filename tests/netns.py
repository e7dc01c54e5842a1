"""Network namespaces, veth pairs and test traffic, for tests that capture (root only).

Everything made here is named ``pcapd-t-<pid>-...`` (namespaces) or ``pcv<hex>`` (veths) and
deleted by name on exit, also when the test fails. Addresses come only from 198.18.0.0/15 (the
benchmarking range), one /30 per veth pair, and traffic goes only to loopback or to those
addresses: :func:`check_destination` refuses anything else.

Senders run as ``ip netns exec NAME python -c ...`` subprocesses (awaited; Trio kills them on
cancellation), so they do not depend on the code under test; :func:`socket_in_netns` makes a
socket inside a namespace from a short-lived thread, for tests that hold a connection open.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from pyroute2 import netns as pyroute2_netns

PREFIX = f"pcapd-t-{os.getpid()}-"
"""Every namespace made by this process starts with this; see :func:`leftover_namespaces`."""
TEST_NET = ipaddress.ip_network("198.18.0.0/15")
_subnets = itertools.count((os.getpid() * 61) % (TEST_NET.num_addresses // 4))


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` (iproute2) and return its stdout."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@contextmanager
def netns() -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up, deleted on exit."""
    ns = Netns(PREFIX + secrets.token_hex(3))
    ip("netns", "add", ns.name)
    try:
        ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        ip("netns", "del", ns.name, check=False)


def leftover_namespaces() -> list[str]:
    """Namespaces of this process still present (should be none after the tests)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if PREFIX in line]


@dataclass(frozen=True)
class VethPair:
    """Two ends; ``a``/``b`` are their namespaces (None: the host)."""

    a: Netns | None
    b: Netns | None
    a_dev: str
    b_dev: str
    a_ip: str
    b_ip: str


def _in(ns: Netns | None) -> list[str]:
    return ["-n", ns.name] if ns else []


@contextmanager
def veth_pair(a: Netns | None, b: Netns | None) -> Iterator[VethPair]:
    """A veth pair between ``a`` and ``b``, addressed from a fresh 198.18.0.0/15 /30, up.

    Neighbour entries are static, so no packet waits on (or is dropped by) ARP resolution.
    """
    base = TEST_NET.network_address + 4 * (next(_subnets) % (TEST_NET.num_addresses // 4))
    a_ip, b_ip = str(base + 1), str(base + 2)
    tag = secrets.token_hex(3)
    pair = VethPair(a, b, f"pcv{tag}a", f"pcv{tag}b", a_ip, b_ip)
    netns_a = ["netns", a.name] if a else []
    netns_b = ["netns", b.name] if b else []
    ip("link", "add", pair.a_dev, *netns_a, "type", "veth", "peer", "name", pair.b_dev, *netns_b)
    try:
        for ns, dev, addr in ((a, pair.a_dev, a_ip), (b, pair.b_dev, b_ip)):
            ip(*_in(ns), "addr", "add", f"{addr}/30", "dev", dev)
            ip(*_in(ns), "link", "set", dev, "up")
        macs = {dev: _mac(ns, dev) for ns, dev in ((a, pair.a_dev), (b, pair.b_dev))}
        ip(*_in(a), "neigh", "replace", b_ip, "lladdr", macs[pair.b_dev], "dev", pair.a_dev)
        ip(*_in(b), "neigh", "replace", a_ip, "lladdr", macs[pair.a_dev], "dev", pair.b_dev)
        _wait_up(pair)
        yield pair
    finally:
        ip(*_in(a), "link", "del", pair.a_dev, check=False)  # takes the peer with it


def _mac(ns: Netns | None, dev: str) -> str:
    return str(json.loads(ip(*_in(ns), "-j", "link", "show", "dev", dev))[0]["address"])


def _wait_up(pair: VethPair) -> None:
    """Bounded poll: the kernel signals carrier asynchronously and there is no event to await."""
    deadline = time.monotonic() + 5
    while True:
        states = [
            json.loads(ip(*_in(ns), "-j", "link", "show", "dev", dev))[0]["operstate"]
            for ns, dev in ((pair.a, pair.a_dev), (pair.b, pair.b_dev))
        ]
        if all(state == "UP" for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"veth {pair.a_dev}/{pair.b_dev} not up: {states}")
        time.sleep(0.01)


def check_destination(address: str) -> None:
    """Tests send only to loopback or to the test range they assigned."""
    addr = ipaddress.ip_address(address)
    if not (addr.is_loopback or addr in TEST_NET):
        raise ValueError(f"tests must not send to {address}: loopback or 198.18.0.0/15 only")


def payload(marker: bytes, seq: int, size: int) -> bytes:
    """``marker`` + 4-byte big-endian ``seq``, padded with '.' to ``size`` bytes."""
    return (marker + seq.to_bytes(4, "big")).ljust(size, b".")


_UDP_SENDER = """
import socket, sys
dst, port, count, size, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    int(sys.argv[4]), sys.argv[5].encode()
sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
for seq in range(count):
    sock.sendto((marker + seq.to_bytes(4, "big")).ljust(size, b"."), (dst, port))
"""


async def send_udp(
    ns: Netns | None, dst: str, port: int, count: int, *, size: int = 200, marker: bytes = b"pcapd"
) -> None:
    """Send ``count`` UDP datagrams of :func:`payload` (seq 0..count-1) from inside ``ns``."""
    check_destination(dst)
    argv = [sys.executable, "-c", _UDP_SENDER, dst, str(port), str(count), str(size)]
    argv.append(marker.decode())
    await trio.run_process(ns.argv(*argv) if ns else argv)


_TCP_EXCHANGE = """
import socket, sys
host, count, size, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listener = socket.socket(family, socket.SOCK_STREAM)
listener.bind((host, 0))
listener.listen()
client = socket.create_connection(listener.getsockname()[:2])
server, _ = listener.accept()
for seq in range(count):
    message = (marker + seq.to_bytes(4, "big")).ljust(size, b".")
    client.sendall(message)
    got = b""
    while len(got) < size:
        got += server.recv(size - len(got))
    server.sendall(got)
    back = b""
    while len(back) < size:
        back += client.recv(size - len(back))
port = listener.getsockname()[1]
client.close(); server.close(); listener.close()
print(port)
"""


async def tcp_exchange(
    ns: Netns | None, host: str, count: int, *, size: int = 100, marker: bytes = b"pcapd"
) -> int:
    """A TCP connection on ``host`` inside ``ns``: ``count`` request/echo rounds; its port."""
    check_destination(host)
    argv = [sys.executable, "-c", _TCP_EXCHANGE, host, str(count), str(size), marker.decode()]
    done = await trio.run_process(ns.argv(*argv) if ns else argv, capture_stdout=True)
    return int(done.stdout.decode().split()[-1])


def socket_in_netns(ns: Netns | None, family: int, kind: int) -> socket.socket:
    """A ``socket.socket`` created inside ``ns`` (it stays there), from a short-lived thread.

    The thread enters the namespace with setns(2) and ends, so no thread is left in it.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            if ns is not None:
                fd = os.open(ns.path, os.O_RDONLY)
                try:
                    pyroute2_netns.setns(fd, flags=0)
                finally:
                    os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=make, name="socket-in-netns")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


@dataclass(frozen=True)
class Host:
    """A namespace standing for a VM or Diego cell: ``eth0`` wired to the host's namespace."""

    ns: Netns
    ip: str
    """``eth0``'s address, reachable from the host namespace."""
    host_ip: str
    """The host side of the wire (the api's address as this VM sees it)."""


@contextmanager
def vm() -> Iterator[Host]:
    """A namespace with ``eth0`` (a veth to the host namespace) from a fresh 198.18.0.0/15 /30."""
    with netns() as ns:
        base = TEST_NET.network_address + 4 * (next(_subnets) % (TEST_NET.num_addresses // 4))
        host_ip, vm_ip = str(base + 1), str(base + 2)
        outside = f"pcv{secrets.token_hex(3)}"
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        try:
            ip("addr", "add", f"{host_ip}/30", "dev", outside)
            ip("link", "set", outside, "up")
            ip("-n", ns.name, "addr", "add", f"{vm_ip}/30", "dev", "eth0")
            ip("-n", ns.name, "link", "set", "eth0", "up")
            ip("neigh", "replace", vm_ip, "lladdr", _mac(ns, "eth0"), "dev", outside)
            ip("-n", ns.name, "neigh", "replace", host_ip, "lladdr", _mac(None, outside),
               "dev", "eth0")
            _wait_up(VethPair(None, ns, outside, "eth0", host_ip, vm_ip))
            yield Host(ns, vm_ip, host_ip)
        finally:
            ip("link", "del", outside, check=False)


@contextmanager
def netns_dir(directory: Path, *containers: Netns) -> Iterator[Path]:
    """A cell's ``containers.netns_dir``: one file per container, bind-mounted as garden-cni
    does, named after the namespace (the instance guid); unmounted on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []
    try:
        for ns in containers:
            target = directory / ns.name
            target.touch()
            subprocess.run(["mount", "--bind", str(ns.path), str(target)], check=True,
                           timeout=30)
            mounted.append(target)
        yield directory
    finally:
        for target in mounted:
            subprocess.run(["umount", str(target)], check=False, timeout=30)


@contextmanager
def named_netns(name: str) -> Iterator[Netns]:
    """A namespace with a chosen name (an instance guid), ``lo`` up, deleted on exit."""
    ns = Netns(name)
    ip("netns", "add", ns.name)
    try:
        ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        ip("netns", "del", ns.name, check=False)
