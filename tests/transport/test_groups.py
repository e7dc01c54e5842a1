"""``open_nursery``: what escapes it is the failure a caller catches by type."""

from __future__ import annotations

import pytest
import trio

from pcapd.errors import PcapdError
from pcapd.transport.groups import open_nursery


async def fail(error: BaseException) -> None:
    await trio.lowlevel.checkpoint()
    raise error


async def test_one_failing_task_comes_out_as_its_own_error() -> None:
    with pytest.raises(PcapdError, match="agent gone"):
        async with open_nursery() as nursery:
            nursery.start_soon(fail, PcapdError("agent gone"))
            nursery.start_soon(trio.sleep_forever)


async def test_an_error_from_a_nested_nursery_is_unwrapped_too() -> None:
    async def inner() -> None:
        async with trio.open_nursery() as nested:
            nested.start_soon(fail, KeyError("deep"))

    with pytest.raises(KeyError):
        async with open_nursery() as nursery:
            nursery.start_soon(inner)


async def fail_at_once(error: BaseException) -> None:
    raise error  # before any checkpoint: the nursery's cancellation cannot pre-empt it


async def test_two_failures_stay_a_group() -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_nursery() as nursery:
            nursery.start_soon(fail_at_once, PcapdError("one"))
            nursery.start_soon(fail_at_once, ValueError("two"))
    assert {type(e) for e in info.value.exceptions} == {PcapdError, ValueError}
