"""The capture engine with real libpcap in real network namespaces (most tests need root)."""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cypcap
import pytest
import trio

from pcapd.agent import pcap as capture_module
from pcapd.agent import pkthdr
from pcapd.agent.bpf import split_direction
from pcapd.agent.netns import (
    NamespaceError,
    call_in_netns,
    named_netns,
    open_in_netns,
    resolve_container_netns,
)
from pcapd.agent.pcap import (
    Batch,
    HandleFailed,
    InvalidDevice,
    InvalidFilter,
    InvalidSnaplen,
    PcapHandle,
    compile_filter,
    exclusion_filter,
    open_handle,
)
from pcapd.pcapng import (
    encode_interface_description,
    encode_section_header,
    split_packets,
)
from tests.netns import (
    Netns,
    VethPair,
    leftover_namespaces,
    netns,
    payload,
    send_udp,
    socket_in_netns,
    tcp_exchange,
    veth_pair,
)

root = pytest.mark.root
UDP_PORT = 47001


@pytest.fixture(scope="module", autouse=True)
def _no_namespace_left_behind() -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        assert leftover_namespaces() == []


@pytest.fixture
def ns_a() -> Iterator[Netns]:
    with netns() as ns:
        yield ns


@pytest.fixture
def ns_b() -> Iterator[Netns]:
    with netns() as ns:
        yield ns


@pytest.fixture
def veth(ns_a: Netns, ns_b: Netns) -> Iterator[VethPair]:
    with veth_pair(ns_a, ns_b) as pair:
        yield pair


# -- helpers --------------------------------------------------------------------------------


def packets(blocks: bytes) -> list[tuple[int, int, int, bytes]]:
    """``(timestamp_ns, captured_length, original_length, data)`` of each EPB in ``blocks``."""
    out = []
    for block in split_packets(blocks).blocks:
        interface_id, high, low, caplen, orig = struct.unpack_from("<5I", block, 8)
        assert interface_id == 0
        out.append((high << 32 | low, caplen, orig, block[28 : 28 + caplen]))
    return out


def udp_payload(frame: bytes) -> bytes:
    """The UDP payload (as far as captured) of an Ethernet/IPv4 or IPv6 frame."""
    ethertype = int.from_bytes(frame[12:14], "big")
    ip_len = (frame[14] & 0x0F) * 4 if ethertype == 0x0800 else 40
    return frame[14 + ip_len + 8 :]


def tcp_ports(frame: bytes) -> tuple[int, int] | None:
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800 and frame[23] == 6:
        start = 14 + (frame[14] & 0x0F) * 4
    elif ethertype == 0x86DD and frame[20] == 6:
        start = 14 + 40
    else:
        return None
    src, dst = struct.unpack_from("!HH", frame, start)
    return src, dst


async def collect(cap: PcapHandle, count: int) -> list[Batch]:
    """Batches until ``count`` packets have been read (the caller's fail_after bounds it)."""
    batches: list[Batch] = []
    while sum(batch.packets for batch in batches) < count:
        batches.append(await cap.read_batch(max_packets=64, max_wait=0.5))
    return batches


# -- names and namespaces (no root needed) ----------------------------------------------------


@pytest.mark.parametrize("guid", ["../x", "a/b", "", ".", "..", "a\0b", "a b", "/etc/passwd"])
def test_guid_that_is_not_a_plain_name_is_refused(tmp_path: Path, guid: str) -> None:
    with pytest.raises(NamespaceError, match="refused") as info:
        resolve_container_netns(tmp_path, guid)
    assert repr(guid) in str(info.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "a\0b"])
def test_named_netns_that_is_not_a_plain_name_is_refused(name: str) -> None:
    with pytest.raises(NamespaceError, match="refused"):
        named_netns(name)


def test_guid_without_a_namespace_file(tmp_path: Path) -> None:
    guid = "6f3c2a1e-0000-4000-8000-00000000abcd"
    with pytest.raises(NamespaceError, match=f"instance {guid}: no network namespace"):
        resolve_container_netns(tmp_path, guid)
    (tmp_path / guid).write_bytes(b"")
    with pytest.raises(NamespaceError, match="is not a network namespace"):
        resolve_container_netns(tmp_path, guid)


@root
def test_guid_naming_a_namespace_file(ns_a: Netns) -> None:
    assert resolve_container_netns(Path("/run/netns"), ns_a.name) == ns_a.path
    assert named_netns(ns_a.name) == ns_a.path


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


