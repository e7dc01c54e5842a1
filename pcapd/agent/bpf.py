"""BPF filters: checked with libpcap's own compiler, and the agent's link left out.

Split from :mod:`pcapd.agent.pcap` so the api can check a user's filter before contacting
any agent without loading the capture engine's namespace machinery. ``python -m
pcapd.agent.bpf`` is the child that :mod:`.bpf_worker` runs to compile one filter under
limits: this module imports no Trio, so the child starts in ~40 ms.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import resource
import struct
import sys
from collections.abc import Iterable

import cypcap
import msgspec

from pcapd.errors import PcapdError

DLT_EN10MB = 1
CPU_SECONDS = 2
"""CPU seconds one compile may use: a 100-term ``or`` chain takes ~0.9 s, 25 terms 16 ms."""
MEMORY = 1 << 30
"""Address space of the compiling child (the optimiser used 31 MB for 200 terms)."""

Link = tuple[str, int, str, int]
"""A TCP connection to leave out: ``(local_ip, local_port, remote_ip, remote_port)``."""


class HandleError(PcapdError):
    """A libpcap handle could not be opened (its filter compiled) or read; the message carries
    libpcap's words."""


class InvalidFilter(HandleError):
    """The BPF filter does not compile."""


def _libpcap_words(exc: cypcap.Error) -> str:
    return str(getattr(exc, "msg", "") or exc)


QUOTED_FILTER = 200
"""Characters of a filter quoted in a message: the reason after it must still fit the line."""


def quoted(expr: str) -> str:
    """``expr`` for a message: at most :data:`QUOTED_FILTER` characters, cut with "…"."""
    if len(expr) > QUOTED_FILTER:
        expr = expr[:QUOTED_FILTER - 1] + "…"
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in expr) + '"'


def compile_filter(expr: str, link_type: int = DLT_EN10MB, snaplen: int = 65535) -> None:
    """Raise :class:`InvalidFilter`, in libpcap's words, unless ``expr`` compiles.

    Needs no capture (a dead handle). The netmask is "unknown", as on the agent, so both
    accept the same filters. libpcap resolves names in the filter (``host example.com``) and
    its optimiser costs about the cube of the number of ``or`` terms, holding the GIL
    throughout: servers compile user filters only in a child process
    (:mod:`pcapd.agent.bpf_worker`), never on their own.
    """
    compile_program(expr, (), link_type, snaplen, split=False)


def compile_program(user_filter: str, exclude: Iterable[Link], link_type: int, snaplen: int,
                    *, split: bool) -> tuple[cypcap.Direction | None, str | None]:
    """``(direction, program)`` for a capture: the one compile of the user's filter.

    With ``split`` a leading ``inbound``/``outbound`` becomes the direction
    (:func:`split_direction`); the rest, with the links in ``exclude`` left out, is compiled
    for ``link_type`` and returned as :meth:`cypcap.BpfProgram.dumps` text (None: no filter).
    Errors quote the user's own words, not the exclusions.
    """
    if "\0" in user_filter:
        raise InvalidFilter(f"invalid BPF filter {quoted(user_filter)}: contains a NUL character")
    direction, kernel_filter = (split_direction(user_filter) if split
                                else (None, user_filter))
    bpf = exclusion_filter(kernel_filter, exclude)
    if not bpf:
        return direction, None
    try:
        program = cypcap.compile(link_type, snaplen, bpf, True, cypcap.NETMASK_UNKNOWN)
    except cypcap.Error as exc:
        raise InvalidFilter(f"invalid BPF filter {quoted(user_filter)}: "
                            f"{_libpcap_words(exc)}") from None
    return direction, str(program.dumps())


_INSN = struct.Struct("=HBBI")  # struct bpf_insn: code, jt, jf, k (native byte order)
MAX_INSTRUCTIONS = 4096
"""The kernel's limit on a socket filter's length (BPF_MAXINSNS)."""


def program_bytes(program: str) -> bytes:
    """A program as :meth:`cypcap.BpfProgram.dumps` writes it (``N,code jt jf k,…``) packed as
    the ``struct bpf_insn`` array the compiled capture engine installs. The text comes from
    our own compile child; it is still checked, as anything crossing a process boundary."""
    count, *rows = program.split(",")
    if not count.isdigit() or int(count) != len(rows) or not 0 < len(rows) <= MAX_INSTRUCTIONS:
        raise HandleError("the filter compiler's answer is not a BPF program")
    out = bytearray()
    for row in rows:
        fields = row.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields):
            raise HandleError("the filter compiler's answer is not a BPF program")
        try:
            out += _INSN.pack(*map(int, fields))
        except struct.error:
            raise HandleError("the filter compiler's answer is not a BPF program") from None
    return bytes(out)


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
    resolve names): servers call it only in the child of :mod:`.bpf_worker`.
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


# --- the child process of pcapd.agent.bpf_worker: python -m pcapd.agent.bpf ---------------


class CompileRequest(msgspec.Struct, frozen=True):
    """What :mod:`.bpf_worker` asks the child (see :func:`compile_program`)."""

    filter: str
    exclude: list[Link]
    link_type: int
    snaplen: int
    split: bool


class CompileResult(msgspec.Struct, frozen=True):
    """The child's answer: a program (:meth:`cypcap.BpfProgram.dumps`) or libpcap's error."""

    program: str | None = None
    direction: str | None = None
    error: str | None = None


def _limit_self() -> None:
    """CPU and memory limits on this process, and no core file: the CPU limit ends a costly
    compile with SIGXCPU, whose default action dumps core — up to :data:`MEMORY` of a
    user's filter written to disk (or to the system's crash reporter) per attempt. A sandbox
    that forbids even lowering them (a seccomp filter without ``setrlimit``; the shipped
    systemd units allow it) leaves the parent's wall-clock deadline as the bound. Not niced:
    on a saturated machine a niced child may starve past that deadline, and the CPU limit
    already bounds what it takes."""
    for limit, value in ((resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1)),
                         (resource.RLIMIT_AS, (MEMORY, MEMORY))):
        with contextlib.suppress(OSError):
            resource.setrlimit(limit, value)


def main() -> None:
    """The child: limits itself, then one request on stdin, one result on stdout."""
    _limit_self()
    request = msgspec.json.decode(sys.stdin.buffer.read(), type=CompileRequest)
    try:
        direction, program = compile_program(
            request.filter, request.exclude,
            request.link_type, request.snaplen, split=request.split)
    except InvalidFilter as exc:
        result = CompileResult(error=str(exc))
    except MemoryError:
        result = CompileResult(error=f"the BPF filter {quoted(request.filter)} needs more than "
                               f"{MEMORY >> 20} MiB to compile: use fewer terms")
    else:
        result = CompileResult(program=program, direction=direction.name if direction else None)
    sys.stdout.buffer.write(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
