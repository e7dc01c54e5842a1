"""BPF filters: checked with libpcap's own compiler, and the agent's link left out.

Split from :mod:`pcapd.agent.capture` so the api can check a user's filter before contacting
any agent without loading the capture engine's namespace machinery.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import cypcap

from pcapd.errors import PcapdError

DLT_EN10MB = 1

Link = tuple[str, int, str, int]
"""A TCP connection to leave out: ``(local_ip, local_port, remote_ip, remote_port)``."""


class CaptureError(PcapdError):
    """A capture could not be started or continued; the message carries libpcap's words."""


class InvalidFilter(CaptureError):
    """The BPF filter does not compile."""


def _libpcap_words(exc: cypcap.Error) -> str:
    return str(getattr(exc, "msg", "") or exc)


def compile_filter(expr: str, link_type: int = DLT_EN10MB, snaplen: int = 65535) -> None:
    """Raise :class:`InvalidFilter`, in libpcap's words, unless ``expr`` compiles.

    Needs no capture (a dead handle), so the api checks a filter before contacting any agent.
    The netmask is "unknown", as on the agent, so both accept the same filters. libpcap
    resolves names in the filter (``host example.com``, ``port http``), which may block on DNS:
    from async code, call it in a worker thread.
    """
    if "\0" in expr:
        raise InvalidFilter(f"invalid BPF filter {expr!r}: contains a NUL character")
    try:
        cypcap.compile(link_type, snaplen, expr, True, cypcap.NETMASK_UNKNOWN)
    except cypcap.Error as exc:
        raise InvalidFilter(f'invalid BPF filter "{expr}": {_libpcap_words(exc)}') from None


_LEADING_DIRECTION = re.compile(r"\s*(inbound|outbound)\b\s*(?:(?:and\b|&&)(.*))?", re.DOTALL)
_DIRECTIONS = {"inbound": cypcap.Direction.IN, "outbound": cypcap.Direction.OUT}


def split_direction(user_filter: str) -> tuple[cypcap.Direction | None, str]:
    """``(direction, REST)`` for ``inbound [and REST]`` or ``outbound [and REST]``.

    Any other filter comes back as ``(None, user_filter)``.

    libpcap (1.10, TPACKET_V3) filters the ring block being filled when ``setfilter`` runs in
    user space, where the kernel-only ``inbound``/``outbound`` test never matches: that whole
    first block is lost. ``pcap_setdirection`` checks the same packet type on every block, so a
    direction that applies to the whole filter is taken out and set that way. It applies only
    if the filter means ``DIRECTION and (REST)``: ``and`` and ``or`` bind equally, left to
    right (``inbound and udp or icmp`` is ``(inbound and udp) or icmp``), so libpcap decides:
    the split is used only when both compile to the same program. Compiles (and so may
    resolve names): call it in a worker thread from async code.
    """
    match = _LEADING_DIRECTION.fullmatch(user_filter)
    if match is None:
        return None, user_filter
    keyword, rest = match.group(1), match.group(2)
    if rest is None:
        return _DIRECTIONS[keyword], ""
    rest = rest.strip()
    try:
        same = bool(rest) and _program(user_filter) == _program(f"{keyword} and ({rest})")
    except cypcap.Error:
        same = False
    return (_DIRECTIONS[keyword], rest) if same else (None, user_filter)


def _program(expr: str) -> str:
    return str(cypcap.compile(DLT_EN10MB, 65535, expr, True, cypcap.NETMASK_UNKNOWN).dumps())


def exclusion_filter(user_filter: str, exclude: Iterable[Link]) -> str:
    """``(user) and not (host A and host B and tcp port P and tcp port Q) and ...``.

    Addresses are normalised through :mod:`ipaddress` (IPv4-mapped IPv6 becomes IPv4, as on
    the wire; a scope id is dropped), which also keeps anything but an address out of the
    expression.
    """
    parts = [f"({user_filter})"] if user_filter.strip() else []
    for local_ip, local_port, remote_ip, remote_port in exclude:
        hosts = [_bpf_address(ip) for ip in (local_ip, remote_ip)]
        ports = [int(port) for port in (local_port, remote_port)]
        if not all(0 <= port <= 65535 for port in ports):
            raise ValueError(f"port out of range in excluded link {ports}")
        parts.append(
            f"not (host {hosts[0]} and host {hosts[1]}"
            f" and tcp port {ports[0]} and tcp port {ports[1]})"
        )
    return " and ".join(parts)


def _bpf_address(text: str) -> str:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)
