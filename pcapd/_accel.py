"""The compiled hot loops (C extensions built at install), or None where they are off or absent.

``PCAPD_NO_EXTENSIONS=1`` in the environment turns them off: pcapd then runs its pure-Python
twins (a laptop without a compiler does so anyway), and CI runs the suite both ways. Read once,
at import: a process does not switch halfway.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

DISABLE_ENV = "PCAPD_NO_EXTENSIONS"


def enabled() -> bool:
    """Whether the environment allows the extensions (it does unless DISABLE_ENV is set)."""
    return os.environ.get(DISABLE_ENV, "") in ("", "0")


def _load(name: str) -> ModuleType | None:
    if not enabled():
        return None
    try:
        return importlib.import_module(f"pcapd.{name}")
    except ImportError:
        return None


walk = _load("_pcapngwalk")
"""``epb_run`` and ``check_epbs`` of :mod:`pcapd.pcapng.packets`, and ``FileMerge``, the engine of
``pcapd merge`` (:mod:`pcapd.merge.engine`), in C."""

capture = _load("_capture")
"""``Handle``: a libpcap handle whose dispatch writes pcapng EPBs into one buffer, in C."""

recorder = _load("_recorder")
"""``match_epbs``: the flight recorder's trigger filter over a batch of EPBs, in C."""


def describe() -> str:
    """One line for ``pcapd version``: which compiled parts this process runs, and why not."""
    if not enabled():
        return f"compiled core: off ({DISABLE_ENV} is set): pure Python"
    parts = []
    if capture is not None:
        parts.append(f"capture ({capture.LIB_VERSION})")
    if walk is not None:
        parts.append("pcapng walker")
    if recorder is not None:
        parts.append("recorder")
    if not parts:
        return "compiled core: not built: pure Python"
    return "compiled core: " + ", ".join(parts)


def complete() -> bool:
    """Whether every extension is loaded (what a BOSH release's package must provide)."""
    return capture is not None and walk is not None and recorder is not None
