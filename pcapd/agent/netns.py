"""Network namespaces: which ones a capture may enter, and running code inside one.

A packet socket belongs to the network namespace of the thread that created it, for life. So
the agent opens a capture handle in a worker thread that enters the target namespace, creates
and activates the handle there and leaves again: the handle keeps capturing in the target while
every other thread, and the worker itself afterwards, stays in the agent's own namespace.

Names come from requests (an instance guid) or the command line (an ``ip netns`` name), so they
are checked as plain file names before they touch the file system: no ``/``, no ``..``, nothing
outside a small character set. The file itself must be a network namespace (nsfs) file, and
it is opened with ``O_NOFOLLOW``: garden-cni bind-mounts namespaces there, it never links them,
so a symbolic link in ``netns_dir`` (or ``/run/netns``) is someone pointing the agent elsewhere
(``/proc/<pid>/ns/net`` of any process on the VM) and is refused.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio
from pyroute2 import netns as pyroute2_netns

from pcapd.errors import PcapdError

T = TypeVar("T")

NETNS_RUN_DIR = Path("/run/netns")
"""Where ``ip netns add NAME`` puts its namespace files."""

_GUID = re.compile(r"[A-Za-z0-9-]{1,128}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_NS_GET_NSTYPE = 0xB703  # ioctl(2) on an nsfs file: the namespace type (Linux >= 4.11)
_CLONE_NEWNET = 0x40000000
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class NamespaceError(PcapdError):
    """A network namespace was refused, is missing, or could not be entered."""


def resolve_container_netns(netns_dir: Path, instance_guid: str) -> Path:
    """The namespace file of a container: ``netns_dir/INSTANCE_GUID``, checked.

    The guid must be a plain name of ``[A-Za-z0-9-]`` so it cannot point outside
    ``netns_dir``; the file must exist and be a network namespace.
    """
    if not _GUID.fullmatch(instance_guid):
        raise NamespaceError(
            f"instance guid {instance_guid!r} refused: a guid is letters, digits and '-' only"
        )
    path = netns_dir / instance_guid
    check_netns_file(path, f"instance {instance_guid}")
    return path


def named_netns(name: str) -> Path:
    """The file of an ``ip netns`` namespace (``/run/netns/NAME``), checked; for local mode."""
    if not _NETNS_NAME.fullmatch(name) or name in (".", ".."):
        raise NamespaceError(
            f"network namespace name {name!r} refused: use letters, digits, '.', '_' and '-'"
        )
    path = NETNS_RUN_DIR / name
    check_netns_file(path, f"network namespace {name!r}")
    return path


def check_netns_file(path: Path, what: str) -> None:
    """Raise :class:`NamespaceError` unless ``path`` is a network namespace file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise NamespaceError(f"{what}: no network namespace at {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NamespaceError(f"{what}: {path} is a symbolic link, not a network namespace "
                                 "file: refused") from None
        raise NamespaceError(f"{what}: cannot open {path}: {exc.strerror}") from exc
    try:
        ns_type = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        ns_type = None
    finally:
        os.close(fd)
    if ns_type != _CLONE_NEWNET:
        raise NamespaceError(f"{what}: {path} is not a network namespace")


def call_in_netns(netns: Path | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` in this thread inside ``netns`` (None: stay), then return to where we were.

    Blocking; meant for a worker thread (:func:`open_in_netns`). The thread's own namespace is
    opened first and re-entered in ``finally``, so the thread goes back to its pool in the
    namespace it came from even when ``fn`` raises.
    """
    if netns is None:
        return fn()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(netns, f"network namespace {netns}")
        try:
            return fn()
        finally:
            try:
                pyroute2_netns.setns(home, flags=0)
            except OSError as exc:  # would leave a pooled thread in the wrong namespace
                raise NamespaceError(
                    f"could not return to the agent's own network namespace: {exc}; restart it"
                ) from exc
    finally:
        os.close(home)


def _enter(path: Path, what: str) -> None:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise NamespaceError(f"{what}: cannot open: {exc.strerror}") from exc
    try:
        # flags=0: with pyroute2's default (O_CREAT) a missing *name* would be created
        pyroute2_netns.setns(fd, flags=0)
    except OSError as exc:
        raise NamespaceError(f"{what}: cannot enter: {exc}") from exc
    finally:
        os.close(fd)


async def open_in_netns(netns: Path | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread inside ``netns`` (None: the agent's own namespace).

    Whatever ``fn`` creates there (a capture handle, a socket) stays bound to that namespace.
    Not abandoned on cancellation: the call waits for ``fn`` so that what it opened is
    returned, not leaked; keep ``fn`` short.
    """
    return await trio.to_thread.run_sync(functools.partial(call_in_netns, netns, fn))
