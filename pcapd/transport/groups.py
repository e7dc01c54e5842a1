"""Exception groups back to plain errors where one task failed.

Trio wraps whatever escapes a nursery in an ExceptionGroup, even a single error. pcapd's
layers catch errors by type (``LinkClosed``, ``CaptureFailed``) and the CLI prints one line per
error, so each nursery whose errors someone handles by type is wrapped in :func:`collapse`:
a group holding exactly one error (at any depth) is re-raised as that error; a real group of
several failures stays a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only leaf of ``group`` if it has exactly one, else None."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None


@contextmanager
def collapse() -> Iterator[None]:
    """Re-raise a one-error ExceptionGroup as that error (its own cause kept)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = sole_exception(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """``trio.open_nursery()`` whose single errors come out unwrapped (see :func:`collapse`)."""
    with collapse():
        async with trio.open_nursery() as nursery:
            yield nursery
