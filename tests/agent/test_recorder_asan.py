"""The quick profile of the flight recorder's fuzzing: ``pcapd/_ext/recorder.c`` built with
ASan/UBSan, fuzzed for seconds against its pure twins.

``dev/fuzz_recorder.py`` feeds ``epb_index`` (the ring's index, also of pieces read back from
segment files on disk) mutated batches of EPBs next to ``pcapd.agent.ring``'s pure index, and
``match_epbs`` (the trigger filter) compiled and mutated BPF programs over those batches next to
``pcapd.agent.matcher``'s pure path: a crash, a sanitizer report or any difference fails.
Longer hunts: ``dev/fuzz_recorder.py --seconds 3600``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).parents[2] / "dev" / "fuzz_recorder.py"
SECONDS = float(os.environ.get("PCAPD_FUZZ_SECONDS", "10"))


@pytest.mark.skipif(
    shutil.which("gcc") is None and os.environ.get("CI") != "true",
    reason="needs gcc with its sanitizer runtimes and libpcap's headers (dev/setup)",
)
def test_the_recorders_c_survives_fuzzing_under_asan_and_ubsan() -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZER), "--seconds", str(SECONDS), "--seed", "17"],
        capture_output=True, text=True, timeout=SECONDS + 120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "no crash, no difference" in result.stdout
    counts = re.search(r"(\d+) indexes, (\d+) matches and (\d+) refused", result.stdout)
    assert counts is not None and all(int(n) > 0 for n in counts.groups()), result.stdout
    assert "Sanitizer" not in result.stderr
