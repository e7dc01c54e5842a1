"""The S3/MinIO store, on the minio SDK (blocking: every call runs in a worker thread).

Theory of operation. An upload is one ``put_object(length=-1)`` call — the SDK's streaming
multipart upload — running in one thread of its own for the capture's whole life. It reads
from a :class:`_Pipe` that the Trio side fills: the pipe holds at most ``_PIPE_LIMIT`` bytes,
so when S3 is slower than the capture the api's writer waits (backpressure) instead of
buffering. Waiting costs no thread: the uploader wakes the writer through the Trio token. The
SDK holds about three parts at once (the one in flight, the one being assembled, a copy), so
an upload's memory is bounded by ``3 × part_size + _PIPE_LIMIT`` whatever the capture's size:
~16 MiB of Python objects (~26 MiB of RSS) with the default 5 MiB parts, measured streaming
200 MB into moto; ~28 MiB (~43 MiB RSS) with 8 MiB parts. It is per upload: a capture slower
than S3 still fills one part before the SDK sends it.

``finish`` writes the capture's record (``<id>.json``, the exact values ``list``/``get``
read), then ends the stream: the SDK uploads the last part and completes the object, which is
the commit point (``list`` shows captures whose object *and* record exist). Last the object
gets its tags — a readable summary for operators and bucket tools (user, target, filter,
times, counts, how it ended); S3 allows 10 tags of 256 characters from a small alphabet, so
tag values are cleaned and cut, which is why the record, not the tags, is authoritative.

``abort`` makes the pipe raise inside the SDK, which aborts the multipart upload it started
(if any: below one part nothing was sent). A crashed api leaves an incomplete multipart
upload: MinIO purges those after 24 h by itself; on AWS add an AbortIncompleteMultipartUpload
rule of your own (pcapd keeps other rules; MinIO refuses that action in a lifecycle rule, so
pcapd does not set it).

Retention is the bucket's lifecycle rule ``pcapd-captures-expiry`` (prefix ``captures/``),
set at start-up; download links are presigned GETs that never outlive the capture.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import outcome
import trio
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter, Tags
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from pcapd.store.base import (
    CAPTURE_ID,
    PREFIX,
    CaptureInfo,
    DownloadRefused,
    StoreError,
    capture_key,
    check_info,
    encode_record,
    link_expiry,
    listed_record,
    newest_first,
    user_prefix,
)
from pcapd.store.recording_store import checked_recording
from pcapd.store.recording_store import newest_first as recordings_newest_first
from pcapd.store.recordings import (
    MAX_RECORD_BYTES,
    RECORDINGS_PREFIX,
    Recording,
    RecordingRecordError,
    encode_recording,
    owner_prefix,
    parse_key,
    recording_key,
)
from pcapd.transport.tls import platform_context

log = logging.getLogger("pcapd.store")

RULE_ID = "pcapd-captures-expiry"
CONTENT_TYPE = "application/vnd.tcpdump.pcap"  # the IANA type; Wireshark opens pcapng by magic
DEFAULT_PART_SIZE = 5 << 20  # S3's minimum: the least memory per upload
_PIPE_LIMIT = 2 << 20
_TAG_VALUE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")  # what S3 and MinIO accept in a tag value
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "NotFound"})
_NO_RECORD = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})
"""What S3 answers for an absent recording record (there, a missing bucket stays an error)."""

T = TypeVar("T")


def make_client(
    endpoint: str, access_key: str, secret_key: str, *, secure: bool, region: str | None
) -> Minio:
    """A minio client with bounded timeouts (the SDK's default waits 5 minutes per try), and
    TLS hardened like every other link of the api (TLS 1.2+, AEAD suites only)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10.0, read=120.0),
        maxsize=32,
        cert_reqs="CERT_REQUIRED",
        ssl_context=platform_context(None, what="storage"),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(endpoint, access_key, secret_key, secure=secure, region=region, http_client=http)


