"""Captures that go to the store (``--upload``): the merged pcapng streams into an upload while
the user keeps seeing live progress; at the end the user gets the capture id and a URL.

A capture cut short — the user gone, the api draining, a limit — still ends as a complete,
valid file in the store, marked with how it ended: the user's link going away does not cancel
an upload, it stops it gracefully (agents stop, the tail is flushed, statistics written).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import replace

from pcapd.proto import Download, End, Notice, Started, Statistics, StoredCapture
from pcapd.store import CaptureInfo, Store, Upload
from pcapd.store.base import newest_first
from pcapd.tokens import Identity
from pcapd.transport.link import Link, LinkClosed


class UploadOutput:
    """An :class:`~pcapd.api.capture.Output` writing pcapng to an upload and messages to the
    user's link (while it lasts)."""

    def __init__(self, upload: Upload, link: Link) -> None:
        self.upload = upload
        self.link = link
        self.user_gone = False
        self.bytes = 0

    async def send_data(self, payload: bytes) -> None:
        await self.upload.write(payload)
        self.bytes += len(payload)

    async def send_message(self, msg: Started | Notice | Statistics) -> None:
        if self.user_gone:
            return
        try:
            await self.link.send(msg)
        except LinkClosed:
            self.user_gone = True


def owner_key(identity: Identity) -> str:
    """The store's name for an owner: their UAA's fingerprint, their kind and their id
    (``<realm>.user.<id>``, ``<realm>.client.<id>``).

    User ids are unique within one UAA only, and a client token's "user id" is its client id:
    ``admin`` on the director's UAA and ``admin`` on Cloud Foundry's must not share captures,
    nor may a client whose id equals a user's id see that user's captures (issue 12, hole 8):
    users and clients are two namespaces. ``.`` never occurs in the keys of pcapd versions
    before kinds (``<realm>-<id>``), so no new key can equal an old one. Ids that are not plain
    names are hashed rather than trusted in a path.
    """
    kind = "client" if identity.is_client else "user"
    return f"{_realm(identity)}.{kind}.{_plain(identity.user_id)}"


def legacy_owner_key(identity: Identity) -> str | None:
    """Where a *user's* captures were kept before owners had kinds (``<realm>-<id>``); None for
    a client. Captures there are shown only with :func:`legacy_capture_is_theirs`."""
    return None if identity.is_client else f"{_realm(identity)}-{_plain(identity.user_id)}"


def legacy_capture_is_theirs(info: CaptureInfo, identity: Identity) -> bool:
    """Whether a capture stored under :func:`legacy_owner_key` was this user's own.

    That folder was shared by the user and any client whose id equals the user's id. A
    client's record names the client id as its user name; a user's names the user (UAA user
    names are not their guid). So a record is the user's when its name is theirs and is not
    the id; one that cannot be told apart is shown to nobody and expires with the retention.
    Clients' captures from before are shown to nobody (automation rarely comes back for them).
    """
    return (not identity.is_client and info.user_name == identity.user_name
            and info.user_name != identity.user_id)


async def owned_captures(store: Store, identity: Identity) -> list[CaptureInfo]:
    """The identity's stored captures (with a user's own from before kinds), newest first."""
    found = await store.list(owner_key(identity))
    legacy = legacy_owner_key(identity)
    if legacy is not None:
        found += [info for info in await store.list(legacy)
                  if legacy_capture_is_theirs(info, identity)]
    return newest_first(found)


async def owned_capture(store: Store, identity: Identity, capture_id: str) -> CaptureInfo | None:
    """The identity's capture ``capture_id``; None when it is missing or anyone else's."""
    info = await store.get(owner_key(identity), capture_id)
    legacy = legacy_owner_key(identity)
    if info is None and legacy is not None:
        info = await store.get(legacy, capture_id)
        if info is not None and not legacy_capture_is_theirs(info, identity):
            info = None
    return info


def _realm(identity: Identity) -> str:
    return hashlib.sha256(identity.issuer.encode()).hexdigest()[:12]


def _plain(user: str) -> str:
    return user if _PLAIN.fullmatch(user) else "h" + hashlib.sha256(user.encode()).hexdigest()[:32]


_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,100}")


def stored_capture(info: CaptureInfo) -> StoredCapture:
    """The wire form of a store's record."""
    return StoredCapture(capture_id=info.capture_id, target=info.target[:256],
                         filter=info.filter[:8192], started_at=info.started_at,
                         ended_at=info.ended_at, packets=info.packets, dropped=info.dropped,
                         size=info.size, reason=info.reason[:256], expires_at=info.expires_at)


async def finish_upload(store: Store, upload: Upload, info: CaptureInfo, end: End | None,
                        size: int, base_url: str) -> Download:
    """Complete the object with how the capture ended; the user's download."""
    totals = end.totals if end is not None else None
    final = replace(
        info, ended_at=time.time(), size=size,
        packets=totals.written if totals else 0,
        dropped=(totals.kernel_dropped + totals.agent_dropped + totals.api_dropped)
        if totals else 0,
        reason=stored_reason(end) if end is not None else "aborted")
    stored = await upload.finish(final)
    url, expires = await store.download_url(stored, base_url, time.time())
    return Download(capture=stored_capture(stored), url=url, url_expires_at=expires)


def stored_reason(end: End) -> str:
    """How a stored capture ended, as ``captures list`` shows it: ``completed``, or
    ``completed - partial: 2 of 3 sources`` when sources it should hold are missing (in the
    characters an S3 tag value may hold)."""
    lost = sum(1 for a in end.absent if a.partial)
    if not lost:
        return end.reason
    return f"{end.reason} - partial: {end.expected - lost} of {end.expected} sources"
