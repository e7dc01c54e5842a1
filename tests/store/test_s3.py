"""The S3 store against a real S3 server on loopback (moto in server mode), through the SDK."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3  # type: ignore[import-untyped]  # moto's own dependency
import httpx
import pytest
import trio
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from pcapd.config import S3StorageConfig, parse_api_config
from pcapd.store import CaptureInfo, StoreError, open_store
from pcapd.store.s3 import CONTENT_TYPE, RULE_ID, S3Store, make_client
from tests.s3_server import S3Server, new_bucket

NOW = 1_800_000_000.0
DAY = 86400.0
MiB = 1 << 20


def s3_config(server: S3Server, bucket: str, **settings: Any) -> S3StorageConfig:
    """Through the config parser, as ``pcapd api`` would build it."""
    config = parse_api_config(
        {"id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
         "storage": server.storage(bucket, **settings)},
        require_platform=False,
    )
    assert isinstance(config.storage, S3StorageConfig)
    return config.storage


def s3_store(server: S3Server, bucket: str, *, clock: Callable[[], float] = lambda: NOW,
             **settings: Any) -> S3Store:
    store = open_store(s3_config(server, bucket, **settings), clock=clock)
    assert isinstance(store, S3Store)
    return store


def raw_client(server: S3Server) -> Minio:
    return make_client(server.endpoint, server.access_key, server.secret_key, secure=False,
                       region=server.region)


def capture(capture_id: str, user: str = "user-1", *, started: float = NOW,
            retention: float = 7 * DAY, **fields: Any) -> CaptureInfo:
    values: dict[str, Any] = {
        "capture_id": capture_id, "user_id": user, "user_name": f"{user}@example.com",
        "target": "cf:my-app", "filter": "tcp port 443 and (host 10.0.0.1 or host 10.0.0.2)",
        "started_at": started, "ended_at": None, "packets": 0, "dropped": 0, "size": 0,
        "reason": "running", "expires_at": started + retention,
    }
    values.update(fields)
    return CaptureInfo(**values)


def cid(n: int) -> str:
    return f"{n:032x}"


def ended(info: CaptureInfo, **fields: Any) -> CaptureInfo:
    return replace(info, **{"ended_at": info.started_at + 60, "packets": 1000, "dropped": 3,
                            "reason": "completed", **fields})


def data_stream(total: int, chunk: int = 64 << 10, seed: int = 7) -> Any:
    """``total`` bytes of incompressible data in ``chunk``-sized pieces, made as they go."""
    rnd = random.Random(seed)
    block = rnd.randbytes(MiB)
    sent = n = 0
    while sent < total:
        offset = (n * 4099) % (MiB - chunk)
        piece = block[offset : offset + chunk - 8] + n.to_bytes(8, "big")
        n += 1
        sent += len(piece)
        yield piece


async def upload(store: S3Store, info: CaptureInfo, pieces: Any) -> tuple[CaptureInfo, str]:
    up = await store.open_upload(info)
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
        await up.write(piece)
    return await up.finish(ended(info)), digest.hexdigest()


def object_sha256(client: Minio, bucket: str, key: str) -> str:
    response = client.get_object(bucket, key)
    digest = hashlib.sha256()
    try:
        for block in response.stream(MiB):
            digest.update(block)
    finally:
        response.close()
        response.release_conn()
    return digest.hexdigest()


# -- prepare: bucket and lifecycle rule ---------------------------------------------------------


async def test_prepare_creates_the_bucket_and_the_expiry_rule(s3_server: S3Server) -> None:
    bucket = new_bucket()
    client = raw_client(s3_server)
    with trio.fail_after(30):
        await s3_store(s3_server, bucket, retention_days=3).prepare()
    assert client.bucket_exists(bucket)
    lifecycle = client.get_bucket_lifecycle(bucket)
    assert lifecycle is not None
    [rule] = lifecycle.rules
    assert (rule.rule_id, rule.status) == (RULE_ID, ENABLED)
    assert rule.rule_filter is not None and rule.rule_filter.prefix == "captures/"
    assert rule.expiration is not None and rule.expiration.days == 3


async def test_prepare_again_keeps_one_rule_of_ours_and_the_others(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = new_bucket()
    client = raw_client(s3_server)
    client.make_bucket(bucket)
    foreign = Rule(ENABLED, rule_filter=Filter(prefix="logs/"), rule_id="logs-expiry",
                   expiration=Expiration(days=30))
    stale = Rule(ENABLED, rule_filter=Filter(prefix="captures/"), rule_id=RULE_ID,
                 expiration=Expiration(days=30))
    client.set_bucket_lifecycle(bucket, LifecycleConfig([foreign, stale]))
    with trio.fail_after(30):
        await s3_store(s3_server, bucket, retention_days=7).prepare()  # the existing bucket
        first = client.get_bucket_lifecycle(bucket)
        caplog.set_level(logging.INFO, "pcapd.store")
        await s3_store(s3_server, bucket, retention_days=7).prepare()  # a restart
        assert "lifecycle rule pcapd-captures-expiry already set" in caplog.text  # no rewrite
    after = client.get_bucket_lifecycle(bucket)
    assert first is not None and after is not None
    assert after.rules == first.rules
    by_id = {r.rule_id: r for r in after.rules}
    assert len(after.rules) == 2 and set(by_id) == {"logs-expiry", RULE_ID}
    assert by_id["logs-expiry"] == foreign
    ours = by_id[RULE_ID]
    assert ours.expiration is not None and ours.expiration.days == 7


# -- uploads ------------------------------------------------------------------------------------


async def test_upload_streams_the_exact_bytes_with_record_and_tags(s3_server: S3Server) -> None:
    bucket = new_bucket()
    store = s3_store(s3_server, bucket, part_size=5 * MiB)
    info = capture(cid(1), target="bosh:cf/router,diego-cell", filter="tcp[13] & 2 != 0")
    with trio.fail_after(120):
        await store.prepare()
        final, sha = await upload(store, info, data_stream(30 * MiB))
    assert final == replace(ended(info), size=final.size)
    assert final.size >= 30 * MiB
    client = raw_client(s3_server)
    key = f"captures/user-1/{cid(1)}.pcapng"
    stat = client.stat_object(bucket, key)
    assert (stat.size, stat.content_type) == (final.size, CONTENT_TYPE)
    assert object_sha256(client, bucket, key) == sha
    tags = client.get_object_tags(bucket, key)
    assert tags is not None
    assert dict(tags) == {
        "user-id": "user-1", "user-name": "user-1@example.com",
        "target": "bosh:cf/router_diego-cell", "filter": "tcp_13_ _ 2 _= 0",
        "started": "2027-01-15T08:00:00.000000Z", "ended": "2027-01-15T08:01:00.000000Z",
        "packets": "1000", "dropped": "3", "reason": "completed",
        "expires": "2027-01-22T08:00:00.000000Z",
    }
    # the record keeps the exact values the tags could not
    assert await store.get("user-1", cid(1)) == final


async def test_a_small_capture_is_one_plain_put(s3_server: S3Server) -> None:
    bucket = new_bucket()
    store = s3_store(s3_server, bucket)
    with trio.fail_after(30):
        await store.prepare()
        final, sha = await upload(store, capture(cid(2)), [b"\x0a\x0d\x0d\x0a", b"rest"])
    assert final.size == 8
    assert object_sha256(raw_client(s3_server), bucket, f"captures/user-1/{cid(2)}.pcapng") == sha


async def test_upload_memory_stays_bounded(s3_server: S3Server) -> None:
    """~100 MB streamed in 64 KiB writes with the default 5 MiB parts: Python's peak
    allocation stays near 3 × part_size + the 2 MiB pipe, whatever the capture's size
    (measured: ~16 MiB; ~28 MiB with 8 MiB parts)."""
    store = s3_store(s3_server, new_bucket())
    assert store.part_size == 5 * MiB
    total = 100 * MiB
    with trio.fail_after(300):
        await store.prepare()
        tracemalloc.start()
        try:
            began = time.perf_counter()
            final, _ = await upload(store, capture(cid(3)), data_stream(total))
            took = time.perf_counter() - began
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert final.size >= total
    print(f"\nS3 upload of {final.size / MiB:.0f} MiB in {took:.1f} s "
          f"({final.size / MiB / took:.0f} MiB/s under tracemalloc), "
          f"peak Python allocation {peak / MiB:.1f} MiB")
    assert peak < 24 * MiB


async def test_write_waits_while_s3_is_stalled_and_stays_cancellable() -> None:
    """A server that accepts and never answers: the pipe fills to its limit, then write()
    waits (backpressure, no growth), and a cancelled write leaves the upload consistent."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held: list[trio.socket.SocketType] = []

    async def hold_connections() -> None:
        while True:
            conn, _ = await listener.accept()
            held.append(conn)

    client = make_client(f"127.0.0.1:{port}", "testing", "testing", secure=False,
                         region="us-east-1")
    store = S3Store(client, "stalled-bucket", retention_days=1, part_size=5 * MiB)
    pieces = data_stream(64 * MiB)
    written = 0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold_connections)
            up = await store.open_upload(capture(cid(4)))
            with trio.move_on_after(2) as waited:
                for piece in pieces:
                    await up.write(piece)
                    written += len(piece)
            assert waited.cancelled_caught  # write() blocked: the uploader is stuck
            # the SDK took one part (+1 byte) and is sending it; the pipe holds at most its
            # 2 MiB limit (+ one write); nothing else accumulated
            assert 7 * MiB < written <= 7 * MiB + 1 + (64 << 10)
            assert up.buffered_peak <= 2 * MiB + (64 << 10)
            assert up.size == written  # the cancelled write left no half
            # the server goes away: the SDK's request fails, and so does the upload
            nursery.cancel_scope.cancel()
        for conn in held:
            conn.close()
        listener.close()
        with pytest.raises(StoreError, match="storage: uploading captures/user-1/"):
            while True:
                await up.write(b"x" * 1024)
        with pytest.raises(StoreError):
            await up.finish(ended(capture(cid(4))))
        await up.abort()  # still fine to call


