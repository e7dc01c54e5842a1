"""What the kernel says about the data toward a peer, on real sockets: the bytes a TCP peer
acknowledged grow once it reads, a Unix socket reports its queue, and a sample taken while
nothing waits for the peer never counts as progress."""

from __future__ import annotations

import socket
import time

import trio

from pcapd.transport.peer_progress import progressed, sample


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
        assert sample(sock) == (None, 0)
        ours.sendall(b"x" * 1000)
        acked, queued = sample(sock) or (0, 0)
        assert acked is None and queued > 0


def test_no_socket_no_sample() -> None:
    assert sample(None) is None


def test_progress_needs_data_waiting_and_the_peer_taking_some() -> None:
    assert progressed((100, 10), (200, 10))  # TCP: acknowledged more while data waited
    assert not progressed((100, 10), (100, 10))  # took nothing
    assert not progressed((100, 10), (200, 0))  # nothing waits: a pong has no excuse
    assert progressed((None, 10), (None, 5))  # Unix: the queue moved
    assert not progressed((None, 10), (None, 10))
    assert not progressed(None, (200, 10))
    assert not progressed((100, 10), None)
