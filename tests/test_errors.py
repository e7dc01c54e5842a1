"""The errors answered on a link share one ``(code, text)`` base, and the error module stays
free of Trio and of the protocol package (everything imports it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.api.agents import AgentRefused
from pcapd.api.capture import CaptureFailed
from pcapd.errors import CodedError, PcapdError
from pcapd.transport.service import Refusal


@pytest.mark.parametrize("kind", [Refusal, AgentRefused, CaptureFailed])
def test_each_error_answered_on_a_link_carries_its_code_and_text(kind: type[CodedError]) -> None:
    error = kind("PERMISSION_DENIED", "you may not capture app x")
    assert isinstance(error, CodedError) and not isinstance(error, PcapdError)
    assert (error.code, error.text, str(error)) == (
        "PERMISSION_DENIED", "you may not capture app x", "you may not capture app x")


def test_importing_the_errors_imports_neither_trio_nor_the_protocol() -> None:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    code = ("import pcapd.errors, sys; "
            "assert not {'trio', 'pcapd.proto'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path})