async def test_abort_leaves_no_object_and_no_multipart_upload(s3_server: S3Server) -> None:
    bucket = new_bucket()
    store = s3_store(s3_server, bucket, part_size=5 * MiB)
    with trio.fail_after(60):
        await store.prepare()
        up = await store.open_upload(capture(cid(5)))
        for piece in data_stream(12 * MiB):  # two parts uploaded, a third in the pipe
            await up.write(piece)
        await up.abort()
        small = await store.open_upload(capture(cid(6)))
        await small.write(b"not a part yet")
        await small.abort()
        assert await store.list("user-1") == []
    client = raw_client(s3_server)
    assert list(client.list_objects(bucket, prefix="captures/", recursive=True)) == []
    boto = boto3.client("s3", endpoint_url=s3_server.url, region_name=s3_server.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_an_unreachable_bucket_fails_with_a_store_error(s3_server: S3Server) -> None:
    store = s3_store(s3_server, new_bucket())  # never prepared: the bucket does not exist
    with trio.fail_after(30):
        up = await store.open_upload(capture(cid(7)))
        await up.write(b"data")
        with pytest.raises(StoreError, match=r"storage: writing captures/user-1/.*NoSuchBucket"):
            await up.finish(ended(capture(cid(7))))
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await store.list("user-1")


# -- list, get, download ------------------------------------------------------------------------


async def test_list_and_get_show_only_the_users_own_complete_captures(
    s3_server: S3Server,
) -> None:
    bucket = new_bucket()
    clock = [NOW]
    store = s3_store(s3_server, bucket, clock=lambda: clock[0])
    with trio.fail_after(60):
        await store.prepare()
        a1, _ = await upload(store, capture(cid(10), "alice", started=NOW - 300), [b"a1"])
        a2, _ = await upload(store, capture(cid(11), "alice", started=NOW - 100), [b"a2"])
        b1, _ = await upload(store, capture(cid(12), "bob"), [b"b1"])
        old, _ = await upload(store, capture(cid(13), "alice", started=NOW - 8 * DAY), [b"o"])
        running = await store.open_upload(capture(cid(14), "alice"))
        await running.write(b"still going")

        assert await store.list("alice") == [a2, a1]  # newest first; no expired, no running
        assert await store.list("bob") == [b1]
        assert await store.list("carol") == []
        assert await store.get("alice", cid(10)) == a1
        assert await store.get("bob", cid(10)) is None  # alice's: as if missing
        assert await store.get("alice", cid(12)) is None
        assert await store.get("alice", cid(13)) is None  # expired, not yet lifecycled
        assert await store.get("alice", cid(14)) is None  # not complete
        assert await store.get("alice", cid(99)) is None
        assert old.expires_at < NOW
        await running.abort()


async def test_presigned_url_downloads_and_never_outlives_the_capture(
    s3_server: S3Server,
) -> None:
    bucket = new_bucket()
    store = s3_store(s3_server, bucket, url_expiry=600)
    with trio.fail_after(60):
        await store.prepare()
        info, _ = await upload(store, capture(cid(20), started=time.time()), [b"pcapng", b"!"])
        now = time.time()
        url, expires = await store.download_url(info, "https://ignored.example.com", now)
    async with httpx.AsyncClient(trust_env=False) as http:  # loopback only, no proxy
        response = await http.get(url)
    assert (response.status_code, response.content) == (200, b"pcapng!")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.hostname == "127.0.0.1"
    assert parts.path == f"/{bucket}/captures/user-1/{cid(20)}.pcapng"
    # moto enforces neither signatures nor expiry: check what the link asks S3 to enforce
    assert query["X-Amz-Expires"] == ["600"]
    assert query["X-Amz-Date"] == [time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(now)))]
    assert expires == int(now) + 600

    soon = replace(info, expires_at=NOW + 90.5)
    url, expires = await store.download_url(soon, "", NOW + 0.25)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["90"]
    assert expires == NOW + 90 <= soon.expires_at


async def test_ids_that_could_leave_the_prefix_are_refused(s3_server: S3Server) -> None:
    store = s3_store(s3_server, new_bucket())
    for user in ("..", ".", "a/b", "", "x" * 129, "alice\n", "a%2f"):
        with pytest.raises(ValueError, match="user id"):
            await store.open_upload(capture(cid(30), user))
        with pytest.raises(ValueError):
            await store.list(user)
    for bad in ("../" + cid(1)[3:], cid(0xABC).upper(), cid(1)[:31], cid(1) + "/x"):
        with pytest.raises(ValueError, match="not a capture id"):
            await store.get("alice", bad)
        with pytest.raises(ValueError):
            await store.open_upload(capture(bad))


def test_socket_helper_is_loopback_only(s3_server: S3Server) -> None:
    host, _, port = s3_server.endpoint.rpartition(":")
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass
