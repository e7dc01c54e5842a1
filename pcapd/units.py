"""Durations and sizes as people type them, for messages that quote a limit back to them.

The CLI reads ``10m`` and ``256MB`` (:mod:`pcapd.client.arguments`); the api's refusals and
``record list`` say them the same way, so a user can paste the number a message suggests.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math

_SPANS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
_DECIMAL = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


def format_duration(seconds: float) -> str:
    """``30m``, ``24h``, ``1h30m``, ``45s``, ``1.5s``: the shortest form the CLI reads back.

    Whole seconds are split into at most two units (``1d2h``, ``2m30s``), so a limit such as
    5400 s reads ``1h30m``, not ``1.5h`` nor ``5400s``; a finer remainder falls back to
    seconds (``3725s`` rather than three units).
    """
    if not math.isfinite(seconds):
        return f"{seconds}s"
    if seconds < 0:
        return f"-{format_duration(-seconds)}"
    if seconds != int(seconds) or seconds == 0:
        return f"{seconds:g}s"
    whole = int(seconds)
    for i, (unit, size) in enumerate(_SPANS):
        if whole >= size:
            count, rest = divmod(whole, size)
            if not rest:
                return f"{count}{unit}"
            for j in range(i + 1, len(_SPANS)):
                small, small_size = _SPANS[j]
                # one smaller unit whose count does not roll over (not ``1h125s``)
                if rest % small_size == 0 and rest < _SPANS[j - 1][1]:
                    return f"{count}{unit}{rest // small_size}{small}"
            break
    return f"{whole}s"


def format_size(size: int) -> str:
    """``256MB``, ``1GiB``, ``64KiB``, ``1000B``: exact in the unit that divides it with the
    smallest count (so 256 000 000 is ``256MB``, not ``250000KiB``), else one decimal in
    decimal units (``1.5GB``: for display, not a limit to type)."""
    exact = [(size // factor, unit) for unit, factor in (*_BINARY, *_DECIMAL)
             if size >= factor and size % factor == 0]
    if exact:
        count, unit = min(exact)
        return f"{count}{unit}"
    for unit, factor in _DECIMAL:
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"


def display_size(size: int) -> str:
    """``12.3MB``, ``999B``, ``1.5GB``: an amount measured (not a limit), in decimal units
    with one decimal, as progress lines show amounts."""
    for unit, factor in _DECIMAL:
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"
