"""The compiled hot loops (C extensions built at install), or None where they are off or absent.

They are built by every install with a compiler but **off unless** ``PCAPD_EXTENSIONS=1``: with
them on, a live capture now and then delivered no packet at all
(``tests/test_extcap.py::test_a_closed_fifo_ends_the_capture`` stalled in 3 of 10 runs, 0 of 22
with them off; cause not found yet, see docs/decisions.md). Until it is found pcapd runs its
pure-Python twins, as a laptop without a compiler does; CI runs the twins' paths with the
extensions on as well (dev/test). ``PCAPD_NO_EXTENSIONS=1`` forces them off. Read once, at
import: a process does not switch halfway.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

DISABLE_ENV = "PCAPD_NO_EXTENSIONS"
ENABLE_ENV = "PCAPD_EXTENSIONS"


def enabled() -> bool:
    """Whether the environment turns the extensions on (ENABLE_ENV=1, DISABLE_ENV unset)."""
    return (os.environ.get(ENABLE_ENV, "") not in ("", "0")
            and os.environ.get(DISABLE_ENV, "") in ("", "0"))


def _load(name: str) -> ModuleType | None:
    if not enabled():
        return None
    try:
        return importlib.import_module(f"pcapd.{name}")
    except ImportError:
        return None


walk = _load("_pcapngwalk")
"""``epb_run`` and ``check_epbs`` of :mod:`pcapd.pcapng.packets`, in C."""

capture = _load("_capture")
"""``Handle``: a libpcap handle whose dispatch writes pcapng EPBs into one buffer, in C."""
