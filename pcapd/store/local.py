"""The local-disk store: captures in a directory on the api's VM (the embedded default).

Theory of operation. A capture is ``<root>/captures/<user id>/<capture id>.pcapng`` with its
record ``<capture id>.json`` beside it (directories 0700, files 0600: captures hold other
people's traffic). While it runs the file is ``<capture id>.pcapng.partial``; ``finish``
fsyncs it, writes the record atomically (temp file, fsync, rename) and then renames the
capture into place: that rename is the commit point. A crash before it leaves a ``.partial``
(and maybe a record) that nothing lists, and the sweeper removes them after the retention.
``list``/``get`` only show captures whose record *and* file exist and have not expired.

Every file operation runs in a worker thread; writes are gathered into chunks of up to
``_FLUSH`` bytes first, so a capture costs one thread hop per chunk, not per packet batch,
and its memory stays at one chunk whatever its size.

Downloads: the api serves ``GET /downloads/<capture id>?expires=..&token=..``; the token is
an HMAC (:mod:`pcapd.store.signing`) keyed with ``storage.download_secret``. Without one the
api draws a random key at start: links then stop working when the api process ends.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from pcapd.config.model import Secret
from pcapd.store import signing
from pcapd.store.base import (
    CAPTURE_ID,
    PREFIX,
    CaptureInfo,
    DownloadRefused,
    StoreError,
    capture_key,
    check_capture_id,
    check_info,
    check_user_id,
    decode_record,
    encode_record,
    link_expiry,
    listed_record,
    newest_first,
)
from pcapd.store.recordings import MAX_RECORD_BYTES
from pcapd.urls import join

log = logging.getLogger("pcapd.store")

_FLUSH = 1 << 20  # gather writes into chunks of up to this many bytes per thread hop
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_PARTIAL = ".pcapng.partial"
_TMP = ".tmp"
_INVALID_LINK = "invalid download link: ask for a new one (pcapd captures download ID)"


@dataclass(frozen=True)
class SweepStatistics:
    sweeps: int = 0
    deleted_captures: int = 0
    deleted_leftovers: int = 0  # .partial files, records or files without their pair, temps
    last_sweep_at: float | None = None  # wall clock


class LocalStore:
    """Captures under ``root``; see the module's theory of operation."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        retention_days: int,
        url_expiry: float = 3600.0,
        secret: Secret | None = None,
        sweep_interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.retention = retention_days * 86400.0
        self.url_expiry = url_expiry
        self.ephemeral_secret = secret is None
        self._secret = secret if secret is not None else Secret(secrets.token_hex(32))
        self.sweep_interval = sweep_interval
        self.clock = clock
        self._stats = SweepStatistics()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def statistics(self) -> SweepStatistics:
        return self._stats

    def _key(self) -> bytes:
        return self._secret.reveal().encode()

    def _path(self, user_id: str, capture_id: str, suffix: str = ".pcapng") -> Path:
        return self.root / capture_key(user_id, capture_id, suffix)

    # -- start-up ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        await trio.to_thread.run_sync(self._prepare)
        if self.ephemeral_secret:
            log.warning(
                "storage.download_secret is not set: download links are signed with a key "
                "drawn at start and stop working when this api process ends"
            )

    def _prepare(self) -> None:
        try:
            _make_dirs(self.root / PREFIX)
        except OSError as exc:
            raise StoreError(
                f"storage.path: cannot create {self.root / PREFIX} ({exc.strerror}) — "
                "check the path and its permissions"
            ) from exc

    # -- uploads -------------------------------------------------------------------------------

    async def open_upload(self, info: CaptureInfo) -> LocalUpload:
        check_info(info)
        partial = self._path(info.user_id, info.capture_id, _PARTIAL)
        fd = await trio.to_thread.run_sync(self._create, partial)
        return LocalUpload(self, info, partial, fd)

    def _create(self, partial: Path) -> int:
        done = partial.with_name(partial.name.removesuffix(".partial"))
        if done.exists() or done.with_suffix(".json").exists():
            raise StoreError(f"capture {done.stem} is already stored: ids are used once")
        try:
            _make_dirs(partial.parent)
            fd = os.open(
                partial,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE,
            )
        except OSError as exc:
            raise StoreError(f"cannot create {partial} ({exc.strerror})") from exc
        os.fchmod(fd, _FILE_MODE)  # whatever the umask
        return fd

    # -- queries -------------------------------------------------------------------------------

    async def list(self, user_id: str) -> list[CaptureInfo]:
        folder = self.root / PREFIX / check_user_id(user_id)
        now = self.clock()
        return await trio.to_thread.run_sync(self._list, folder, user_id, now)

    def _list(self, folder: Path, user_id: str, now: float) -> builtins.list[CaptureInfo]:
        found = []
        for capture_id in record_ids(folder, CAPTURE_ID):
            info = self._read_capture(folder, user_id, capture_id, now)
            if info is not None:
                found.append(info)
        return newest_first(found)

    def _read_capture(
        self, folder: Path, user_id: str, capture_id: str, now: float
    ) -> CaptureInfo | None:
        """The record of a complete, unexpired capture of ``user_id``, else None."""
        try:
            data = read_record(folder / f"{capture_id}.json")
            if data is None:
                return None
            info = listed_record(data, user_id, capture_id, now)
            complete = (folder / f"{capture_id}.pcapng").is_file()
        except (OSError, StoreError, ValueError) as exc:
            log.warning("skipping the damaged record %s/%s.json: %s", folder, capture_id, exc)
            return None
        return info if complete else None

    async def get(self, user_id: str, capture_id: str) -> CaptureInfo | None:
        folder = self.root / PREFIX / check_user_id(user_id)
        check_capture_id(capture_id)
        now = self.clock()
        return await trio.to_thread.run_sync(self._read_capture, folder, user_id, capture_id, now)

    # -- downloads -----------------------------------------------------------------------------

    async def download_url(
        self, info: CaptureInfo, base_url: str, now: float
    ) -> tuple[str, float]:
        check_info(info)
        expires = link_expiry(info, now, self.url_expiry)
        token = signing.sign(self._key(), info.capture_id, info.user_id, expires)
        page = join(base_url, "downloads", (info.capture_id, "capture id"))
        url = f"{page}?expires={expires}&token={token}"
        return url, float(expires)

    async def open_download(
        self, capture_id: str, expires: int | str, token: str, now: float
    ) -> tuple[Path, CaptureInfo]:
        """Check a download link; the capture's file and record. DownloadRefused: 403 for a
        malformed, tampered or expired link and for a capture that is not there (or not the
        link's), 404 for an id the api never makes."""
        if not isinstance(capture_id, str) or not CAPTURE_ID.fullmatch(capture_id):
            raise DownloadRefused(404, "no such capture")
        if isinstance(expires, str):
            if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
                raise DownloadRefused(403, "malformed download link (expires)")
            expires = int(expires)
        if now >= expires:
            raise DownloadRefused(403, "this download link has expired — ask for a new one")
        found = await trio.to_thread.run_sync(self._find, capture_id, now)
        # an unknown capture and someone else's answer alike: a link says nothing about
        # which captures exist
        if found is None:
            raise DownloadRefused(403, _INVALID_LINK)
        path, info = found
        if not signing.verify(self._key(), capture_id, info.user_id, expires, token, now):
            raise DownloadRefused(403, _INVALID_LINK)
        return path, info

    def _find(self, capture_id: str, now: float) -> tuple[Path, CaptureInfo] | None:
        """The capture with this id, whoever's it is (the token says whether it may go)."""
        try:
            users = list(os.scandir(self.root / PREFIX))
        except OSError:
            return None
        for entry in users:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                user_id = check_user_id(entry.name)
            except ValueError:
                continue
            info = self._read_capture(Path(entry.path), user_id, capture_id, now)
            if info is not None:
                return Path(entry.path) / f"{capture_id}.pcapng", info
        return None

    # -- retention -----------------------------------------------------------------------------

    async def serve_maintenance(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep now and every ``sweep_interval`` seconds, on a fixed grid."""
        task_status.started()
        deadline = trio.current_time()
        while True:
            await self.sweep()
            deadline += self.sweep_interval
            await trio.sleep_until(deadline)

    async def sweep(self) -> SweepStatistics:
        """Delete what has outlived the retention; one pass, in one worker thread."""
        now = self.clock()
        try:
            captures, leftovers = await trio.to_thread.run_sync(self._sweep, now)
        except OSError as exc:
            log.error("retention sweep of %s failed: %s", self.root, exc.strerror or exc)
            captures = leftovers = 0
        s = self._stats
        self._stats = replace(
            s,
            sweeps=s.sweeps + 1,
            deleted_captures=s.deleted_captures + captures,
            deleted_leftovers=s.deleted_leftovers + leftovers,
            last_sweep_at=now,
        )
        if captures or leftovers:
            log.info(
                "retention sweep: deleted %d expired captures and %d leftovers",
                captures,
                leftovers,
                extra={"deleted_captures": captures, "deleted_leftovers": leftovers},
            )
        return self._stats

    def _sweep(self, now: float) -> tuple[int, int]:
        captures = leftovers = 0
        top = self.root / PREFIX
        if not top.is_dir():
            return 0, 0
        for user in os.scandir(top):
            if user.is_dir(follow_symlinks=False):
                c, left = self._sweep_folder(Path(user.path), now)
                captures += c
                leftovers += left
        return captures, leftovers

    def _sweep_folder(self, folder: Path, now: float) -> tuple[int, int]:
        captures = leftovers = 0
        entries = {e.name: e for e in os.scandir(folder)}
        old = now - self.retention
        for name, entry in entries.items():
            capture_id, _, ext = name.partition(".")
            try:
                if ext == "json" and CAPTURE_ID.fullmatch(capture_id):
                    try:
                        expires_at = decode_record(Path(entry.path).read_bytes()).expires_at
                    except ValueError:
                        expires_at = entry.stat(follow_symlinks=False).st_mtime + self.retention
                    if expires_at <= now:
                        capture = folder / f"{capture_id}.pcapng"
                        existed = _unlink(capture)
                        _unlink(Path(entry.path))  # the record last: a crash leaves a leftover
                        if existed:
                            captures += 1
                        else:
                            leftovers += 1
                elif ext in ("pcapng", "pcapng.partial") or name.endswith(_TMP):
                    paired = ext == "pcapng" and f"{capture_id}.json" in entries
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    if not paired and mtime <= old and _unlink(Path(entry.path)):
                        leftovers += 1
            except OSError as exc:
                log.warning("retention sweep: cannot remove %s: %s", entry.path, exc.strerror)
        return captures, leftovers


class LocalUpload:
    """A capture being written to ``<id>.pcapng.partial``."""

    def __init__(self, store: LocalStore, info: CaptureInfo, partial: Path, fd: int) -> None:
        self._store = store
        self._info = info
        self._partial = partial
        self._fd: int | None = fd
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.size = 0

    async def write(self, data: bytes) -> None:
        if self._fd is None:
            raise StoreError(f"the upload of capture {self._info.capture_id} has ended")
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        self.size += len(data)
        if self._pending_size >= _FLUSH:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        chunk = b"".join(self._pending)
        self._pending[:] = [chunk]  # kept until written: a cancelled flush loses nothing
        assert self._fd is not None
        await trio.to_thread.run_sync(_write_all, self._fd, chunk, self._partial)
        self._pending.clear()
        self._pending_size = 0

    async def finish(self, info: CaptureInfo) -> CaptureInfo:
        if (info.user_id, info.capture_id) != (self._info.user_id, self._info.capture_id):
            raise ValueError("finish() got the record of another capture")
        await self._flush()
        final = replace(info, size=self.size)
        fd, self._fd = self._fd, None
        if fd is None:
            raise StoreError(f"the upload of capture {info.capture_id} has ended")
        await trio.to_thread.run_sync(self._commit, fd, final)
        return final

    def _commit(self, fd: int, info: CaptureInfo) -> None:
        folder = self._partial.parent
        record = folder / f"{info.capture_id}.json"
        temp = folder / f"{info.capture_id}.json{_TMP}"
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            tfd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE,
            )
            try:
                os.fchmod(tfd, _FILE_MODE)
                _write_all(tfd, encode_record(info), temp)
                os.fsync(tfd)
            finally:
                os.close(tfd)
            os.rename(temp, record)
            os.rename(self._partial, folder / f"{info.capture_id}.pcapng")  # commit point
            _fsync_dir(folder)
        except OSError as exc:
            raise StoreError(
                f"cannot complete capture {info.capture_id} in {folder} ({exc.strerror})"
            ) from exc

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        self._pending.clear()
        if fd is not None:
            await trio.to_thread.run_sync(_discard, fd, self._partial)


def record_ids(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    """The ids of the records ``<id>.json`` in ``folder`` (a capture's or a recording's, as
    ``pattern`` says ids look), sorted; none when the folder does not exist."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list {folder} ({exc.strerror})") from exc
    ids = []
    for name in sorted(names):
        record_id, _, ext = name.partition(".")
        if ext == "json" and pattern.fullmatch(record_id):
            ids.append(record_id)
    return ids


def read_record(path: Path) -> bytes | None:
    """The record file ``path``, None when there is none. Never through a link (a record put
    there by hand, or by someone else, must not make the api read another file), and at most
    one byte past :data:`~pcapd.store.recordings.MAX_RECORD_BYTES`, so an oversized file is
    seen as one instead of read whole."""
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


def _write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise StoreError(f"cannot write {path} ({exc.strerror})") from exc


def _discard(fd: int, path: Path) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _make_dirs(path: Path) -> None:
    """``path`` and its missing parents, each made 0700 (whatever the umask)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=_DIR_MODE)
        os.chmod(folder, _DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
