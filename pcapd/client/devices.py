"""``pcapd capture local -D``: the devices each source could capture on, as ``tcpdump -D``.

The host's devices, or those of each ``--netns`` namespace (entered in this thread and left
again): one line per device, ``NETNS:DEVICE`` as the source would be named in the pcapng.
"""

from __future__ import annotations

import socket

from pcapd.agent.netns import NamespaceError, call_in_netns, named_netns
from pcapd.errors import UsageError


def _names() -> list[str]:
    return [name for _, name in sorted(socket.if_nameindex())]


def local_devices(netns: list[str]) -> list[tuple[str, list[str]]]:
    """(source, its devices in index order) for the host (no ``netns``) or each namespace."""
    if not netns:
        return [("host", _names())]
    out = []
    for name in netns:
        try:
            out.append((name, call_in_netns(named_netns(name), _names)))
        except NamespaceError as exc:
            raise UsageError(f"--netns {name}: {exc} (see 'ip netns list')") from None
    return out


def device_lines(listing: list[tuple[str, list[str]]]) -> list[str]:
    """``1.host:lo`` … numbered as tcpdump -D numbers them."""
    lines: list[str] = []
    for source, devices in listing:
        lines.extend(f"{n}.{source}:{device}" for n, device in enumerate(devices, 1))
    return lines
