"""User filters compiled in a child process, as the api and the agent ask for them: an empty
filter needs no child, a bad one is refused in libpcap's words, a capture's filter is split
into its direction and a program either engine installs, a trigger's is never empty, and a
compile that outlasts the wall clock is refused with what to do (in virtual time: the child is
killed, not waited for). Compiling for Ethernet needs no device and no root."""

from __future__ import annotations

import cypcap
import pytest
import trio
import trio.testing

from pcapd.agent.bpf import DLT_EN10MB, InvalidFilter
from pcapd.agent.bpf_worker import (
    WALL_SECONDS,
    FilterTooCostly,
    capture_program,
    check_filter,
    filter_program,
)

GUARD = 60


def installs(program: str) -> cypcap.BpfProgram:
    """The program as an engine loads it (:meth:`cypcap.BpfProgram.loads`)."""
    return cypcap.BpfProgram.loads(program)


async def test_a_filter_that_compiles_passes_and_one_that_does_not_says_why() -> None:
    with trio.fail_after(GUARD):
        await check_filter("")  # no child for no filter
        await check_filter("tcp port 443 and not host 198.18.0.1")
        with pytest.raises(InvalidFilter, match="tcp port"):
            await check_filter("tcp port")


async def test_a_captures_program_is_split_off_its_direction() -> None:
    with trio.fail_after(GUARD):
        assert await capture_program("", [], DLT_EN10MB, 65535) == (None, None)
        direction, program = await capture_program("inbound and udp port 53", [], DLT_EN10MB,
                                                    65535)
        assert direction == cypcap.Direction.IN and program is not None
        installs(program)
        direction, only = await capture_program("inbound", [], DLT_EN10MB, 65535)
    assert direction == cypcap.Direction.IN and only is None  # the direction was all of it


async def test_a_captures_own_link_is_left_out_even_without_a_filter() -> None:
    link = ("198.18.0.1", 9494, "198.18.0.2", 40000)
    with trio.fail_after(GUARD):
        direction, program = await capture_program("", [link], DLT_EN10MB, 65535)
    assert direction is None and program is not None
    installs(program)


async def test_a_triggers_program_is_never_empty() -> None:
    with trio.fail_after(GUARD):
        program = await filter_program("tcp[tcpflags] & tcp-rst != 0", DLT_EN10MB, 65535)
        installs(program)
        with pytest.raises(InvalidFilter, match="is empty"):
            await filter_program("", DLT_EN10MB, 65535)


async def test_a_compile_that_outlasts_the_wall_clock_is_refused_with_what_to_do(
        autojump_clock: trio.testing.MockClock) -> None:
    """Virtual time runs on while the child starts: the deadline passes first, as it does
    for a host name that resolves slowly. (No ``fail_after``: the killed child is reaped in
    real time, and a virtual guard would pass while it is; pytest-timeout guards this.)"""
    start = trio.current_time()
    with pytest.raises(FilterTooCostly) as refused:
        await check_filter("host pcapd-never-resolves.invalid")
    waited = trio.current_time() - start
    # at the deadline: the child is killed there, not sent SIGTERM and given 5 s more
    assert WALL_SECONDS <= waited < WALL_SECONDS + 1
    assert str(refused.value) == (
        'the BPF filter "host pcapd-never-resolves.invalid" took too long to compile (over 5 s: '
        "too many terms, or a host name that resolves slowly): use addresses, and ranges "
        "(portrange, net) instead of long lists")
    assert isinstance(refused.value, InvalidFilter)  # refused as an invalid filter is
