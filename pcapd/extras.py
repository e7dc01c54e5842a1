"""Which commands need the server extra, and the one line that says so when it is missing.

A laptop installs ``pcapd`` alone: the client (``capture cf|bosh``, ``captures``, ``merge``,
``extcap``, ``version``) and nothing that needs libpcap, netlink, S3, metrics or X.509 code.
The agent, api and local roles and ``certs`` need ``pcapd[server]``. The extra's members are
read from pcapd's own metadata (setup.cfg), so a server dependency added there is checked too.
"""

from __future__ import annotations

import re
from importlib import metadata

from pcapd.errors import PcapdError

EXTRA = "server"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']server["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class MissingExtra(PcapdError):
    """A command needs distributions of an extra that is not installed."""


def server_requirements() -> list[str]:
    """Names of the distributions the server extra adds (empty when pcapd is not installed)."""
    try:
        requires = metadata.requires("pcapd") or []
    except metadata.PackageNotFoundError:  # run from a checkout without an install: no check
        return []
    names = []
    for requirement in requires:
        name = _NAME.match(requirement)
        if name and _EXTRA_MARKER.search(requirement.partition(";")[2]):
            names.append(name.group())
    return names


def missing_server_requirements() -> list[str]:
    """The server extra's distributions that are not installed."""
    missing = []
    for name in server_requirements():
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def require_server(command: str) -> None:
    """Raise MissingExtra, in one line with the command to run, unless the extra is installed."""
    if missing_server_requirements():
        raise MissingExtra(f"pcapd {command} needs the {EXTRA} extra: "
                           f"pip install 'pcapd[{EXTRA}]'")
