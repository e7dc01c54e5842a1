"""The exception-group helpers (pure): one failure comes out as itself, several stay a group."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pcapd.errors import UsageError, collapse, sole_exception


def nested(*leaves: BaseException, depth: int = 3) -> BaseExceptionGroup[BaseException]:
    group: BaseExceptionGroup[BaseException] = BaseExceptionGroup("inner", list(leaves))
    for _ in range(depth - 1):
        group = BaseExceptionGroup("outer", [group])
    return group


def test_the_sole_leaf_is_found_at_any_depth() -> None:
    leaf = UsageError("--snaplen: too large")
    assert sole_exception(nested(leaf, depth=1)) is leaf
    assert sole_exception(nested(leaf, depth=4)) is leaf
    assert sole_exception(nested(leaf, KeyError("k"))) is None
    assert sole_exception(BaseExceptionGroup("two", [nested(leaf), ValueError()])) is None


def test_collapse_raises_one_failure_as_itself_with_its_cause() -> None:
    cause = OSError("disk full")
    leaf = UsageError("cannot write")
    leaf.__cause__ = cause
    with pytest.raises(UsageError) as info, collapse():
        raise nested(leaf)
    assert info.value is leaf and info.value.__cause__ is cause


def test_collapse_keeps_a_group_of_several_and_passes_plain_errors() -> None:
    with pytest.raises(BaseExceptionGroup) as info, collapse():
        raise nested(UsageError("a"), UsageError("b"))
    assert len(info.value.exceptions) == 1  # untouched: the same nesting
    with pytest.raises(KeyError), collapse():
        raise KeyError("plain")


def test_the_helpers_import_without_trio() -> None:
    code = "import sys, pcapd.errors; assert 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
