"""Recording records in the store: both stores (the api's disk, a real S3 server on loopback)
keep, list newest first, isolate by owner and delete records alike; they refuse a damaged or
foreign record naming it and skip it in lists; the disk's records are private and replaced
whole, and a planted link is never followed."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from pcapd.config import parse_api_config
from pcapd.store import open_store
from pcapd.store.base import StoreError
from pcapd.store.local import LocalStore
from pcapd.store.recording_store import (
    LocalRecordings,
    RecordingStore,
    checked_recording,
    newest_first,
    recordings_of,
)
from pcapd.store.recordings import (
    FiredTrigger,
    RecordingRecordError,
    encode_recording,
    record_fired,
    recording_key,
    stop,
)
from pcapd.store.s3 import S3Recordings
from tests.s3_server import S3Server, new_bucket
from tests.store.recording_samples import ALICE, BOB, NOW, ROBOT, recording


def _api_config(storage: dict[str, Any]) -> Any:
    return parse_api_config(
        {"id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
         "storage": storage}, require_platform=False)


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordingStore]:
    if request.param == "local":
        captures = open_store(_api_config({"kind": "local", "path": str(tmp_path)}).storage)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        captures = open_store(_api_config(server.storage(new_bucket())).storage)
    with trio.fail_after(30):
        await captures.prepare()
    found = recordings_of(captures)
    assert isinstance(found, LocalRecordings if request.param == "local" else S3Recordings)
    yield found


async def test_put_get_replace_delete(store: RecordingStore) -> None:
    rec = recording()
    with trio.fail_after(30):
        assert await store.get(ALICE, rec.recording_id) is None
        await store.put(rec)
        assert await store.get(ALICE, rec.recording_id) == rec
        fired = record_fired(rec, FiredTrigger(at=NOW + 9, origin="my-app/1",
                                               capture_id="a" * 32))
        await store.put(fired)
        assert await store.get(ALICE, rec.recording_id) == fired
        assert await store.delete(ALICE, rec.recording_id)
        assert await store.get(ALICE, rec.recording_id) is None
        assert not await store.delete(ALICE, rec.recording_id)


async def test_owners_see_only_their_own(store: RecordingStore) -> None:
    mine = [recording(ALICE, n=1, created=NOW), recording(ALICE, n=2, created=NOW + 60)]
    theirs = recording(BOB, n=3)
    robots = recording(ROBOT, n=4)
    with trio.fail_after(30):
        for rec in (*mine, theirs, robots):
            await store.put(rec)
        assert await store.list_owned(ALICE) == [mine[1], mine[0]]  # newest first
        assert await store.list_owned(BOB) == [theirs]
        assert await store.list_owned(ROBOT) == [robots]
        assert await store.list_owned("0123456789ab.user.nobody") == []
        # another owner's id under my key: not found, not theirs
        assert await store.get(ALICE, theirs.recording_id) is None
        assert await store.get(BOB, mine[0].recording_id) is None
        assert not await store.delete(BOB, mine[0].recording_id)
        assert [r.recording_id for r in await store.list_all()] == \
            [r.recording_id for r in sorted((*mine, theirs, robots),
                                            key=lambda r: (r.created_at, r.recording_id),
                                            reverse=True)]


async def test_a_new_store_object_sees_the_same_records(store: RecordingStore) -> None:
    """An api restart, or a second api VM: nothing lives in the process."""
    rec = recording()
    with trio.fail_after(30):
        await store.put(rec)
        if isinstance(store, LocalRecordings):
            other: RecordingStore = LocalRecordings(store.root)
        else:
            assert isinstance(store, S3Recordings)
            other = S3Recordings(store.client, store.bucket)
        assert await other.get(ALICE, rec.recording_id) == rec
        assert await other.list_all() == [rec]


async def _plant(store: RecordingStore, key: str, data: bytes) -> None:
    if isinstance(store, LocalRecordings):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        assert isinstance(store, S3Recordings)
        import io

        store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))


async def test_damaged_and_foreign_records_are_refused_by_get_and_skipped_by_lists(
    store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    good = recording(ALICE, n=1)
    bob = recording(BOB, n=2)
    with trio.fail_after(30):
        await store.put(good)
        await _plant(store, recording_key(ALICE, f"{3:032x}"), b'{"format": 1, "owner": ')
        # bob's record copied into alice's folder, under its own id
        await _plant(store, recording_key(ALICE, bob.recording_id), encode_recording(bob))
        await _plant(store, f"recordings/{ALICE}/notes.txt", b"hello")
        with pytest.raises(RecordingRecordError, match=f"{3:032x}.json: not a recording"):
            await store.get(ALICE, f"{3:032x}")
        with pytest.raises(RecordingRecordError, match="another recording"):
            await store.get(ALICE, bob.recording_id)
        assert await store.list_owned(ALICE) == [good]
        assert await store.list_all() == [good]
    assert "skipping recording record" in caplog.text
    assert "Traceback" not in caplog.text


async def test_hostile_ids_never_reach_a_path_or_key(store: RecordingStore) -> None:
    with trio.fail_after(30):
        for owner, rid in ((ALICE, "../../../etc/passwd"), ("../..", f"{1:032x}"),
                           (ALICE, f"{1:032x}/../x")):
            with pytest.raises(RecordingRecordError):
                await store.get(owner, rid)
            with pytest.raises(RecordingRecordError):
                await store.delete(owner, rid)
        with pytest.raises(RecordingRecordError):
            await store.list_owned("..")


async def test_local_records_are_private_and_replaced_whole(tmp_path: Path) -> None:
    captures = open_store(_api_config({"kind": "local", "path": str(tmp_path)}).storage)
    assert isinstance(captures, LocalStore)
    store = recordings_of(captures)
    rec = recording()
    os.umask(0o022)
    with trio.fail_after(30):
        await store.put(rec)
        await store.put(stop(rec, NOW + 1))
    path = tmp_path / recording_key(ALICE, rec.recording_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "recordings").stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary file left
    assert msgspec.json.decode(path.read_bytes())["state"] == "stopped"
    # the captures' listing is not confused by the recordings folder
    assert await captures.list(ALICE) == []


async def test_a_record_planted_as_a_link_is_never_followed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A link in a recordings folder (put there by hand, or by someone with the disk) must
    not make the api read another file as a record."""
    store = LocalRecordings(tmp_path)
    good, other = recording(ALICE, n=1), recording(ALICE, n=2)
    with trio.fail_after(30):
        await store.put(good)
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_bytes(encode_recording(other))
        (tmp_path / recording_key(ALICE, other.recording_id)).symlink_to(elsewhere)
        with pytest.raises(StoreError, match=f"cannot read .*/{other.recording_id}.json "
                                             r"\(Too many levels of symbolic links\)"):
            await store.get(ALICE, other.recording_id)
        assert await store.list_owned(ALICE) == [good]
    assert "skipping recording record" in caplog.text


async def test_a_record_that_cannot_be_written_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "recordings").write_text("a file where the folder goes")
    store = LocalRecordings(tmp_path)
    rec = recording()
    with trio.fail_after(30), pytest.raises(
            StoreError, match=f"cannot write {tmp_path}/{recording_key(ALICE, rec.recording_id)}"
                              r" \(Not a directory\)"):
        await store.put(rec)


def test_a_damaged_record_is_named_by_where_it_was_read() -> None:
    data = encode_recording(recording(ALICE, n=1))
    assert checked_recording(data, ALICE, f"{1:032x}", "s3://b/k").owner == ALICE
    with pytest.raises(RecordingRecordError, match=r"^s3://b/k: .*another recording"):
        checked_recording(data, BOB, f"{1:032x}", "s3://b/k")


def test_newest_first_orders_records_made_in_the_same_second_by_id() -> None:
    a, b, c = (recording(n=n, created=NOW) for n in (1, 2, 3))
    older = recording(n=4, created=NOW - 1)
    assert newest_first([older, a, c, b]) == [c, b, a, older]


def test_a_store_without_recording_records_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no recording records for"):
        recordings_of(object())  # type: ignore[arg-type]
