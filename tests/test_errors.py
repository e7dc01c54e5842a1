"""pcapd.errors: the errors answered on a link share one ``(code, text)`` base; the
exception-group helpers bring one failure out as itself; the module stays free of Trio and of
the protocol package (everything imports it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.api.agents import AgentRefused
from pcapd.api.capture import NoSourceStarted
from pcapd.api.recording_policy import RecordingRefused
from pcapd.errors import CodedError, PcapdError, Refusal, UsageError, collapse, sole_exception
from pcapd.transport.link import LinkClosed


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


def test_one_failure_seen_by_several_tasks_is_one_failure() -> None:
    """A link that breaks fails its sender and its receiver at once: one LinkClosed each, of
    the same text. Whoever catches LinkClosed must see it (it once escaped as a group and
    was logged as an agent's internal error)."""
    first, second = (LinkClosed("api: connection closed (ABNORMAL_CLOSURE)") for _ in range(2))
    assert sole_exception(nested(first, nested(second, depth=2))) is first
    with pytest.raises(LinkClosed), collapse():
        raise nested(first, second)
    assert sole_exception(nested(first, LinkClosed("agent: connection closed"))) is None
    assert sole_exception(nested(first, PcapdError(str(first)))) is None


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


@pytest.mark.parametrize("kind", [Refusal, RecordingRefused, AgentRefused, NoSourceStarted])
def test_each_error_answered_on_a_link_carries_its_code_and_text(kind: type[CodedError]) -> None:
    error = kind("PERMISSION_DENIED", "you may not capture app x")
    assert isinstance(error, CodedError) and not isinstance(error, PcapdError)
    assert (error.code, error.text, str(error)) == (
        "PERMISSION_DENIED", "you may not capture app x", "you may not capture app x")


def test_importing_the_errors_imports_neither_trio_nor_the_protocol() -> None:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    code = ("import sys; sys.modules['trio'] = None; import pcapd.errors; "
            "assert 'pcapd.proto' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path})
