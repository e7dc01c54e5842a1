"""The api's HTTPS clients of the platform (Cloud Controller, UAA, the BOSH director) and of
S3 are hardened like pcapd's own links (issue 12, hardening): a server that offers only CBC
suites in TLS 1.2 is refused, with the configured CA and with the default trust alike. A
real TLS server on loopback answers; the same server with AEAD suites is reached, so a
refusal is the cipher policy's and nothing else's."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme
import urllib3

from pcapd.api.resolve import get_json, http_client
from pcapd.errors import Refusal
from pcapd.store.s3 import make_client
from tests.transport.test_tls_policy import CBC_ONLY

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
          b"Connection: close\r\n\r\n{}")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, ciphers: str | None) -> ssl.SSLContext:
    """A platform's server: TLS 1.2 only (so the suite list decides), ``ciphers`` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


@asynccontextmanager
async def platform(ca: trustme.CA, ciphers: str | None) -> AsyncIterator[str]:
    """An HTTPS server on loopback answering ``{}`` to any request; its URL."""

    async def answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                request += chunk
            await stream.send_all(ANSWER)
            await stream.aclose()
        except trio.BrokenResourceError:  # the handshake failed: what the test is about
            return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(
            trio.serve_ssl_over_tcp, answer, 0, server_context(ca, ciphers), host="127.0.0.1"))
        yield f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["configured ca", "default trust"])
def platform_client(request: pytest.FixtureRequest, ca_file: Path,
                    monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    """``http_client`` as the api builds it: with ``cf.ca``, or without (the default trust,
    here ``$SSL_CERT_FILE`` naming the test CA)."""
    if request.param == "configured ca":
        return http_client(str(ca_file), what="cf.ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return http_client(None, what="cf.ca")


async def test_a_platform_offering_only_cbc_suites_is_refused(
        ca: trustme.CA, platform_client: httpx.AsyncClient) -> None:
    async with platform_client as http:
        with trio.fail_after(10):
            async with platform(ca, None) as url:  # OpenSSL's defaults: AEAD among them
                assert await get_json(http, url + "/v3/info", token=None,
                                      what="Cloud Controller") == (200, {})
            async with platform(ca, CBC_ONLY) as url:
                with pytest.raises(Refusal) as refused:
                    await get_json(http, url + "/v3/info", token=None, what="Cloud Controller")
    assert refused.value.code == "START_CAPTURE_FAILED"
    assert str(refused.value).startswith(f"cannot reach Cloud Controller at {url}: ConnectError")


async def test_s3_offering_only_cbc_suites_is_refused(
        ca: trustme.CA, ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with trio.fail_after(20):
        async with platform(ca, None) as url:
            s3 = make_client(url.removeprefix("https://"), "key", "secret-key", secure=True,
                             region="us-east-1")
            assert await trio.to_thread.run_sync(s3.bucket_exists, "captures")
        async with platform(ca, CBC_ONLY) as url:
            s3 = make_client(url.removeprefix("https://"), "key", "secret-key", secure=True,
                             region="us-east-1")
            with pytest.raises(urllib3.exceptions.MaxRetryError) as refused:
                await trio.to_thread.run_sync(s3.bucket_exists, "captures")
    assert isinstance(refused.value.reason, urllib3.exceptions.SSLError), refused.value
