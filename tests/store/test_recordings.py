"""Recording records: the format refuses what pcapd did not write, and both stores (the api's
disk, a real S3 server on loopback) keep, list, isolate and delete them alike."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from pcapd.config import parse_api_config
from pcapd.errors import PcapdError
from pcapd.store import open_store
from pcapd.store import recordings as records
from pcapd.store.local import LocalStore
from pcapd.store.recording_store import LocalRecordings, RecordingStore, recordings_of
from pcapd.store.recordings import (
    MAX_FIRED,
    BoshRecordingTarget,
    CfRecordingTarget,
    FiredTrigger,
    Recording,
    RecordingAgent,
    RecordingRecordError,
    Trigger,
    armed_owners,
    current_state,
    decode_recording,
    encode_recording,
    expire,
    forgettable,
    new_recording_id,
    parse_key,
    read_recording,
    record_fired,
    record_suppressed,
    recording_key,
    stop,
)
from pcapd.store.s3 import S3Recordings
from tests.s3_server import S3Server, new_bucket

NOW = 1_800_000_000.0
ALICE = "0123456789ab.user.alice-guid"
BOB = "0123456789ab.user.bob-guid"
ROBOT = "0123456789ab.client.alice-guid"  # a client whose id equals alice's user id


def recording(owner: str = ALICE, *, n: int = 1, created: float = NOW, **fields: Any
              ) -> Recording:
    values: dict[str, Any] = {
        "recording_id": f"{n:032x}", "owner": owner, "user_name": "alice",
        "target": CfRecordingTarget(org_guid="org-1", space_guid="space-1",
                                    app_guid="app-guid-1", app_name="my-app",
                                    instances=[0, 1]),
        "label": "cf:my-org/my-space/my-app", "device": "eth0", "filter": "tcp port 443",
        "snaplen": 65535, "keep": 600.0, "max_bytes": 256_000_000, "created_at": created,
        "ends_at": created + 86400, "trigger": Trigger(filter="tcp[tcpflags] & tcp-rst != 0",
                                                       after=30.0),
        "agents": [
            RecordingAgent(origin="my-app/0", address="10.0.16.4:9494",
                           namespace="11111111-2222", recording_id="r-1"),
            RecordingAgent(origin="my-app/1", address="10.0.16.5:9494",
                           namespace="33333333-4444", recording_id="r-2"),
        ],
    }
    values.update(fields)
    return Recording(**values)


def as_json(rec: Recording) -> dict[str, Any]:
    value = json.loads(encode_recording(rec))
    assert isinstance(value, dict)
    return value


# -- the format (pure) ---------------------------------------------------------------------------


def test_a_record_round_trips_with_every_field() -> None:
    rec = recording(target=BoshRecordingTarget(deployment="cf", groups=["router"],
                                               instances=["router/0"]))
    rec = record_fired(rec, FiredTrigger(at=NOW + 5, origin="router/0", capture_id="f" * 32))
    rec = record_suppressed(rec, 3)
    assert (rec.triggers_fired, rec.triggers_suppressed) == (1, 3)
    assert decode_recording(encode_recording(rec)) == rec
    assert as_json(rec)["target"]["kind"] == "bosh"


def test_new_ids_are_unguessable_and_fit_the_pattern() -> None:
    ids = {new_recording_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(records.RECORDING_ID.fullmatch(i) for i in ids)


@pytest.mark.parametrize(("change", "named"), [
    ({"owner": "../../captures/alice"}, "owner"),
    ({"owner": "alice"}, "owner"),
    ({"recording_id": "../../x"}, "recording_id"),
    ({"format": 2}, "format"),
    ({"state": "paused"}, "state"),
    ({"keep": -5}, "keep"),
    ({"keep": "10m"}, "keep"),
    ({"max_bytes": 0}, "max_bytes"),
    ({"snaplen": 10**6}, "snaplen"),
    ({"filter": "x" * 9000}, "filter"),
    ({"surprise": True}, "surprise"),
    ({"target": {"kind": "k8s", "pod": "x"}}, "target"),
    ({"target": {"kind": "bosh", "deployment": "cf", "groups": []}}, "groups"),
    ({"agents": [{"origin": "a/0", "address": "h:1", "namespace": "host",
                  "recording_id": "r\nforged log line"}]}, "recording_id"),
    ({"fired": [{"at": NOW, "origin": "a/0", "capture_id": "../x"}]}, "capture_id"),
])
def test_a_tampered_record_is_refused_naming_the_field(change: dict[str, Any],
                                                       named: str) -> None:
    value = {**as_json(recording()), **change}
    with pytest.raises(RecordingRecordError, match="not a recording record") as err:
        decode_recording(json.dumps(value).encode())
    assert named in str(err.value)


@pytest.mark.parametrize(("change", "problem"), [
    ({"ends_at": NOW - 1}, "ends_at is not after created_at"),
    ({"state": "stopped"}, "state stopped with stopped_at None"),
    ({"stopped_at": NOW + 5}, "state armed with stopped_at"),
    ({"triggers_fired": 0, "fired": [{"at": NOW + 1, "origin": "my-app/0"}]}, "counts 0"),
    ({"trigger": None, "triggers_fired": 1}, "without a trigger"),
    ({"trigger": None, "triggers_suppressed": 1}, "without a trigger"),
    ({"triggers_fired": 1, "fired": [{"at": NOW - 100, "origin": "my-app/0"}]}, "before"),
])
def test_an_inconsistent_record_is_refused(change: dict[str, Any], problem: str) -> None:
    value = {**as_json(recording()), **change}
    with pytest.raises(RecordingRecordError, match=problem):
        decode_recording(json.dumps(value).encode())


def test_an_instance_listed_twice_is_refused() -> None:
    value = as_json(recording())
    value["agents"][1]["origin"] = value["agents"][0]["origin"]
    with pytest.raises(RecordingRecordError, match="listed twice"):
        decode_recording(json.dumps(value).encode())


@pytest.mark.parametrize("data", [b"", b"{", b"null", b"[]", b"\xff\xfe", b'"x"',
                                  b"{}" + b" " * (records.MAX_RECORD_BYTES + 1)])
def test_garbage_is_refused_with_a_message_not_a_traceback(data: bytes) -> None:
    with pytest.raises(RecordingRecordError, match="not a recording record"):
        decode_recording(data)


def test_the_store_never_writes_a_bad_record() -> None:
    with pytest.raises(RecordingRecordError):
        encode_recording(recording(ends_at=NOW))


def test_a_record_under_another_key_is_refused() -> None:
    data = encode_recording(recording(ALICE))
    assert read_recording(data, ALICE, f"{1:032x}").owner == ALICE
    with pytest.raises(RecordingRecordError, match="another recording"):
        read_recording(data, BOB, f"{1:032x}")
    with pytest.raises(RecordingRecordError, match="another recording"):
        read_recording(data, ALICE, f"{2:032x}")


def test_keys_hold_only_what_pcapd_makes() -> None:
    assert recording_key(ALICE, f"{7:032x}") == f"recordings/{ALICE}/{7:032x}.json"
    assert parse_key(f"recordings/{ALICE}/{7:032x}.json") == (ALICE, f"{7:032x}")
    for key in (f"recordings/{ALICE}/{7:032x}.json.tmp", f"captures/{ALICE}/{7:032x}.json",
                f"recordings/../{7:032x}.json", f"recordings/{ALICE}/x/{7:032x}.json",
                f"recordings/{ALICE}/{7:031x}.json"):
        assert parse_key(key) is None, key
    for owner in ("", "..", "a/b", "0123456789ab.user.", "0123456789ab.admin.x"):
        with pytest.raises(RecordingRecordError, match="owner key"):
            recording_key(owner, f"{7:032x}")
    assert isinstance(RecordingRecordError("x"), PcapdError)


def test_time_expires_an_armed_recording_and_stop_keeps_an_expiry() -> None:
    rec = recording()
    assert current_state(rec, NOW + 10) == "armed"
    assert current_state(rec, rec.ends_at) == "expired"
    assert expire(rec, NOW + 10) is rec
    expired = expire(rec, rec.ends_at + 50)
    assert (expired.state, expired.stopped_at) == ("expired", rec.ends_at)
    assert stop(rec, rec.ends_at + 50) == expired
    stopped = stop(rec, NOW + 10)
    assert (stopped.state, stopped.stopped_at) == ("stopped", NOW + 10)
    assert stop(stopped, NOW + 99) == stopped
    decode_recording(encode_recording(expired))
    decode_recording(encode_recording(stopped))


def test_a_record_keeps_the_newest_fired_triggers_and_counts_all() -> None:
    rec = recording()
    for i in range(MAX_FIRED + 20):
        rec = record_fired(rec, FiredTrigger(at=NOW + i, origin="my-app/0"))
    assert rec.triggers_fired == MAX_FIRED + 20
    assert len(rec.fired) == MAX_FIRED and rec.fired[0].at == NOW + 20
    decode_recording(encode_recording(rec))


def test_an_ended_recording_is_forgotten_after_the_retention() -> None:
    day = 86400.0
    rec = recording()
    assert not forgettable(rec, NOW + 30 * day - 1 + 86400, 30 * day)  # armed until ends_at
    stopped = stop(rec, NOW + 100)
    assert not forgettable(stopped, NOW + 100 + 7 * day - 1, 7 * day)
    assert forgettable(stopped, NOW + 100 + 7 * day, 7 * day)
    assert forgettable(rec, rec.ends_at + 7 * day, 7 * day)  # expired, never written down


def test_armed_owners_count_only_armed_recordings() -> None:
    recs = [recording(ALICE, n=1), stop(recording(ALICE, n=2), NOW + 1), recording(BOB, n=3),
            recording(BOB, n=4, created=NOW - 86400 * 2)]
    assert armed_owners(recs, NOW + 5) == [ALICE, BOB]


def test_the_format_module_is_pure() -> None:
    """Imported as any module is (the store's package is pure too): Trio blocked, and neither
    backend loaded."""
    code = ("import sys; sys.modules['trio'] = None\n"  # any import of trio fails
            "import pcapd.store.recordings\n"
            "assert not {'pcapd.store.local', 'pcapd.store.s3'} & set(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- both stores ---------------------------------------------------------------------------------


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