@root
def test_call_in_netns_returns_to_the_thread_namespace_even_when_fn_raises(ns_a: Netns) -> None:
    seen: dict[str, int] = {}

    def inside() -> None:
        seen["inside"] = _netns_inode("/proc/thread-self/ns/net")
        raise KeyError("boom")

    def thread() -> None:
        seen["before"] = _netns_inode("/proc/thread-self/ns/net")
        with pytest.raises(KeyError):
            call_in_netns(ns_a.path, inside)
        seen["after"] = _netns_inode("/proc/thread-self/ns/net")

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    assert seen["inside"] == _netns_inode(str(ns_a.path))
    assert seen["before"] == seen["after"] == _netns_inode("/proc/self/ns/net")


@root
async def test_open_in_netns_runs_there_and_refuses_a_non_namespace(
    ns_a: Netns, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        inode = await open_in_netns(ns_a.path, lambda: _netns_inode("/proc/thread-self/ns/net"))
        assert inode == _netns_inode(str(ns_a.path))
        (tmp_path / "plain").write_bytes(b"")
        with pytest.raises(NamespaceError, match="cannot enter"):
            await open_in_netns(tmp_path / "plain", lambda: None)


# -- filters (no root needed) -----------------------------------------------------------------


def test_bad_filter_is_refused_in_libpcap_words() -> None:
    # pcapd's part of the message, and that libpcap's reason follows (its wording is libpcap's
    # and changes between its releases: not asserted)
    for expr in ("tcp port x", "tcp and ("):
        with pytest.raises(InvalidFilter) as info:
            compile_filter(expr)
        assert re.fullmatch(f'invalid BPF filter "{re.escape(expr)}": \\S.*', str(info.value))
    compile_filter("udp port 53 or (tcp and host 198.18.0.1)")
    compile_filter("")


def test_exclusion_filter_ipv4_ipv6_and_mapped() -> None:
    links = [("::ffff:198.18.0.1", 9494, "198.18.0.2", 40000), ("fe80::1%eth0", 1, "::1", 2)]
    expr = exclusion_filter("udp", links)
    assert expr == (
        "(udp) and not (host 198.18.0.1 and host 198.18.0.2 and tcp port 9494 and tcp port 40000)"
        " and not (host fe80::1 and host ::1 and tcp port 1 and tcp port 2)"
    )
    assert exclusion_filter("", links[:1]).startswith("not (host 198.18.0.1")
    assert exclusion_filter("  ", []) == ""
    compile_filter(expr)
    with pytest.raises(ValueError):
        exclusion_filter("", [("198.18.0.1; rm -rf /", 1, "198.18.0.2", 2)])


@pytest.mark.parametrize(
    ("user", "direction", "rest"),
    [
        ("inbound", cypcap.Direction.IN, ""),
        ("  outbound ", cypcap.Direction.OUT, ""),
        ("inbound and udp port 53", cypcap.Direction.IN, "udp port 53"),
        ("outbound and (udp or icmp)", cypcap.Direction.OUT, "(udp or icmp)"),
        ("inbound&&tcp and not port 22", cypcap.Direction.IN, "tcp and not port 22"),
        # `and` and `or` bind equally, left to right: the direction covers only `udp` here
        ("inbound and udp or icmp", None, "inbound and udp or icmp"),
        ("inbound and host 198.18.0.1 or 198.18.0.2", None, ""),
        ("udp and inbound", None, ""),
        ("not inbound and udp", None, ""),
        ("inboundx", None, ""),
        ("inbound and", None, ""),
        ("", None, ""),
    ],
)
def test_a_leading_direction_is_split_off_only_when_it_covers_the_whole_filter(
    user: str, direction: cypcap.Direction | None, rest: str
) -> None:
    assert split_direction(user) == (direction, rest if direction else user)


# -- capturing ----------------------------------------------------------------------------------


@root
@pytest.mark.tools
async def test_udp_packets_exact_in_order_with_original_length_and_ns_timestamps(
    ns_a: Netns, veth: VethPair, tmp_path: Path
) -> None:
    count = 200
    with trio.fail_after(20):
        async with open_handle(
            veth.a_dev, filter=f"udp port {UDP_PORT}", snaplen=64, netns=ns_a.path
        ) as cap:
            assert (cap.device, cap.snaplen, cap.link_type) == (veth.a_dev, 64, 1)
            assert cap.exact_timestamps
            before = time.time_ns()
            await send_udp(veth.b, veth.a_ip, UDP_PORT, count, size=200, marker=b"seq")
            after = time.time_ns()
            batches = await collect(cap, count)
            batches.append(await cap.drain())
            stats = cap.stats()
    got = [pkt for batch in batches for pkt in packets(batch.blocks)]
    assert [udp_payload(data)[:7] for _, _, _, data in got] == [
        payload(b"seq", seq, 200)[:7] for seq in range(count)
    ]
    assert {(caplen, orig) for _, caplen, orig, _ in got} == {(64, 14 + 20 + 8 + 200)}
    stamps = [ts for ts, _, _, _ in got]
    assert before <= stamps[0] and stamps[-1] <= after and stamps == sorted(stamps)
    nonempty = [batch for batch in batches if batch.packets]
    assert [b.first_timestamp for b in nonempty] == [packets(b.blocks)[0][0] for b in nonempty]
    assert [b.last_timestamp for b in nonempty] == [packets(b.blocks)[-1][0] for b in nonempty]
    assert sum(batch.captured_bytes for batch in batches) == 64 * count
    assert stats.received >= count and stats.kernel_dropped == 0

    # tshark, an independent reader, shows the same nanoseconds and lengths
    path = tmp_path / "capture.pcapng"
    path.write_bytes(
        encode_section_header(user_application="pcapd tests")
        + encode_interface_description(link_type=1, snaplen=64, tsresol=9, name=veth.a_dev)
        + b"".join(batch.blocks for batch in batches)
    )
    fields = ["-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"]
    with trio.fail_after(60):
        done = await trio.run_process(
            ["tshark", "-r", str(path), "-T", "fields", *fields],
            capture_stdout=True,
            capture_stderr=True,
        )
    rows = [line.split("\t") for line in done.stdout.decode().splitlines()]
    assert [(int(t.replace(".", "")), int(ln), int(cl)) for t, ln, cl in rows] == [
        (ts, orig, caplen) for ts, caplen, orig, _ in got
    ]


@root
async def test_each_capture_sees_its_own_namespace(ns_a: Netns) -> None:
    port = secrets.choice(range(40000, 60000))  # the host's lo is shared: an unlikely port
    bpf = f"udp port {port}"
    with trio.fail_after(20):
        async with (
            open_handle("lo", filter=bpf, netns=ns_a.path) as inside,
            open_handle("lo", filter=bpf, netns=None) as host,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(send_udp, None, "127.0.0.1", port, 50, marker=b"host"))
                nursery.start_soon(partial(send_udp, ns_a, "127.0.0.1", port, 30, marker=b"inside"))
            seen = {}
            for name, cap, count in (("inside", inside, 30), ("host", host, 50)):
                batches = await collect(cap, count)
                batches.append(await cap.drain())
                seen[name] = [
                    udp_payload(data)[:4] for b in batches for *_, data in packets(b.blocks)
                ]
    assert seen["inside"] == [b"insi"] * 30
    assert seen["host"] == [b"host"] * 50


@root
async def test_bad_filter_and_unknown_device_and_snaplen(ns_a: Netns) -> None:
    with trio.fail_after(10):
        with pytest.raises(InvalidFilter, match=r'^invalid BPF filter "tcp port x": \S'):
            async with open_handle("lo", filter="tcp port x", netns=ns_a.path):
                pass  # pragma: no cover
        with pytest.raises(InvalidDevice, match=r"^eth9: \S"):
            async with open_handle("eth9", netns=ns_a.path):
                pass  # pragma: no cover
        with pytest.raises(InvalidSnaplen):
            async with open_handle("lo", snaplen=0, netns=ns_a.path):
                pass  # pragma: no cover


@root
async def test_cancelling_read_batch_on_a_silent_interface_is_prompt(ns_a: Netns) -> None:
    with trio.fail_after(10):
        async with open_handle("lo", filter=f"udp port {UDP_PORT}", netns=ns_a.path) as cap:
            start = trio.current_time()
            with trio.move_on_after(0.2) as scope:
                await cap.read_batch(max_wait=60)
            assert scope.cancelled_caught
            assert trio.current_time() - start < 1
            # still usable: an empty batch on timeout, a watermark that moves, a drain
            start_ns = time.time_ns()
            empty = await cap.read_batch(max_wait=0.05)
            assert (empty.packets, empty.blocks, empty.first_timestamp) == (0, b"", None)
            assert start_ns - 100_000_000 < empty.watermark < time.time_ns()
            await send_udp(ns_a, "127.0.0.1", UDP_PORT, 5)
            assert (await cap.drain()).packets == 5


@root
async def test_drain_reads_the_tail_before_the_statistics(ns_a: Netns, veth: VethPair) -> None:
    count = 500
    with trio.fail_after(20):
        async with open_handle(veth.a_dev, filter=f"udp port {UDP_PORT}", netns=ns_a.path) as cap:
            await send_udp(veth.b, veth.a_ip, UDP_PORT, count, size=300)
            tail = await cap.drain()  # nothing read before: the whole capture is the tail
            stats = cap.stats()
    seqs = [udp_payload(data)[5:9] for *_, data in packets(tail.blocks)]
    assert seqs == [seq.to_bytes(4, "big") for seq in range(count)]
    assert stats.received >= count


@root
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("user_filter", ["tcp", "inbound and tcp"])  # direction split off
async def test_the_excluded_tcp_link_is_not_captured(
    ns_a: Netns, host: str, user_filter: str
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket_in_netns(ns_a, family, socket.SOCK_STREAM)
    client = socket_in_netns(ns_a, family, socket.SOCK_STREAM)
    with listener, client:
        listener.bind((host, 0))
        listener.listen()
        await trio.to_thread.run_sync(client.connect, listener.getsockname()[:2])
        server, _ = await trio.to_thread.run_sync(listener.accept)
        with server:
            local, remote = client.getsockname(), client.getpeername()
            link = (local[0], local[1], remote[0], remote[1])
            with trio.fail_after(20):
                async with open_handle(
                    "lo", filter=user_filter, netns=ns_a.path, exclude=[link]
                ) as cap:
                    await trio.to_thread.run_sync(client.sendall, b"excluded" * 100)
                    await trio.to_thread.run_sync(server.recv, 4096)
                    other_port = await tcp_exchange(ns_a, host, 3)
                    batches = await collect(cap, 1)
                    batches.append(await cap.drain())
    ports = [tcp_ports(data) for batch in batches for *_, data in packets(batch.blocks)]
    assert ports and all(port is not None and other_port in port for port in ports)
    assert not any(local[1] in port or remote[1] in port for port in ports if port)


def test_the_compiled_engine_is_built_unless_turned_off() -> None:
    if not capture_module._accel.enabled():
        pytest.skip(f"the extensions are off ({capture_module._accel.DISABLE_ENV})")
    assert capture_module._accel.capture is not None


@root
async def test_fallback_to_microseconds_when_the_probe_fails(
    ns_a: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture_module._accel, "capture", None)  # cypcap's engine probes
    monkeypatch.setattr(pkthdr, "header_offset", lambda: None)
    monkeypatch.setattr(capture_module, "header_offset", lambda: None)
    with trio.fail_after(10):
        async with open_handle("lo", filter=f"udp port {UDP_PORT}", netns=ns_a.path) as cap:
            assert not cap.exact_timestamps and "microsecond" in cap.timestamp_note
            before = time.time_ns() // 1000 * 1000
            await send_udp(ns_a, "127.0.0.1", UDP_PORT, 3)
            after = time.time_ns()
            tail = await cap.drain()
    stamps = [ts for ts, *_ in packets(tail.blocks)]
    assert len(stamps) == 3
    assert all(before <= ts <= after and ts % 1000 == 0 for ts in stamps)


@root
@pytest.mark.parametrize("direction", ["inbound", "outbound"])
async def test_direction_filters_keep_the_first_packets(
    ns_a: Netns, veth: VethPair, direction: str
) -> None:
    """libpcap filters the block being filled at ``setfilter`` in user space, where the kernel-only
    ``inbound``/``outbound`` never match: the first burst was lost until the direction became
    ``setdirection``. Traffic the other way, sent after it, must still be left out."""
    to_a = (veth.b, veth.a_ip)  # inbound on a's end
    to_b = (ns_a, veth.b_ip)
    wanted, other = (to_a, to_b) if direction == "inbound" else (to_b, to_a)
    with trio.fail_after(10):
        async with open_handle(
            veth.a_dev, filter=f"{direction} and udp port {UDP_PORT}", netns=ns_a.path
        ) as cap:
            await send_udp(*wanted, UDP_PORT, 20, marker=b"want_")
            await send_udp(*other, UDP_PORT, 5, marker=b"other")
            await send_udp(*wanted, UDP_PORT, 3, marker=b"later")
            tail = await cap.drain()
    payloads = [udp_payload(data)[:9] for *_, data in packets(tail.blocks)]
    assert payloads == [payload(b"want_", seq, 9) for seq in range(20)] + [
        payload(b"later", seq, 9) for seq in range(3)
    ]


@root
async def test_a_vanished_interface_fails_the_read_promptly(ns_a: Netns, veth: VethPair) -> None:
    with trio.fail_after(10):
        async with open_handle(veth.a_dev, filter="udp", netns=ns_a.path) as cap:
            await trio.run_process(["ip", "-n", ns_a.name, "link", "del", veth.a_dev])
            start = trio.current_time()
            with pytest.raises(HandleFailed, match=f"^{veth.a_dev}: \\S"):
                await cap.read_batch(max_wait=5)
            assert trio.current_time() - start < 1
