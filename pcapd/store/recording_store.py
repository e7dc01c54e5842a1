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
that shares a store's directory or bucket. The bucket's, :class:`~pcapd.store.s3.S3Recordings`,
lives in :mod:`pcapd.store.s3` beside the captures' (the SDK calls they share; minio is
imported only when a bucket is used).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
from pathlib import Path
from typing import Protocol

import trio

from pcapd.store.base import Store, StoreError
from pcapd.store.local import (
    LocalStore,
    _fsync_dir,
    _make_dirs,
    _write_all,
    read_record,
    record_ids,
)
from pcapd.store.recordings import (
    RECORDING_ID,
    RECORDINGS_PREFIX,
    Recording,
    RecordingRecordError,
    check_owner,
    encode_recording,
    owner_prefix,
    read_recording,
    recording_key,
)

log = logging.getLogger("pcapd.store")

_FILE_MODE = 0o600
_TMP = ".tmp"


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
    from pcapd.store.s3 import S3Recordings, S3Store  # noqa: PLC0415  # minio only when used

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
        data = await trio.to_thread.run_sync(read_record, path)
        if data is None:
            return None
        return checked_recording(data, owner, recording_id, str(path))

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
        found = []
        for recording_id in record_ids(folder, RECORDING_ID):
            path = folder / f"{recording_id}.json"
            try:
                data = read_record(path)
                rec = None if data is None else checked_recording(data, owner, recording_id,
                                                                  str(path))
            except (RecordingRecordError, StoreError) as exc:
                log.warning("skipping recording record %s: %s", path, exc)
                continue
            if rec is not None:
                found.append(rec)
        return found


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



def checked_recording(data: bytes, owner: str, recording_id: str, where: str) -> Recording:
    """The record ``data`` read from ``where`` (a path or a key, named in the error)."""
    try:
        return read_recording(data, owner, recording_id)
    except RecordingRecordError as exc:
        raise RecordingRecordError(f"{where}: {exc}") from None


__all__ = ["LocalRecordings", "RecordingStore", "checked_recording", "newest_first",
           "recordings_of"]
