"""Nurseries whose single errors come out as plain errors.

Trio wraps whatever escapes a nursery in an ExceptionGroup, even a single error. pcapd's
layers catch errors by type (``LinkClosed``, ``NoSourceStarted``) and the CLI prints one line per
error, so each nursery whose errors someone handles by type is :func:`open_nursery`: a group
holding exactly one error (at any depth), or the same error seen by several tasks (a link's
sender and receiver when it breaks), is re-raised as that error; a real group of different
failures stays a group. The unwrapping itself is pure and lives in one place,
:func:`pcapd.errors.collapse` (the CLI uses it without Trio); import it from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from pcapd.errors import collapse

__all__ = ["open_nursery"]


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """``trio.open_nursery()`` whose single errors come out unwrapped (see :func:`collapse`)."""
    with collapse():
        async with trio.open_nursery() as nursery:
            yield nursery
