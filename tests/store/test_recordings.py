"""Recording records: the format refuses what pcapd did not write, keys hold only what pcapd
makes, and time expires, stops and forgets records. Pure: the stores that keep the records (the
api's disk, a bucket) are tested in test_recording_store.py."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from pcapd.errors import PcapdError
from pcapd.store import recordings as records
from pcapd.store.recordings import (
    MAX_FIRED,
    BoshRecordingTarget,
    FiredTrigger,
    RecordingRecordError,
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
from tests.store.recording_samples import ALICE, BOB, NOW, as_json, recording

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
