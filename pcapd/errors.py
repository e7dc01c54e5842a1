"""The small tree of errors pcapd raises on purpose.

Every error that can reach a person carries a message that says what was wrong, where (config
key, flag, instance, byte offset) and, where it helps, what to do. The CLI prints ``str(error)``
as one line; nothing else is shown, so the message must stand alone. Never put a secret in one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcapd.proto.messages import Code


class PcapdError(Exception):
    """Base of every error pcapd raises for a person to read."""


class UsageError(PcapdError):
    """A command-line flag or argument is wrong."""


class ConfigError(PcapdError):
    """A config file is wrong. ``problems`` lists each fault as ``key: what is wrong``."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        summary = "; ".join(self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{path}: {summary}{more}")


class PcapngFormatError(PcapdError):
    """Input that claims to be pcap/pcapng is malformed; ``offset`` is where, in bytes."""

    def __init__(self, message: str, offset: int) -> None:
        self.offset = offset
        super().__init__(f"{message} (at byte offset {offset})")


class ProtocolError(PcapdError):
    """The pcapd wire protocol was violated.

    Split as h11 does: :class:`LocalProtocolError` means we tried something the protocol forbids
    (a bug on our side); :class:`RemoteProtocolError` means the peer sent something malformed,
    oversized, unknown or out of order. ``code`` is the message type to answer the peer with.
    """

    def __init__(self, message: str, code: str = "INVALID_REQUEST") -> None:
        self.code = code
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow in this state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, oversized, unknown or out of order."""


class CodedError(Exception):
    """A failure the user hears of as a protocol ``error``: ``code`` (SPEC §6) and ``text``.

    Not a :class:`PcapdError`: these are answered on a link, never printed by the CLI.
    """

    def __init__(self, code: Code, text: str) -> None:
        super().__init__(text)
        self.code: Code = code
        self.text = text


class Refusal(CodedError):
    """A request a service will not run; the handler answers it with an ``error`` message."""


class Interrupted(Exception):
    """SIGINT or SIGTERM before the capture started: nothing was captured (exit 130)."""


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one failure ``group`` stands for: its only leaf; or, when every leaf is the same
    failure (same type and message: one link's close seen by each task that used it), the
    first of them. None when it holds different failures."""
    leaves = list(_leaves(group))
    first = leaves[0] if leaves else None
    if first is None or any(type(leaf) is not type(first) or str(leaf) != str(first)
                            for leaf in leaves[1:]):
        return None
    return first


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            yield from _leaves(inner)
        else:
            yield inner


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
