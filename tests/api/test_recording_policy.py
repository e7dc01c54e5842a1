"""What a recording may ask for, and how often a trigger saves: plain numbers, no clock."""

from __future__ import annotations

import pytest

from pcapd.api.recording_policy import (
    RecordingParameters,
    RecordingRefused,
    RecordingRequest,
    TriggerLimiter,
    check_room,
    effective_parameters,
)
from pcapd.client.arguments import parse_duration, parse_size
from pcapd.config import parse_api_config
from pcapd.config.model import ApiRecorderConfig

CONFIG = parse_api_config({
    "id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
    "storage": {"kind": "local", "path": "/tmp/x"},
}, require_platform=False).recorder


def refusal(request: RecordingRequest, config: ApiRecorderConfig = CONFIG) -> RecordingRefused:
    with pytest.raises(RecordingRefused) as err:
        effective_parameters(request, config)
    return err.value


def test_defaults_fill_what_the_request_leaves_out() -> None:
    assert effective_parameters(RecordingRequest(), CONFIG) == RecordingParameters(
        keep=300.0, until=28800.0, max_bytes=64 << 20, after=None, once=False)
    assert effective_parameters(RecordingRequest(trigger=True), CONFIG).after == 30.0


def test_what_is_asked_within_the_limits_is_kept() -> None:
    asked = RecordingRequest(keep=600, until=86400, max_bytes=256_000_000, trigger=True,
                             after=0, once=True)
    params = effective_parameters(asked, CONFIG)
    assert params == RecordingParameters(keep=600, until=86400, max_bytes=256_000_000,
                                         after=0, once=True)
    assert params.ends_at(1000.0) == 87400.0
    # the ceilings themselves are allowed
    top = RecordingRequest(keep=1800, until=7 * 86400, max_bytes=1 << 30, trigger=True,
                           after=300)
    assert effective_parameters(top, CONFIG).max_bytes == 1 << 30


@pytest.mark.parametrize(("request_", "text"), [
    (RecordingRequest(keep=7200),
     "--keep 2h is more than this foundation allows (recorder.keep.max = 30m); "
     "use --keep 30m or less"),
    (RecordingRequest(until=30 * 86400),
     "--until 30d is more than this foundation allows (recorder.until.max = 7d); "
     "use --until 7d or less"),
    (RecordingRequest(max_bytes=2 << 30),
     "--max-bytes 2GiB is more than this foundation allows (recorder.max_bytes.max = 1GiB); "
     "use --max-bytes 1GiB or less"),
    (RecordingRequest(trigger=True, after=600),
     "--after 10m is more than this foundation allows (recorder.after.max = 5m); "
     "use --after 5m or less"),
    (RecordingRequest(keep=0), "--keep 0s: give a duration above 0, e.g. --keep 5m"),
    (RecordingRequest(until=-5), "--until -5s: give a duration above 0, e.g. --until 8h"),
    (RecordingRequest(keep=float("nan")), "--keep nans: give a duration above 0"),
    (RecordingRequest(until=float("inf")), "--until infs: give a duration above 0"),
    (RecordingRequest(max_bytes=0), "--max-bytes 0: give a size above 0, e.g. --max-bytes "
                                    "64MiB"),
    (RecordingRequest(trigger=True, after=-1), "--after -1s: give a duration of 0s or more"),
    (RecordingRequest(keep=1200, until=600),
     "--keep 20m is longer than the recording runs (--until 10m): shorten --keep or "
     "lengthen --until"),
    (RecordingRequest(after=10), "--after applies to a trigger: add --trigger BPF"),
    (RecordingRequest(once=True), "--once applies to a trigger: add --trigger BPF"),
])
def test_a_request_beyond_the_limits_is_refused_naming_flag_key_and_remedy(
        request_: RecordingRequest, text: str) -> None:
    err = refusal(request_)
    assert err.code == "INVALID_REQUEST"
    assert str(err).startswith(text), str(err)


