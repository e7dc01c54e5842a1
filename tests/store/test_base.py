"""The one check every stored record goes through, and both stores keeping to it: a record
that is damaged or names another capture is skipped *and logged*, an expired one is not shown,
whichever backend holds it. Also the one interface: both stores answer ``open_download``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from pcapd.config import parse_api_config
from pcapd.store import CaptureInfo, DownloadRefused, Store, open_store
from pcapd.store.base import encode_record, listed_record
from pcapd.store.recordings import CfRecordingTarget
from tests.s3_server import S3Server, new_bucket

NOW = 1_800_000_000.0
ALICE = "alice"


def cid(n: int) -> str:
    return f"{n:032x}"


def record(capture_id: str, user: str = ALICE, **fields: Any) -> CaptureInfo:
    values: dict[str, Any] = {
        "capture_id": capture_id, "user_id": user, "user_name": user.title(),
        "target": "cf:my-app", "filter": "udp", "started_at": NOW - 60, "ended_at": NOW - 50,
        "packets": 5, "dropped": 0, "size": 4, "reason": "completed", "expires_at": NOW + 3600,
    }
    values.update(fields)
    return CaptureInfo(**values)


# -- the check (pure) ---------------------------------------------------------------------------


def test_a_record_under_its_own_key_is_listed_until_it_expires() -> None:
    info = record(cid(1))
    assert listed_record(encode_record(info), ALICE, cid(1), NOW) == info
    assert listed_record(encode_record(info), ALICE, cid(1), info.expires_at) is None


def test_a_triggered_capture_keeps_the_target_to_check_and_older_records_still_read() -> None:
    """A trigger's capture carries its recording's target (a download asks for it again);
    a record written before that field existed reads as one the owner asked for."""
    target = CfRecordingTarget(org_guid="o", space_guid="s", app_guid="a", app_name="my-app")
    triggered = record(cid(1), reauthorize=target)
    assert listed_record(encode_record(triggered), ALICE, cid(1), NOW) == triggered
    older = json.loads(encode_record(record(cid(1))))
    del older["reauthorize"]
    info = listed_record(json.dumps(older).encode(), ALICE, cid(1), NOW)
    assert info is not None and info.reauthorize is None


@pytest.mark.parametrize(
    ("user", "capture_id"), [("bob", cid(1)), (ALICE, cid(2))], ids=["user", "capture"]
)
def test_a_record_naming_another_capture_is_refused_even_when_expired(
    user: str, capture_id: str
) -> None:
    data = encode_record(record(cid(1), expires_at=NOW - 1))
    with pytest.raises(ValueError, match=rf"names another capture \(alice/{cid(1)}\.json\)"):
        listed_record(data, user, capture_id, NOW)


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b'{"capture_id": "x"}', encode_record(record("../" + cid(1)[3:]))]
)
def test_a_damaged_or_foreign_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        listed_record(data, ALICE, cid(1), NOW)


# -- both stores --------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    store: Store
    put: Callable[[str, bytes], Any]  # an object/file at ``captures/<key>`` (async)


async def _local(root: Path) -> Backend:
    store = _open({"kind": "local", "path": str(root)})

    async def put(key: str, data: bytes) -> None:
        path = root / "captures" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(data)

    return Backend("local", store, put)


async def _s3(server: S3Server) -> Backend:
    bucket = new_bucket()
    store = _open(server.storage(bucket))
    client = store.client  # type: ignore[attr-defined]

    async def put(key: str, data: bytes) -> None:
        await trio.to_thread.run_sync(
            lambda: client.put_object(bucket, f"captures/{key}", io.BytesIO(data), len(data))
        )

    return Backend("s3", store, put)


def _open(storage: dict[str, Any]) -> Store:
    config = parse_api_config(
        {"id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
         "storage": storage},
        require_platform=False,
    )
    assert config.storage is not None
    return open_store(config.storage, clock=lambda: NOW)


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        built = await _local(tmp_path / "store")
    else:
        built = await _s3(request.getfixturevalue("s3_server"))
    await built.store.prepare()
    yield built


async def stored(backend: Backend, key: str, info: CaptureInfo) -> None:
    await backend.put(f"{key}.json", encode_record(info))
    await backend.put(f"{key}.pcapng", b"\x0a\x0d\x0d\x0a")


async def test_both_stores_skip_and_log_the_same_records(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    good = record(cid(1))
    with trio.fail_after(30):
        await stored(backend, f"alice/{cid(1)}", good)
        await stored(backend, f"alice/{cid(2)}", record(cid(3)))  # another capture's record
        await stored(backend, f"alice/{cid(4)}", record(cid(4), "bob"))  # another user's
        await stored(backend, f"alice/{cid(5)}", record(cid(5), expires_at=NOW))  # expired
        await backend.put(f"alice/{cid(6)}.json", b"{not json")
        await backend.put(f"alice/{cid(6)}.pcapng", b"")
        with caplog.at_level(logging.WARNING, logger="pcapd.store"):
            assert await backend.store.list(ALICE) == [good]
            for n in (2, 4, 5, 6):
                assert await backend.store.get(ALICE, cid(n)) is None
            assert await backend.store.get(ALICE, cid(1)) == good
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 2 * 3  # by list, then by get: each time it is read
    assert {m.split(".json: ", 1)[1].split(":")[0] for m in skipped} == {
        f"it names another capture (alice/{cid(3)}.json)",
        f"it names another capture (bob/{cid(4)}.json)",
        "not a capture record",
    }
    assert all(m.startswith("skipping the damaged record ") for m in skipped)


async def test_both_stores_answer_a_download_link(backend: Backend) -> None:
    """Local: the link is checked (here: a wrong token). S3: its links go to the bucket, so the
    api's download path is not found, as before the method was on the interface."""
    info = record(cid(1))
    await stored(backend, f"alice/{cid(1)}", info)
    with pytest.raises(DownloadRefused) as refused:
        await backend.store.open_download(cid(1), int(NOW) + 60, "x" * 43, NOW)
    assert refused.value.status == {"local": 403, "s3": 404}[backend.kind]
    if backend.kind == "local":  # the same record, with a link of the store's own, downloads
        url, _ = await backend.store.download_url(info, "https://pcap.example.com", NOW)
        expires, token = url.split("?expires=")[1].split("&token=")
        path, found = await backend.store.open_download(cid(1), expires, token, NOW)
        assert (path.read_bytes(), found) == (b"\x0a\x0d\x0d\x0a", info)
