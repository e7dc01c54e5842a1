"""A listener out of descriptors: the connection waits in the backlog and is accepted once
descriptors are free again, with one log line per 10 s saying what is wrong and what to raise,
and one when it accepts again; any other accept failure is raised as it is.

The listener is a real one on loopback whose first accepts fail as the kernel's do when the
process is out of descriptors (a real EMFILE of the whole api is tested in
``tests/e2e/test_idle_connections.py``). Time is virtual: waiting out a minute takes none."""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import cast

import pytest
import trio
import trio.testing

from pcapd.transport.listen import ACCEPT_LOG_INTERVAL, ACCEPT_RETRY, PatientListener


class Exhausted:
    """A socket listener whose next ``failures`` accepts fail with ``code`` (trio's
    ``SocketListener`` is final: this holds one)."""

    def __init__(self, sock: trio.socket.SocketType, failures: int, code: int) -> None:
        self.real = trio.SocketListener(sock)
        self.socket = sock
        self.failures, self.code, self.attempts = failures, code, 0

    async def accept(self) -> trio.SocketStream:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(self.code, os.strerror(self.code))
        return await self.real.accept()

    async def aclose(self) -> None:
        await self.real.aclose()


async def exhausted(failures: int, code: int) -> tuple[Exhausted, socket.socket]:
    """The listener, and a client already connected to it (waiting in its backlog: connected
    blocking, so the virtual clock cannot jump while the handshake is under way)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    client = socket.create_connection(sock.getsockname(), timeout=5)
    return Exhausted(sock, failures, code), client


def patient(inner: Exhausted) -> PatientListener:
    return PatientListener(cast(trio.SocketListener, inner))


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


async def test_a_connection_waits_out_emfile_and_the_log_says_so_once_per_interval(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    failures = 250  # 25 s of retries
    inner, client = await exhausted(failures, errno.EMFILE)
    port = inner.socket.getsockname()[1]
    listener = patient(inner)
    with trio.fail_after(600):
        start = trio.current_time()
        stream = await listener.accept()
        waited = trio.current_time() - start
    assert inner.attempts == failures + 1
    assert waited == pytest.approx(failures * ACCEPT_RETRY)
    refused = events(caplog, "cannot_accept")
    assert len(refused) == 3  # at 0, 10 and 20 s of the 25
    assert refused[0].levelname == "ERROR"
    assert refused[0].getMessage().startswith(
        f"port {port}: cannot accept connections: Too many open files (EMFILE; this process "
        "may open ")
    assert refused[0].getMessage().endswith(
        "files): new connections wait in the backlog until some close; if this recurs, raise "
        "the limit (systemd LimitNOFILE=, bpm limits.open_files)")
    again = events(caplog, "accepting")
    assert [r.getMessage() for r in again] == [
        f"port {port}: accepting connections again after 25.0s"]
    await stream.send_all(b"hi")
    assert client.recv(2) == b"hi"  # the very connection that waited
    client.close()
    await stream.aclose()
    await listener.aclose()


async def test_a_second_shortage_is_logged_anew(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    inner, first = await exhausted(3, errno.ENFILE)
    listener = patient(inner)
    with trio.fail_after(600):
        await (await listener.accept()).aclose()
        await trio.sleep(ACCEPT_LOG_INTERVAL)
        second = socket.create_connection(inner.socket.getsockname(), timeout=5)
        inner.failures = 2
        await (await listener.accept()).aclose()
    assert len(events(caplog, "cannot_accept")) == 2
    assert [r.getMessage().rpartition(" after ")[2] for r in events(caplog, "accepting")] == [
        "0.3s", "0.2s"]
    first.close()
    second.close()
    await listener.aclose()


@pytest.mark.parametrize("code", [errno.ENOMEM, errno.ENOBUFS])
async def test_out_of_kernel_memory_is_waited_out_too(
        code: int, autojump_clock: trio.testing.MockClock) -> None:
    inner, client = await exhausted(5, code)
    listener = patient(inner)
    with trio.fail_after(600):
        await (await listener.accept()).aclose()
    assert inner.attempts == 6
    client.close()
    await listener.aclose()


async def test_any_other_accept_failure_is_raised_at_once_and_not_logged(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    inner, client = await exhausted(1, errno.EINVAL)
    listener = patient(inner)
    with trio.fail_after(600), pytest.raises(OSError) as failed:
        await listener.accept()
    assert failed.value.errno == errno.EINVAL and inner.attempts == 1
    assert not events(caplog, "cannot_accept")
    client.close()
    await listener.aclose()
