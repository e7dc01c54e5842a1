"""URL paths built from input: every segment checked, then percent-encoded. Pure.

An HTTP client resolves dot segments before it sends a request (httpx does, as RFC 3986 §5.2.4
says it should): ``{v3}/apps/{A}/processes/{type}/stats`` with the type
``../../<B>/processes/web`` becomes ``{v3}/apps/<B>/processes/web/stats``, a request about
another app than the one just authorized. So a value from a user, a token, a platform answer or
a file never goes into a URL path as it is: :func:`segment` refuses what cannot be one segment
(empty, ``.``, ``..``, control characters, over-long) and encodes everything else, ``/``
included, so the server sees exactly one segment holding exactly that value. :func:`join` builds
a URL from a trusted base (a configured or discovered endpoint) and such segments; it is the one
way pcapd builds a URL path from input (Cloud Controller, the director, the store's links).

:func:`split_url` reads an address a person typed (``--api``, a director in the bosh CLI's
config) the one way: a bare host means ``https://``; :func:`origin` writes one back.
"""

from __future__ import annotations

from urllib.parse import SplitResult, quote, urlsplit

from pcapd.errors import PcapdError

MAX_SEGMENT = 256


class InvalidSegment(PcapdError, ValueError):
    """A value that cannot be one URL path segment; the message names what it was for."""


def segment(value: str, what: str) -> str:
    """``value`` as one percent-encoded path segment; :class:`InvalidSegment` names ``what``
    (e.g. ``--process-type``) when it cannot be one."""
    if not isinstance(value, str) or not value:
        raise InvalidSegment(f"{what} is empty")
    if value in (".", ".."):
        raise InvalidSegment(f"{what} {value!r} is not a name")
    if len(value) > MAX_SEGMENT:
        raise InvalidSegment(f"{what} is longer than {MAX_SEGMENT} characters")
    if not value.isprintable():
        raise InvalidSegment(f"{what} holds control characters")
    return quote(value, safe="")


def join(base: str, *parts: tuple[str, str] | str) -> str:
    """``base`` (trusted, no trailing ``/`` needed) and path parts: a plain string is a literal
    of pcapd's own (``"apps"``), a ``(value, what)`` pair is input, passed through
    :func:`segment`."""
    path = [part if isinstance(part, str) else segment(*part) for part in parts]
    return "/".join([base.rstrip("/"), *path])


def split_url(text: str) -> SplitResult:
    """``text`` (spaces around it ignored) as a URL, ``https://`` when it names no scheme (a
    bare host, as the cf and bosh CLIs take one). ValueError when it cannot be one: its port
    (out of range, not a number) is read here, so the caller meets every such fault at once."""
    text = text.strip()
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    _ = parts.port  # raises ValueError for a port that is not one
    return parts


def origin(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port``, an IPv6 host in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"
