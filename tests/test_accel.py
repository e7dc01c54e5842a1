"""Which compiled parts run: under CI, every one, or the suite would prove nothing about them.

The differential tests (``tests/pcapng/test_packets_walk_differential.py``, the engine's and the
ring's) skip where an extension is absent, which is right on a laptop without a compiler and
wrong on CI: a build that silently fell back to the pure-Python twins would pass there with the
C untested. So under ``CI=true`` the pass with the extensions on (``dev/test``'s first) fails
here unless all of them loaded, as this process sees it and as ``pcapd version`` reports it;
the pass with ``PCAPD_NO_EXTENSIONS=1`` checks that none did.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd import _accel

PCAPD = os.environ.get("PCAPD_EXE") or str(Path(sys.executable).with_name("pcapd"))
IN_CI = os.environ.get("CI") == "true"


def version_line() -> str:
    done = subprocess.run([PCAPD, "version"], capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    return next(line for line in done.stdout.splitlines() if line.startswith("compiled core:"))


def test_every_compiled_part_runs_where_the_extensions_are_on() -> None:
    if not _accel.enabled():
        pytest.skip(f"the extensions are off ({_accel.DISABLE_ENV}): the other test")
    if not _accel.complete() and not IN_CI:
        pytest.skip(f"not all compiled parts are built here ({_accel.describe()}): dev/setup")
    assert _accel.complete(), (
        f"CI=true, yet {_accel.describe()}: the install did not build every extension, so the "
        "differential tests skipped; see the install's compiler output (dev/setup)"
    )
    line = version_line()
    for part in ("capture (libpcap version", "pcapng walker", "recorder"):
        assert part in line, line


def test_no_compiled_part_runs_where_they_are_off() -> None:
    if _accel.enabled():
        pytest.skip(f"the extensions are on: {_accel.DISABLE_ENV}=1 runs this test")
    assert (_accel.walk, _accel.capture, _accel.recorder) == (None, None, None)
    assert version_line() == f"compiled core: off ({_accel.DISABLE_ENV} is set): pure Python"
