"""Fixtures of the api's tests: the HTTP client that resolvers use against the fakes."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    """One system-CA context for every test's client (loading the CAs takes most of the time
    a client takes to make; the fakes here speak plain HTTP anyway)."""
    return ssl.create_default_context()


@pytest.fixture
async def http(tls: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=tls, timeout=5.0, follow_redirects=False) as client:
        yield client
