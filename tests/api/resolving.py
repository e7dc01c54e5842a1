"""Helpers of the resolver tests (``test_cf.py``, ``test_bosh.py``).

Real sockets do not mix with Trio's autojump clock, so resolving runs on the real clock with a
``fail_after`` guard; :func:`refused` returns the :class:`Refusal` a user would see.
"""

from __future__ import annotations

import socket
import uuid

import pytest
import trio

from pcapd.api.resolve import Resolution, Resolver
from pcapd.errors import Refusal
from pcapd.proto import Start

PORT = 9494
"""The agents' port the resolvers are configured with."""
GUARD = 5.0
"""Seconds one resolution may take against the fakes on loopback."""


def unique(prefix: str) -> str:
    """A fresh name, so tests sharing a module's fakes do not depend on each other."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (a port just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def resolve(resolver: Resolver, request: Start, token: str | None) -> Resolution:
    with trio.fail_after(GUARD):
        return await resolver.resolve(request, token)


async def refused(resolver: Resolver, request: Start, token: str | None) -> Refusal:
    with trio.fail_after(GUARD), pytest.raises(Refusal) as info:
        await resolver.resolve(request, token)
    assert info.value.text == str(info.value)
    return info.value
