"""Stored captures: the local-disk store (the embedded default) and the S3/MinIO store.

The api sees only :class:`Store` and :class:`Upload` (``base.py``); :func:`open_store` builds
the configured one before the event loop starts. The package and its pure half (``base.py``:
ids, keys, records; ``signing.py``) import without Trio: each backend is imported when built.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pcapd.config.model import LocalStorageConfig, StorageConfig
from pcapd.store.base import (
    CaptureInfo,
    DownloadRefused,
    InvalidId,
    Store,
    StoreError,
    Upload,
    capture_key,
    check_capture_id,
    check_user_id,
)

__all__ = [
    "CaptureInfo",
    "DownloadRefused",
    "InvalidId",
    "Store",
    "StoreError",
    "Upload",
    "capture_key",
    "check_capture_id",
    "check_user_id",
    "open_store",
]


def open_store(config: StorageConfig, *, clock: Callable[[], float] = time.time) -> Store:
    """The store ``config`` describes; no I/O yet (``prepare()`` makes directories/buckets)."""
    if isinstance(config, LocalStorageConfig):
        from pcapd.store.local import LocalStore  # noqa: PLC0415  # trio only when used

        return LocalStore(
            config.path,
            retention_days=config.retention_days,
            url_expiry=config.url_expiry,
            secret=config.download_secret,
            clock=clock,
        )
    from pcapd.store.s3 import S3Store, make_client  # noqa: PLC0415  # minio only when used

    client = make_client(
        config.endpoint,
        config.access_key,
        config.secret_key.reveal(),
        secure=config.secure,
        region=config.region,
    )
    return S3Store(
        client,
        config.bucket,
        retention_days=config.retention_days,
        url_expiry=config.url_expiry,
        part_size=config.part_size,
        clock=clock,
    )
