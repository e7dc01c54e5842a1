"""Shared test policy: tests that need root or Wireshark's tools say so with a marker.

Outside CI such a test is skipped when its need is not met, with the reason. Under CI=true it
never is: CI runs as root with the tools installed by dev/setup, and a skipped capture test
there would hide a broken pipeline.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"
WIRESHARK_TOOLS = ("tshark", "capinfos", "editcap", "mergecap")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_CI:
        return
    missing = [t for t in WIRESHARK_TOOLS if shutil.which(t) is None]
    for item in items:
        if item.get_closest_marker("root") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (run dev/test as root)"))
        if item.get_closest_marker("tools") and missing:
            item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)} (dev/setup)"))
