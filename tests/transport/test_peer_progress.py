"""What the kernel says about the data toward a peer, on real sockets: the bytes a TCP peer
acknowledged grow once it reads, a Unix socket reports its queue, a sample taken while
nothing waits for the peer never counts as progress, and a peer that stopped reading is told
apart from one whose host vanished (a namespace behind a veth taken down)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio

from pcapd.transport.peer_progress import Sample, progressed, sample
from tests.netns import VethPair, ip, netns, socket_in_netns, veth_pair


def test_a_tcp_peer_that_reads_acknowledges_more() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
        with ours, theirs:
            sock = trio.socket.from_stdlib_socket(ours)
            before = sample(sock)
            ours.sendall(b"x" * 50_000)
            got = 0
            while got < 50_000:
                got += len(theirs.recv(65536))
            deadline = time.monotonic() + 2  # the last ACK may be a delayed one (<= 200 ms)
            while True:
                after = sample(sock)
                assert before is not None and after is not None
                assert before[0] is not None and after[0] is not None
                if after[0] - before[0] == 50_000 or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert after[0] - before[0] == 50_000


def test_a_unix_socket_reports_its_queue_and_no_acknowledgements() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        sock = trio.socket.from_stdlib_socket(ours)
        assert sample(sock) == Sample(None, 0, answering=True)
        ours.sendall(b"x" * 1000)
        acked, queued, answering = sample(sock) or (0, 0, False)
        assert acked is None and queued > 0 and answering


def test_no_socket_no_sample() -> None:
    assert sample(None) is None


def test_progress_needs_data_waiting_and_the_peer_taking_some() -> None:
    assert progressed(Sample(100, 10), Sample(200, 10))  # TCP: acknowledged more while it waited
    assert not progressed(Sample(100, 10), Sample(100, 10))  # took nothing
    assert not progressed(Sample(100, 10), Sample(200, 0))  # nothing waits: a pong has no excuse
    assert progressed(Sample(None, 10), Sample(None, 5))  # Unix: the queue moved
    assert not progressed(Sample(None, 10), Sample(None, 10))
    assert not progressed(None, Sample(200, 10))
    assert not progressed(Sample(100, 10), None)


@contextmanager
def connected_across_a_veth() -> Iterator[tuple[socket.socket, socket.socket, VethPair]]:
    """Our socket on the host, connected to one accepted in a namespace behind a veth."""
    with netns() as ns, veth_pair(None, ns) as pair:
        listener = socket_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            listener.bind((pair.b_ip, 0))
            listener.listen()
            ours = socket.create_connection(listener.getsockname(), timeout=5)
            theirs, _ = listener.accept()
        with ours, theirs:
            yield ours, theirs, pair


def wait_for(check: Callable[[], bool], within: float) -> bool:
    """Bounded poll of kernel state (it has no event to wait for)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.root
def test_a_peer_that_stopped_reading_still_answers_and_a_vanished_one_does_not() -> None:
    """Both take nothing; only the vanished one's host stops acknowledging what we send: the
    keepalive gives the first the longer stall time, the second the pong timeout."""
    with connected_across_a_veth() as (ours, _theirs, pair):
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):  # its receive window and our send buffer fill
            while True:
                ours.send(b"x" * 65536)
        sock = trio.socket.from_stdlib_socket(ours)
        stopped = [sample(sock) for _ in range(2)]
        assert all(s is not None and s.answering and s.queued > 0 for s in stopped), stopped
        # the kernel keeps answering our window probes for a second and more
        assert not wait_for(lambda: not (s := sample(sock)) or not s.answering, 1.5)

    with connected_across_a_veth() as (ours, _theirs, pair):
        sock = trio.socket.from_stdlib_socket(ours)
        ip("-n", pair.b.name, "link", "set", pair.b_dev, "down")  # type: ignore[union-attr]
        ours.send(b"x" * 1000)
        # unacknowledged: retransmitted after the RTO (>= 200 ms), and still unanswered
        assert wait_for(lambda: (s := sample(sock)) is not None and not s.answering, 5)
        gone = sample(sock)
        assert gone is not None and gone.queued == 1000 and not progressed(gone, sample(sock))
