"""``pcapd capture … -D``: the devices each source could capture on, as ``tcpdump -D``.

Local: the host's devices, or those of each ``--netns`` namespace (entered in this thread and
left again). cf and bosh: the api asks each instance's agent (``list_devices``), after the same
login, authentication and authorization as a capture of the target. One line per device,
``SOURCE:DEVICE`` as the source would be named in the pcapng; a source whose devices are
unknown gets one line saying why.
"""

from __future__ import annotations

import argparse
import socket
from contextlib import ExitStack

import trio

from pcapd.client.capture import ApiAddress, CaptureRefused, open_api_link, refusal_text
from pcapd.client.remote import api_address, login_and_target, refresh_login
from pcapd.errors import UsageError
from pcapd.proto import DeviceList, Error, ListDevices
from pcapd.proto.messages import Target
from pcapd.transport.link import LinkClosed

Listing = list[tuple[str, list[str] | str]]
"""(source, its devices — or why they are unknown)."""


def _names() -> list[str]:
    return [name for _, name in sorted(socket.if_nameindex())]


def local_devices(netns: list[str]) -> Listing:
    """(source, its devices in index order) for the host (no ``netns``) or each namespace."""
    from pcapd.agent.netns import (  # noqa: PLC0415  # pyroute2: the server extra
        NamespaceError,
        call_in_netns,
        named_netns,
    )

    if not netns:
        return [("host", _names())]
    out: Listing = []
    for name in netns:
        try:
            out.append((name, call_in_netns(named_netns(name), _names)))
        except NamespaceError as exc:
            raise UsageError(f"--netns {name}: {exc} (see 'ip netns list')") from None
    return out


def remote_devices(args: argparse.Namespace) -> Listing:
    """``capture cf|bosh -D``: the login and api as for a capture, then one question."""
    with ExitStack() as stack:
        credentials, target, url = login_and_target(args, stack)
        api = api_address(url, cacert=args.cacert, insecure=args.insecure)
        refresh_login(credentials, args)
        headers = [(b"authorization", credentials.tokens.authorization.encode())]
        answer = trio.run(_ask, api, target, headers)
    return [(s.origin, s.problem or list(s.devices)) for s in answer.sources]


async def _ask(api: ApiAddress, target: Target,
               headers: list[tuple[bytes, bytes]]) -> DeviceList:
    try:
        async with open_api_link(api, headers) as link:
            await link.send(ListDevices(target=target))
            answer = await link.receive()
    except LinkClosed as exc:
        raise CaptureRefused(f"lost the connection to the api: {exc}") from exc
    if isinstance(answer, Error):
        raise CaptureRefused(refusal_text(answer))
    if not isinstance(answer, DeviceList):
        raise CaptureRefused("the api answered -D with something else than a device list")
    return answer


def device_lines(listing: Listing) -> list[str]:
    """``1.host:lo`` … numbered as tcpdump -D numbers them; ``my-app/1: unknown (why)``."""
    lines: list[str] = []
    for source, devices in listing:
        if isinstance(devices, str):
            lines.append(f"{source}: devices unknown ({devices})")
            continue
        lines.extend(f"{n}.{source}:{device}" for n, device in enumerate(devices, 1))
    return lines
