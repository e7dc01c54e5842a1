"""The storage section's additions: url_expiry, download_secret, part_size; open_store."""

from __future__ import annotations

from typing import Any

import pytest

from pcapd.config import LocalStorageConfig, S3StorageConfig, parse_api_config
from pcapd.errors import ConfigError
from pcapd.store import open_store
from pcapd.store.local import LocalStore
from pcapd.store.s3 import S3Store

S3 = {"kind": "s3", "endpoint": "127.0.0.1:9000", "bucket": "captures", "secure": False,
      "access_key": "ak", "secret_key": "very-secret-key"}


def storage(section: dict[str, Any]) -> LocalStorageConfig | S3StorageConfig:
    return parse_api_config(
        {"id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
         "storage": section},
        require_platform=False,
    ).storage


def problems(section: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        storage(section)
    return error.value.problems


def test_defaults() -> None:
    local = storage({"kind": "local", "path": "/x"})
    assert isinstance(local, LocalStorageConfig)
    assert (local.url_expiry, local.download_secret) == (3600, None)
    s3 = storage(S3)
    assert isinstance(s3, S3StorageConfig)
    assert (s3.url_expiry, s3.part_size) == (3600, 5 << 20)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"kind": "local", "path": "/x", "url_expiry": 0}, "storage.url_expiry: expected an "
         "integer between 1 and 604800"),
        ({**S3, "url_expiry": 8 * 86400}, "storage.url_expiry: expected an integer between"),
        ({**S3, "part_size": 1 << 20}, "storage.part_size: expected an integer between 5242880"),
        ({"kind": "local", "path": "/x", "download_secret": ""},
         "storage.download_secret: expected a non-empty string"),
        ({"kind": "local", "path": "/x", "download_secret": "short-secret"},
         "storage.download_secret: too short (under 16 characters)"),
        ({**S3, "download_secret": "x" * 32}, "storage.download_secret: not used with kind: s3"),
        ({"kind": "local", "path": "/x", "part_size": 6 << 20},
         "storage.part_size: not used with kind: local"),
    ],
)
def test_problems_name_the_key(section: dict[str, Any], problem: str) -> None:
    found = problems(section)
    assert any(p.startswith(problem) for p in found), found
    assert not any("short-secret" in p or "x" * 32 in p for p in found)


def test_open_store_builds_the_configured_kind() -> None:
    local = open_store(storage({"kind": "local", "path": "/x", "url_expiry": 60,
                                "download_secret": "0123456789abcdef0123"}))
    assert isinstance(local, LocalStore)
    assert (local.url_expiry, local.ephemeral_secret) == (60, False)
    assert "0123456789abcdef" not in repr(vars(local))
    s3 = open_store(storage({**S3, "part_size": 16 << 20, "retention_days": 2}))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.part_size, s3.retention_days) == ("captures", 16 << 20, 2)
    assert "very-secret-key" not in repr(s3)
