"""Recording records in the store: on the api's disk or in the S3 bucket, beside the captures.

Both keep one JSON object per recording at ``recordings/<owner>/<recording id>.json``
(:mod:`pcapd.store.recordings` holds the format and its checks). A put replaces the record
whole: on disk through a temporary file, fsync and rename (a reader sees the old record or the
new, never half), in S3 as one PUT. The last writer wins; the api that owns a recording's
links writes its updates, and every other api only reads (or deletes on ``record stop``).

Reads trust nothing: :meth:`get` refuses a damaged or foreign record with a
:class:`~pcapd.store.recordings.RecordingRecordError` naming the key; :meth:`list_owned` and
:meth:`list_all` skip such records with a warning in the log, so one bad file cannot hide a
user's other recordings.

These classes sit beside :class:`~pcapd.store.local.LocalStore` and
:class:`~pcapd.store.s3.S3Store` instead of inside them: :func:`recordings_of` gives the one
that shares a store's directory or bucket.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from pcapd.store.base import Store, StoreError
from pcapd.store.local import LocalStore, _fsync_dir, _make_dirs, _write_all
from pcapd.store.recordings import (
    MAX_RECORD_BYTES,
    RECORDING_ID,
    RECORDINGS_PREFIX,
    Recording,
    RecordingRecordError,
    check_owner,
    encode_recording,
    owner_prefix,
    parse_key,
    read_recording,
    recording_key,
)

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger("pcapd.store")

T = TypeVar("T")

_FILE_MODE = 0o600
_TMP = ".tmp"
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})


class RecordingStore(Protocol):
    """Where the api keeps recording records (see the module's docstring)."""

    async def put(self, rec: Recording) -> None:
        """Create or replace the record of ``rec.recording_id``."""
        ...

    async def get(self, owner: str, recording_id: str) -> Recording | None:
        """The owner's recording; None when there is none (or it is another owner's)."""
        ...

    async def list_owned(self, owner: str) -> list[Recording]:
        """The owner's recordings, newest first."""
        ...

    async def list_all(self) -> list[Recording]:
        """Every owner's recordings, newest first (to count ``recorder.total``, to expire)."""
        ...

    async def delete(self, owner: str, recording_id: str) -> bool:
        """Remove the record; False when there was none."""
        ...


def newest_first(records: list[Recording]) -> list[Recording]:
    return sorted(records, key=lambda r: (r.created_at, r.recording_id), reverse=True)


def recordings_of(store: Store) -> RecordingStore:
    """The recording records kept beside ``store``'s captures (same directory or bucket)."""
    if isinstance(store, LocalStore):
        return LocalRecordings(store.root)
    from pcapd.store.s3 import S3Store  # noqa: PLC0415  # minio only when used

    if isinstance(store, S3Store):
        return S3Recordings(store.client, store.bucket)
    raise TypeError(f"no recording records for {store!r}")


# -- the api's disk ------------------------------------------------------------------------------


class LocalRecordings:
    """Records under ``<root>/recordings/`` (directories 0700, files 0600); every file
    operation in a worker thread."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalRecordings({str(self.root)!r})"

    async def put(self, rec: Recording) -> None:
        data = encode_recording(rec)
        path = self.root / recording_key(rec.owner, rec.recording_id)
        await trio.to_thread.run_sync(_replace_file, path, data)

    async def get(self, owner: str, recording_id: str) -> Recording | None:
        path = self.root / recording_key(owner, recording_id)
        data = await trio.to_thread.run_sync(_read_file, path)
        if data is None:
            return None
        return _checked(data, owner, recording_id, str(path))

    async def list_owned(self, owner: str) -> list[Recording]:
        folder = self.root / owner_prefix(owner)
        found = await trio.to_thread.run_sync(self._list_folder, folder, owner)
        return newest_first(found)

    async def list_all(self) -> list[Recording]:
        found = await trio.to_thread.run_sync(self._list_all)
        return newest_first(found)

    async def delete(self, owner: str, recording_id: str) -> bool:
        path = self.root / recording_key(owner, recording_id)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StoreError(f"cannot remove {path} ({exc.strerror})") from exc
            return True

        return await trio.to_thread.run_sync(remove)

    def _list_all(self) -> builtins.list[Recording]:
        top = self.root / RECORDINGS_PREFIX
        try:
            owners = [e for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {top} ({exc.strerror})") from exc
        found = []
        for entry in owners:
            try:
                owner = check_owner(entry.name)
            except RecordingRecordError:
                continue  # not a folder pcapd makes
            found += self._list_folder(Path(entry.path), owner)
        return found

    def _list_folder(self, folder: Path, owner: str) -> builtins.list[Recording]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {folder} ({exc.strerror})") from exc
        found = []
        for name in sorted(names):
            recording_id, _, ext = name.partition(".")
            if ext != "json" or not RECORDING_ID.fullmatch(recording_id):
                continue
            path = folder / name
            try:
                data = _read_file(path)
                rec = None if data is None else _checked(data, owner, recording_id, str(path))
            except (RecordingRecordError, StoreError) as exc:
                log.warning("skipping recording record %s: %s", path, exc)
                continue
            if rec is not None:
                found.append(rec)
        return found


def _read_file(path: Path) -> bytes | None:
    """At most one byte past the record limit (so an oversized file is seen as one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path} ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as file:
        try:
            return file.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise StoreError(f"cannot read {path} ({exc.strerror})") from exc


def _replace_file(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or what it held before: never a mix."""
    temp = path.with_name(path.name + _TMP)
    try:
        _make_dirs(path.parent)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)
            _write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
        _fsync_dir(path.parent)
    except (OSError, StoreError) as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot write {path} ({exc.strerror})") from exc



# -- the bucket ----------------------------------------------------------------------------------


class S3Recordings:
    """Records as objects ``recordings/<owner>/<id>.json`` of the captures' bucket (outside the
    ``captures/`` lifecycle rule: a record goes when the api forgets the recording)."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"S3Recordings(bucket={self.bucket!r})"

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        from pcapd.store.s3 import in_thread  # noqa: PLC0415  # minio only when used

        return await in_thread(what, fn)

    async def put(self, rec: Recording) -> None:
        data = encode_recording(rec)
        key = recording_key(rec.owner, rec.recording_id)
        await self._call(f"writing {key}", lambda: self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type="application/json"))

    async def get(self, owner: str, recording_id: str) -> Recording | None:
        key = recording_key(owner, recording_id)
        data = await self._call(f"reading {key}", lambda: self._read(key))
        return None if data is None else _checked(data, owner, recording_id, key)

    async def list_owned(self, owner: str) -> list[Recording]:
        prefix = owner_prefix(owner)
        return newest_first(await self._call(f"listing {prefix}", lambda: self._list(prefix)))

    async def list_all(self) -> list[Recording]:
        prefix = f"{RECORDINGS_PREFIX}/"
        return newest_first(await self._call(f"listing {prefix}", lambda: self._list(prefix)))

    async def delete(self, owner: str, recording_id: str) -> bool:
        key = recording_key(owner, recording_id)

        def remove() -> bool:
            from minio.error import S3Error  # noqa: PLC0415

            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return False
                raise
            self.client.remove_object(self.bucket, key)
            return True

        return await self._call(f"removing {key}", remove)

    def _read(self, key: str) -> bytes | None:
        from minio.error import S3Error  # noqa: PLC0415

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        try:
            data: bytes = response.read(MAX_RECORD_BYTES + 1)
            return data
        finally:
            response.close()
            response.release_conn()

    def _list(self, prefix: str) -> builtins.list[Recording]:
        found = []
        objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        for name in sorted(o.object_name for o in objects if o.object_name):
            parsed = parse_key(name)
            if parsed is None:
                continue
            data = self._read(name)
            if data is None:
                continue  # removed since the listing
            try:
                found.append(_checked(data, *parsed, name))
            except RecordingRecordError as exc:
                log.warning("skipping recording record %s: %s", name, exc)
        return found


def _checked(data: bytes, owner: str, recording_id: str, where: str) -> Recording:
    try:
        return read_recording(data, owner, recording_id)
    except RecordingRecordError as exc:
        raise RecordingRecordError(f"{where}: {exc}") from None


__all__ = ["LocalRecordings", "RecordingStore", "S3Recordings", "newest_first", "recordings_of"]
