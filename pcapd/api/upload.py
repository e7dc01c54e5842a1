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
from pcapd.tokens import Identity
from pcapd.transport.ws import Link, LinkClosed


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
    """The store's name for a user: their UAA's fingerprint and their id.

    User ids are unique within one UAA only, and a client token's "user id" is its client id:
    ``admin`` on the director's UAA and ``admin`` on Cloud Foundry's must not share captures.
    Ids that are not plain names are hashed rather than trusted in a path.
    """
    realm = hashlib.sha256(identity.issuer.encode()).hexdigest()[:12]
    user = identity.user_id
    if not _PLAIN.fullmatch(user):
        user = "h" + hashlib.sha256(user.encode()).hexdigest()[:32]
    return f"{realm}-{user}"


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