async def in_thread(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` (an SDK call) in a worker thread; SDK and network errors as StoreError naming
    ``what``."""
    try:
        return await trio.to_thread.run_sync(fn)
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise StoreError(f"storage: {what} failed ({_describe(exc)})") from exc


def _describe(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    return str(exc) or type(exc).__name__


class Bucket:
    """One bucket through the SDK: what the captures (:class:`S3Store`) and the recording
    records (:class:`S3Recordings`) kept in it share."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bucket={self.bucket!r})"

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        return await in_thread(what, fn)

    def _read_record(self, key: str, missing: frozenset[str]) -> bytes | None:
        """The record object ``key``, at most one byte past ``MAX_RECORD_BYTES`` (an oversized
        one is seen as one); None when S3 answers one of the ``missing`` codes."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in missing:
                return None
            raise
        try:
            data: bytes = response.read(MAX_RECORD_BYTES + 1)
            return data
        finally:
            response.close()
            response.release_conn()


class S3Store(Bucket):
    """Captures in ``bucket``; see the module's theory of operation."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        retention_days: int,
        url_expiry: float = 3600.0,
        part_size: int = DEFAULT_PART_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, bucket)
        self.retention_days = retention_days
        self.url_expiry = url_expiry
        self.part_size = part_size
        self.clock = clock

    # -- start-up ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        await self._call(f"creating bucket {self.bucket}", self._ensure_bucket)
        changed = await self._call(f"setting the lifecycle of bucket {self.bucket}",
                                   self._ensure_rule)
        log.info(
            "bucket %s: captures expire after %d days (lifecycle rule %s %s)",
            self.bucket, self.retention_days, RULE_ID, "set" if changed else "already set",
        )

    def _ensure_bucket(self) -> None:
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # another api made it meanwhile
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def expiry_rule(self) -> Rule:
        return Rule(
            ENABLED,
            rule_filter=Filter(prefix=f"{PREFIX}/"),
            rule_id=RULE_ID,
            expiration=Expiration(days=self.retention_days),
        )

    def _ensure_rule(self) -> bool:
        """Our rule in the bucket's lifecycle, other rules kept; False when already there."""
        current = self.client.get_bucket_lifecycle(self.bucket)
        rules = list(current.rules) if current is not None else []
        ours = self.expiry_rule()
        if [r for r in rules if r.rule_id == RULE_ID] == [ours]:
            return False  # nothing rewritten: a restart leaves the configuration alone
        others = [r for r in rules if r.rule_id != RULE_ID]
        self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig([*others, ours]))
        return True

    async def serve_maintenance(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Nothing to do: the bucket's lifecycle rule expires captures."""
        task_status.started()

    # -- uploads -------------------------------------------------------------------------------

    async def open_upload(self, info: CaptureInfo) -> S3Upload:
        check_info(info)
        return S3Upload(self, info)

    # -- queries -------------------------------------------------------------------------------

    async def list(self, user_id: str) -> list[CaptureInfo]:
        prefix = user_prefix(user_id)
        now = self.clock()
        found = await self._call(f"listing {prefix}", lambda: self._list(prefix, user_id, now))
        return newest_first(found)

    def _list(self, prefix: str, user_id: str, now: float) -> builtins.list[CaptureInfo]:
        names = {o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix)}
        found = []
        for name in sorted(names):
            capture_id = name[len(prefix) :].removesuffix(".pcapng")
            if CAPTURE_ID.fullmatch(capture_id) and f"{prefix}{capture_id}.json" in names:
                info = self._record(user_id, capture_id, now)
                if info is not None:
                    found.append(info)
        return found

    def _record(self, user_id: str, capture_id: str, now: float) -> CaptureInfo | None:
        key = capture_key(user_id, capture_id, ".json")
        data = self._read_record(key, _MISSING)
        if data is None:
            return None
        try:
            return listed_record(data, user_id, capture_id, now)
        except ValueError as exc:
            log.warning("skipping the damaged record %s: %s", key, exc)
            return None

    async def get(self, user_id: str, capture_id: str) -> CaptureInfo | None:
        key = capture_key(user_id, capture_id)
        now = self.clock()

        def get() -> CaptureInfo | None:
            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
            return self._record(user_id, capture_id, now)

        return await self._call(f"reading {key}", get)

    # -- downloads -----------------------------------------------------------------------------

    async def download_url(
        self, info: CaptureInfo, base_url: str, now: float
    ) -> tuple[str, float]:
        """A presigned GET (``base_url`` is unused: the link goes to the bucket)."""
        key = capture_key(info.user_id, info.capture_id)
        expires = link_expiry(info, now, self.url_expiry)
        seconds = expires - int(now)  # signed from the whole second: ends at ``expires``
        url = await self._call(
            f"signing a link to {key}",
            lambda: self.client.presigned_get_object(
                self.bucket,
                key,
                expires=timedelta(seconds=seconds),
                request_date=datetime.fromtimestamp(int(now), UTC),
                response_headers={
                    "response-content-disposition":
                        f'attachment; filename="{info.capture_id}.pcapng"',
                },
            ),
        )
        return url, float(expires)

    async def open_download(
        self, capture_id: str, expires: int | str, token: str, now: float
    ) -> tuple[Path, CaptureInfo]:
        """Never: an S3 store's links go to the bucket, not to the api (answered as the api
        answers any path it does not serve)."""
        raise DownloadRefused(404, "not found")


def tags_of(info: CaptureInfo) -> Tags:
    """The object's tags: a readable, lossy summary (the record holds the exact values)."""

    def clean(value: object) -> str:
        text = _TAG_VALUE.sub("_", str(value))
        return text if len(text) <= 256 else text[:253] + "..."

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    tags = Tags.new_object_tags()
    for key, value in (
        ("user-id", info.user_id),
        ("user-name", info.user_name),
        ("target", info.target),
        ("filter", info.filter),
        ("started", when(info.started_at)),
        ("ended", when(info.ended_at) if info.ended_at is not None else "running"),
        ("packets", info.packets),
        ("dropped", info.dropped),
        ("reason", info.reason),
        ("expires", when(info.expires_at)),
    ):
        tags[key] = clean(value)
    return tags


class _Aborted(Exception):
    """Raised inside the SDK's read to make it abort the multipart upload."""


class _Pipe:
    """Bytes from the Trio thread to the uploader thread, at most ``limit`` bytes waiting.

    The Trio side never blocks a thread: when the pipe is full it waits on a trio.Event that
    the reader sets (through the Trio token) once it has taken bytes out. The lock is only
    ever held for list operations, never across I/O.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None  # set: the reader raises it (abort)
        self._gone: StoreError | None = None  # set: the reader has stopped for good
        self._space: trio.Event | None = None
        self.peak = 0

    # Trio side

    async def put(self, data: bytes) -> None:
        """Queue ``data`` whole, waiting while the pipe is full; cancellable, never half."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            with self._lock:
                if self._gone is not None:
                    raise StoreError(str(self._gone)) from self._gone.__cause__
                if self._size < self._limit:
                    self._chunks.append(data)
                    self._size += len(data)
                    self.peak = max(self.peak, self._size)
                    self._readable.notify()
                    break
                self._space = space = trio.Event()
            await space.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        """End of stream: the reader returns what is left, then b""."""
        with self._lock:
            self._eof = True
            self._readable.notify()

    def fail(self, error: BaseException) -> None:
        """The reader raises ``error`` at its next read."""
        with self._lock:
            self._error = error
            self._readable.notify()

    # uploader side

    def read(self, size: int) -> bytes:
        """``size`` bytes, fewer only at the end of the stream (the SDK reads whole parts)."""
        taken: list[bytes] = []
        while size > 0:
            with self._lock:
                while not self._chunks and not self._eof and self._error is None:
                    self._readable.wait()
                if self._error is not None:
                    raise self._error
                if not self._chunks:
                    break  # end of stream
                chunk = self._chunks.popleft()
                if size < len(chunk):
                    chunk, rest = chunk[:size], chunk[size:]
                    self._chunks.appendleft(rest)
                self._size -= len(chunk)
                space, self._space = self._space, None
            if space is not None:
                self._wake(space)
            taken.append(chunk)
            size -= len(chunk)
        return b"".join(taken)

    @property
    def gone(self) -> StoreError | None:
        """Why the reader stopped, once it has."""
        return self._gone

    def stopped(self, error: StoreError) -> None:
        """The reader is done for good: writers get ``error`` instead of waiting forever."""
        with self._lock:
            self._gone = error
            self._chunks.clear()
            self._size = 0
            space, self._space = self._space, None
        if space is not None:
            self._wake(space)

    def _wake(self, event: trio.Event) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(event.set)


class S3Upload:
    """One capture streaming into ``captures/<user>/<id>.pcapng``; its own uploader thread."""

    def __init__(self, store: S3Store, info: CaptureInfo) -> None:
        self._store = store
        self._info = info
        self._key = capture_key(info.user_id, info.capture_id)
        self._pipe = _Pipe(_PIPE_LIMIT)
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._error: BaseException | None = None
        self._ended = False
        self.size = 0
        trio.lowlevel.start_thread_soon(self._upload, self._deliver, name=f"upload {self._key}")

    @property
    def buffered_peak(self) -> int:
        """The most bytes that ever waited in the pipe."""
        return self._pipe.peak

    def _upload(self) -> None:
        """The uploader thread: one streaming put_object for the capture's whole life."""
        ended = StoreError(f"storage: the upload of {self._key} has ended")
        try:
            self._store.client.put_object(
                self._store.bucket,
                self._key,
                data=self._pipe,  # type: ignore[arg-type]  # read(size) is all the SDK uses
                length=-1,
                part_size=self._store.part_size,
                num_parallel_uploads=1,  # one part in flight: bounded memory
                content_type=CONTENT_TYPE,
                metadata={"pcapd-user-id": self._info.user_id},
            )
        except Exception as exc:
            ended = StoreError(f"storage: uploading {self._key} failed ({_describe(exc)})")
            ended.__cause__ = exc
            raise
        finally:
            self._pipe.stopped(ended)

    def _deliver(self, result: outcome.Outcome[None]) -> None:
        """In the uploader thread, once it ends: hand its outcome to Trio."""
        error = result.error if isinstance(result, outcome.Error) else None

        def done() -> None:
            self._error = error
            self._done.set()

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(done)

    async def write(self, data: bytes) -> None:
        if self._ended:
            raise StoreError(f"storage: the upload of {self._key} has ended")
        chunk = data if type(data) is bytes else bytes(data)
        await self._pipe.put(chunk)
        self.size += len(chunk)

    async def finish(self, info: CaptureInfo) -> CaptureInfo:
        if (info.user_id, info.capture_id) != (self._info.user_id, self._info.capture_id):
            raise ValueError("finish() got the record of another capture")
        if self._ended:
            raise StoreError(f"storage: the upload of {self._key} has ended")
        gone = self._pipe.gone
        if gone is not None:  # the uploader stopped before the end: it failed
            self._ended = True
            raise StoreError(str(gone)) from gone.__cause__
        final = replace(info, size=self.size)
        store, bucket = self._store, self._store.bucket
        record_key = capture_key(info.user_id, info.capture_id, ".json")
        record = encode_record(final)
        try:
            await in_thread(
                f"writing {record_key}",
                lambda: store.client.put_object(
                    bucket, record_key, io.BytesIO(record), len(record),
                    content_type="application/json",
                ),
            )
        except StoreError:
            await self.abort()
            raise
        self._ended = True
        self._pipe.close()
        await self._done.wait()
        if self._error is not None:
            await self._forget(record_key)
            raise StoreError(
                f"storage: uploading {self._key} failed ({_describe(self._error)})"
            ) from self._error
        try:
            await in_thread(
                f"tagging {self._key}",
                lambda: store.client.set_object_tags(bucket, self._key, tags_of(final)),
            )
        except StoreError as exc:  # the capture is complete and listed; only its tags are not
            log.warning("%s", exc)
        return final

    async def abort(self) -> None:
        self._ended = True
        self._pipe.fail(_Aborted())
        await self._done.wait()
        if self._error is not None and not isinstance(self._error, _Aborted):
            log.warning("storage: aborting the upload of %s: %s", self._key,
                        _describe(self._error))

    async def _forget(self, key: str) -> None:
        try:
            await in_thread(
                f"removing {key}", lambda: self._store.client.remove_object(self._store.bucket, key)
            )
        except StoreError as exc:
            log.warning("%s", exc)


# -- recording records ---------------------------------------------------------------------------


class S3Recordings(Bucket):
    """Records as objects ``recordings/<owner>/<id>.json`` of the captures' bucket (outside the
    ``captures/`` lifecycle rule: a record goes when the api forgets the recording); see
    :mod:`pcapd.store.recording_store`."""

    async def put(self, rec: Recording) -> None:
        data = encode_recording(rec)
        key = recording_key(rec.owner, rec.recording_id)
        await self._call(f"writing {key}", lambda: self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type="application/json"))

    async def get(self, owner: str, recording_id: str) -> Recording | None:
        key = recording_key(owner, recording_id)
        data = await self._call(f"reading {key}", lambda: self._read_record(key, _NO_RECORD))
        return None if data is None else checked_recording(data, owner, recording_id, key)

    async def list_owned(self, owner: str) -> list[Recording]:
        prefix = owner_prefix(owner)
        return recordings_newest_first(
            await self._call(f"listing {prefix}", lambda: self._list(prefix)))

    async def list_all(self) -> list[Recording]:
        prefix = f"{RECORDINGS_PREFIX}/"
        return recordings_newest_first(
            await self._call(f"listing {prefix}", lambda: self._list(prefix)))

    async def delete(self, owner: str, recording_id: str) -> bool:
        key = recording_key(owner, recording_id)

        def remove() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _NO_RECORD:
                    return False
                raise
            self.client.remove_object(self.bucket, key)
            return True

        return await self._call(f"removing {key}", remove)

    def _list(self, prefix: str) -> builtins.list[Recording]:
        found = []
        objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        for name in sorted(o.object_name for o in objects if o.object_name):
            parsed = parse_key(name)
            if parsed is None:
                continue
            data = self._read_record(name, _NO_RECORD)
            if data is None:
                continue  # removed since the listing
            try:
                found.append(checked_recording(data, *parsed, name))
            except RecordingRecordError as exc:
                log.warning("skipping recording record %s: %s", name, exc)
        return found
