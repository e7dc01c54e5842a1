"""One describer of config types: the words of ``--check``'s errors and of the reference's
Type column, for every kind of value the model holds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import pytest
from msgspec import Meta

from pcapd.config import parse_agent_config
from pcapd.config.describe import describe, number
from pcapd.config.model import Count, FilePath, LogLevel, PartSize, Port, Seconds, Secret
from pcapd.config.reference import render
from pcapd.errors import ConfigError


class Section(msgspec.Struct):
    size: int = 1


@pytest.mark.parametrize(
    ("tp", "words"),
    [
        (Port, "an integer between 1 and 65535"),
        (Count, "an integer of at least 1"),
        (Seconds, "a number greater than 0"),
        (Seconds | None, "a number greater than 0"),
        (PartSize, "an integer between 5242880 (5 MiB) and 5368709120 (5 GiB)"),
        (Annotated[int, Meta(le=9)], "an integer of at most 9"),
        (Annotated[float, Meta(gt=0.5, lt=2)], "a number greater than 0.5 and less than 2"),
        (int, "an integer"),
        (LogLevel, "one of debug, info, warning, error"),  # the model's order
        (FilePath, "a file path"),
        (Secret | None, "a non-empty string"),
        (Annotated[str, Meta(min_length=1)], "a non-empty string"),
        (Annotated[str, Meta(pattern="^[a-z]+$")], "a string matching ^[a-z]+$"),
        (bool, "true or false"),
        (tuple[Annotated[str, Meta(min_length=1)], ...], "a list of non-empty strings"),
        (list[str], "a list of strings"),
        (tuple[Port, ...], "a list, each an integer between 1 and 65535"),
        (Section | None, "a mapping of settings"),
        (int | Literal["auto"], "an integer or one of auto"),
    ],
)
def test_each_kind_of_value_in_words(tp: Any, words: str) -> None:
    assert describe(tp) == words


def test_the_reference_marks_values_as_code() -> None:
    def code(value: str) -> str:
        return f"`{value}`"

    assert describe(LogLevel, code=code) == "one of `debug`, `info`, `warning`, `error`"
    assert describe(bool, code=code) == "`true` or `false`"


def test_a_new_kind_of_value_is_refused_loudly() -> None:
    with pytest.raises(TypeError, match="teach it"):
        describe(dict[str, int])


def test_numbers_name_whole_mebibytes_and_drop_a_whole_float_point() -> None:
    assert [number(v) for v in (30.0, 0.25, 65535, 5 << 20, 5 << 30)] == [
        "30", "0.25", "65535", "5242880 (5 MiB)", "5368709120 (5 GiB)"]


def test_an_error_and_the_reference_use_the_same_words() -> None:
    with pytest.raises(ConfigError) as info:
        parse_agent_config({"id": "a", "listen": {"port": 0},
                            "tls": {"certificate": "c", "private_key": "k", "client_ca": "a"}})
    assert "listen.port: expected an integer between 1 and 65535, got 0" in str(info.value)
    assert "| `listen.port` | integer between 1 and 65535 |" in render()
