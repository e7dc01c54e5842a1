"""The services' log lines: one self-contained JSON object per line for a log pipeline, or
text for people, on stderr."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcapd import logs


@pytest.fixture(autouse=True)
def _pcapd_logger_restored() -> Iterator[None]:
    """``configure`` sets the process's ``pcapd`` logger: give it back as it was."""
    logger = logging.getLogger("pcapd")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines()]


def test_a_json_line_holds_time_level_logger_message_and_the_extra_fields(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    logging.getLogger("pcapd.api.server").info(
        "capture %s ended", "c-1", extra={"capture": "c-1", "packets": 12})
    [line] = lines(capsys.readouterr().err)
    assert line.keys() == {"time", "level", "logger", "message", "capture", "packets"}
    assert (line["level"], line["logger"], line["message"]) == (
        "info", "pcapd.api.server", "capture c-1 ended")
    assert (line["capture"], line["packets"]) == ("c-1", 12)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["time"]))


def test_the_time_is_utc_with_milliseconds() -> None:
    record = logging.makeLogRecord({"name": "pcapd", "levelname": "WARNING", "msg": "m",
                                    "created": 86400 + 3661.0, "msecs": 7.9})
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["time"] == "1970-01-02T01:01:01.007Z"
    assert line["level"] == "warning"


def test_values_json_cannot_hold_are_written_as_text_and_private_fields_left_out() -> None:
    record = logging.makeLogRecord({"name": "pcapd.store", "msg": "stored", "levelname": "INFO",
                                    "path": Path("/var/store/c-1.pcapng"), "_internal": "x"})
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["path"] == "/var/store/c-1.pcapng"
    assert "_internal" not in line
    assert not {"args", "lineno", "msg", "levelno", "exc_info"} & line.keys()


def test_an_exception_stays_on_its_one_line_with_its_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger("pcapd.agent").exception("link failed")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    [line] = lines(err)
    assert line["message"] == "link failed"
    assert str(line["exception"]).startswith("Traceback (most recent call last):")
    assert str(line["exception"]).endswith("ValueError: bad frame")


def test_the_level_filters_and_text_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "text")
    logger = logging.getLogger("pcapd.client")
    logger.info("not shown")
    logger.warning("agent %s is slow", "router/0")
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING pcapd.client: "
                        r"agent router/0 is slow", line), line


def test_configuring_again_replaces_the_handler_and_nothing_reaches_the_root_logger(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    logs.configure("debug", "text")
    logs.configure("debug", "json")
    logging.getLogger("pcapd.api").debug("once")
    assert [line["message"] for line in lines(capsys.readouterr().err)] == ["once"]
    assert caplog.records == []  # caplog listens on the root logger: pcapd does not propagate