def test_the_suggested_value_is_one_the_cli_reads_back() -> None:
    """A user pastes the value the message suggests: it must parse, and be accepted."""
    config = parse_api_config({
        "id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
        "storage": {"kind": "local", "path": "/tmp/x"},
        "recorder": {"keep": {"max": 5400}, "max_bytes": {"max": 300_000_000}},
    }, require_platform=False).recorder
    err = refusal(RecordingRequest(keep=7200, until=86400), config)
    suggested = str(err).rsplit("use --keep ", 1)[1].removesuffix(" or less")
    assert suggested == "1h30m"
    assert effective_parameters(RecordingRequest(keep=parse_duration(suggested)), config)
    err = refusal(RecordingRequest(max_bytes=10**9), config)
    suggested = str(err).rsplit("use --max-bytes ", 1)[1].removesuffix(" or less")
    assert suggested == "300MB"
    assert effective_parameters(RecordingRequest(max_bytes=parse_size(suggested)), config)


def test_a_short_default_until_is_named_as_the_default() -> None:
    config = parse_api_config({
        "id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
        "storage": {"kind": "local", "path": "/tmp/x"},
        "recorder": {"until": {"default": 600}},
    }, require_platform=False).recorder
    assert "(--until 10m, the default)" in str(refusal(RecordingRequest(keep=1200), config))


def test_room_per_user_and_in_total() -> None:
    alice, bob = "abcdefabcdef.user.alice", "abcdefabcdef.user.bob"
    check_room(alice, [alice, alice, bob], CONFIG)  # 2 of 3
    with pytest.raises(RecordingRefused) as err:
        check_room(alice, [alice, bob, alice, alice], CONFIG)
    assert err.value.code == "LIMIT_REACHED"
    assert str(err.value) == (
        "you have 3 recordings armed, as many as this foundation allows (recorder.per_user = "
        "3): stop one with `pcapd record stop ID` (`pcapd record list` shows them)")
    with pytest.raises(RecordingRefused) as err:
        check_room(alice, [bob] * 50, CONFIG)
    assert err.value.code == "LIMIT_REACHED"
    assert "50 recordings are armed on this foundation" in str(err.value)
    assert "recorder.total = 50" in str(err.value)


# -- the trigger rate limit ----------------------------------------------------------------------


def test_one_save_per_interval_and_the_rest_counted() -> None:
    limiter = TriggerLimiter(300.0)
    first = limiter.offer(1000.0)
    assert (first.save, first.stop, first.suppressed, first.next_at) == (True, False, 0, 1300.0)
    for i, t in enumerate((1000.5, 1100.0, 1299.999), start=1):
        later = limiter.offer(t)
        assert (later.save, later.suppressed, later.next_at) == (False, i, 1300.0)
    again = limiter.offer(1300.0)
    assert (again.save, again.suppressed, again.next_at) == (True, 3, 1600.0)
    assert limiter.statistics().saved == 2
    assert limiter.statistics().suppressed == 3
    assert limiter.statistics().last_saved_at == 1300.0


def test_a_trigger_from_the_past_does_not_save() -> None:
    """Instances' clocks differ: a trigger stamped before the last save is the same incident."""
    limiter = TriggerLimiter(60.0)
    assert limiter.offer(500.0).save
    assert not limiter.offer(440.0).save


def test_once_saves_exactly_once_and_stops() -> None:
    limiter = TriggerLimiter(1.0, once=True)
    first = limiter.offer(10.0)
    assert (first.save, first.stop, first.next_at) == (True, True, None)
    for t in (10.5, 100.0, 10_000.0):
        later = limiter.offer(t)
        assert (later.save, later.stop, later.next_at) == (False, False, None)


def test_a_limiter_rebuilt_from_the_record_remembers_the_last_save() -> None:
    """After an api restart, the record's fired triggers carry the rate limit on."""
    limiter = TriggerLimiter.resumed(300.0, once=False, fired_at=[100.0, 700.0],
                                     triggers_fired=2)
    assert not limiter.offer(900.0).save
    assert limiter.offer(1000.0).save
    assert limiter.statistics().saved == 3
    once = TriggerLimiter.resumed(300.0, once=True, fired_at=[100.0], triggers_fired=1)
    assert not once.offer(10_000.0).save
    fresh = TriggerLimiter.resumed(300.0, once=True, fired_at=[], triggers_fired=0)
    assert fresh.offer(5.0).save


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        TriggerLimiter(0.0)
