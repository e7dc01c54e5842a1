"""What a store is to the api: where uploads go, what it lists, how a user downloads.

Two stores share this interface: :class:`~pcapd.store.local.LocalStore` (a directory, the
embedded default) and :class:`~pcapd.store.s3.S3Store` (an S3/MinIO bucket). Both keep a
capture under ``captures/<user id>/<capture id>.pcapng`` with a JSON record of it beside, and
both refuse any id that could step out of that layout: capture ids are the api's own
(``uuid4().hex``), user ids come from a verified token, and neither is trusted further than a
strict pattern.

Pure: the interface names Trio only for type checkers, so the ids, keys and records below (and
:mod:`pcapd.store.signing`) load without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from pcapd.errors import PcapdError
from pcapd.store.recordings import RecordingTarget

if TYPE_CHECKING:
    from trio import TaskStatus

CAPTURE_ID = re.compile(r"[a-f0-9]{32}")
USER_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
PREFIX = "captures"


@dataclass(frozen=True)
class CaptureInfo:
    """What is stored with each capture, and what a user's list shows."""

    capture_id: str
    user_id: str
    user_name: str
    target: str
    filter: str
    started_at: float
    ended_at: float | None
    packets: int
    dropped: int
    size: int
    reason: str  # completed|stopped|limit|drained|failed|aborted|running
    expires_at: float  # started_at + retention
    reauthorize: RecordingTarget | None = None
    """For a capture pcapd stored on its own (a recording's trigger), the target whose
    permission every download asks the owner's token for again: nobody asked for this
    capture with a token checked at the time, and an owner who lost access since must not
    get traffic captured after. None: the owner asked for it, and was checked then."""


class StoreError(PcapdError):
    """The store could not do what was asked (disk, network, S3 answer); the message says
    what and where, never a credential."""


class InvalidId(PcapdError, ValueError):
    """A user or capture id that cannot name a stored capture (it could step out of
    ``captures/<user id>/``, or the api never makes such an id)."""


class DownloadRefused(PcapdError):
    """A download link was refused: ``status`` 403 (tampered, malformed or expired link) or
    404 (no such capture)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Upload(Protocol):
    """One capture on its way into the store. Every upload ends with :meth:`finish` or
    :meth:`abort` (call either under a shielded cancel scope: the capture's own cancellation
    must not leave it half done)."""

    async def write(self, data: bytes) -> None:
        """Append pcapng bytes, in order, as they are produced."""
        ...

    async def finish(self, info: CaptureInfo) -> CaptureInfo:
        """Complete the capture with its final record; returns it with ``size`` filled in."""
        ...

    async def abort(self) -> None:
        """Drop an upload that must not exist (nothing valid was written)."""
        ...


class Store(Protocol):
    async def prepare(self) -> None:
        """At api start-up: directory made (local) / bucket and lifecycle rule set (S3)."""
        ...

    async def open_upload(self, info: CaptureInfo) -> Upload: ...

    async def list(self, user_id: str) -> list[CaptureInfo]:
        """This user's complete, unexpired captures, newest first."""
        ...

    async def get(self, user_id: str, capture_id: str) -> CaptureInfo | None:
        """The capture, or None when it is missing, expired or another user's."""
        ...

    async def download_url(
        self, info: CaptureInfo, base_url: str, now: float
    ) -> tuple[str, float]:
        """A link that downloads the capture, and when it stops working (never later than
        the capture's own expiry)."""
        ...

    async def open_download(
        self, capture_id: str, expires: int | str, token: str, now: float
    ) -> tuple[Path, CaptureInfo]:
        """Check a link this api serves (``GET /downloads/<capture id>?expires=..&token=..``);
        the capture's file and record. DownloadRefused otherwise, with the HTTP status to
        answer. Only the local store's links come here: S3's go to the bucket, so it refuses
        every one as not found (404)."""
        ...

    async def serve_maintenance(self, *, task_status: TaskStatus[None] = ...) -> None:
        """Local: the retention sweeper (never returns). S3: nothing (the bucket's lifecycle
        rule expires captures); returns once started."""
        ...


# -- ids, keys and records (pure) ------------------------------------------------------------


def check_capture_id(capture_id: str) -> str:
    """``capture_id`` if it is one the api could have made; InvalidId otherwise."""
    if not isinstance(capture_id, str) or not CAPTURE_ID.fullmatch(capture_id):
        raise InvalidId(f"not a capture id: {capture_id!r:.80} (expected 32 hex digits)")
    return capture_id


def check_user_id(user_id: str) -> str:
    """``user_id`` if it is safe as one path segment / key part; InvalidId otherwise."""
    if (
        not isinstance(user_id, str)
        or not USER_ID.fullmatch(user_id)
        or user_id in (".", "..")
    ):
        raise InvalidId(
            f"user id {user_id!r:.80} cannot name a storage folder "
            "(expected 1 to 128 letters, digits, '.', '_' or '-')"
        )
    return user_id


def capture_key(user_id: str, capture_id: str, suffix: str = ".pcapng") -> str:
    """``captures/<user id>/<capture id><suffix>``, both ids checked."""
    return f"{PREFIX}/{check_user_id(user_id)}/{check_capture_id(capture_id)}{suffix}"


def user_prefix(user_id: str) -> str:
    return f"{PREFIX}/{check_user_id(user_id)}/"


def check_info(info: CaptureInfo) -> CaptureInfo:
    check_user_id(info.user_id)
    check_capture_id(info.capture_id)
    return info


def encode_record(info: CaptureInfo) -> bytes:
    """The JSON record stored beside a capture."""
    return msgspec.json.encode(info)


def decode_record(data: bytes) -> CaptureInfo:
    """A stored record back; ValueError when it is not one (damaged, foreign)."""
    try:
        return check_info(msgspec.json.decode(data, type=CaptureInfo))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a capture record: {exc}") from exc


def listed_record(data: bytes, user_id: str, capture_id: str, now: float) -> CaptureInfo | None:
    """The record stored as ``<user id>/<capture id>.json`` if a user may see it ``now``;
    None once it has expired. ValueError when it is damaged or names another capture than
    the key it is stored under: a store skips such a record *and logs why* (an operator
    should hear of a copied or hand-edited record, whichever backend holds it).

    Both stores read every record through this one check, so they list and show the same.
    """
    info = decode_record(data)
    if (info.user_id, info.capture_id) != (user_id, capture_id):
        raise ValueError(
            f"it names another capture ({info.user_id}/{info.capture_id}.json)"
        )
    return info if info.expires_at > now else None


def newest_first(infos: list[CaptureInfo]) -> list[CaptureInfo]:
    return sorted(infos, key=lambda i: (i.started_at, i.capture_id), reverse=True)


def link_expiry(info: CaptureInfo, now: float, url_expiry: float) -> int:
    """When a download link made ``now`` stops working: ``url_expiry`` later, but never
    after the capture itself expires. Whole seconds, rounded down. DownloadRefused (404)
    when the capture has (all but) expired."""
    expires = int(min(now + url_expiry, info.expires_at))
    if expires - now < 1:
        raise DownloadRefused(404, f"capture {info.capture_id} has expired")
    return expires
