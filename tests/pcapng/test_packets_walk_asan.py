"""The quick profile of the walker's fuzzing: the C built with ASan/UBSan, fuzzed for seconds.

``dev/fuzz_walk.py`` builds ``pcapd/_ext/pcapngwalk.c`` with AddressSanitizer and UBSan (any
report aborts), then feeds it random and mutated pcapng (the interop corpus and pcapd's own)
next to the pure-Python twin: the walker (``epb_run``, ``check_epbs``) and ``pcapd merge``'s
engine (``FileMerge``: merges of mutated files, and hostile calls). Longer hunts:
``dev/fuzz_walk.py --seconds 3600``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).parents[2] / "dev" / "fuzz_walk.py"
SECONDS = float(os.environ.get("PCAPD_FUZZ_SECONDS", "15"))


@pytest.mark.skipif(
    shutil.which("gcc") is None and os.environ.get("CI") != "true",
    reason="needs gcc with its sanitizer runtimes (dev/setup)",
)
def test_the_walker_survives_fuzzing_under_asan_and_ubsan() -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZER), "--seconds", str(SECONDS), "--seed", "16"],
        capture_output=True, text=True, timeout=SECONDS + 120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "no crash, no difference" in result.stdout
    assert " 0 merges" not in result.stdout  # the merge engine was fuzzed too
    assert "Sanitizer" not in result.stderr
