"""What Wireshark's reload buttons list: the apps of the targeted space, an app's instances,
each source's devices. Blocking (requests, one ``trio.run`` for devices): ``pcapd extcap`` is
its own short process, called by Wireshark for one answer.

Cloud Controller is asked as the cf CLI would ask it: with the cf CLI's token (refreshed when
about to expire) and its ``SSLDisabled`` choice; names from the user go into query parameters
(encoded by requests), guids from Cloud Controller into paths only when they look like guids.
Devices come from the agents through the api (``list_devices``), as ``capture … -D``.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any
from urllib.parse import quote

import requests

from pcapd.client.cfcli import CfConfig, CfCredentials, cf_config_path, load_cf_config
from pcapd.client.credentials import HTTP_TIMEOUT
from pcapd.client.devices import local_devices, remote_devices
from pcapd.errors import PcapdError, UsageError

MAX_PAGES = 20
"""Pages of Cloud Controller's answers followed at most (5000 apps each)."""
_GUID = re.compile(r"[0-9a-fA-F-]{1,64}")

Value = tuple[str, str]
"""(value passed back by Wireshark, what the dialog shows)."""


class _Cc:
    """GETs to the Cloud Controller of the cf CLI's target, logged in as the cf CLI is."""

    def __init__(self) -> None:
        self.config: CfConfig = load_cf_config(cf_config_path())
        credentials = CfCredentials(self.config)
        credentials.ensure_fresh(time.time())
        self.headers = {"Authorization": credentials.tokens.authorization,
                        "Accept": "application/json"}

    def get(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every resource of a (paginated) list answer."""
        url: str | None = f"{self.config.target.rstrip('/')}{path}"
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            try:
                response = requests.get(url, params=params, headers=self.headers,
                                        timeout=HTTP_TIMEOUT, verify=not self.config.ssl_disabled)
            except requests.RequestException as exc:
                raise PcapdError(f"cannot reach Cloud Controller {self.config.target}: "
                                 f"{type(exc).__name__}") from None
            if response.status_code != 200:
                raise PcapdError(f"Cloud Controller answered {path} with HTTP "
                                 f"{response.status_code}")
            try:
                body = response.json()
            except ValueError:
                raise PcapdError(f"Cloud Controller answered {path} with no JSON") from None
            resources = body.get("resources") if isinstance(body, dict) else None
            found.extend(r for r in resources or [] if isinstance(r, dict))
            nxt = (body.get("pagination") or {}).get("next") if isinstance(body, dict) else None
            url = nxt.get("href") if isinstance(nxt, dict) else None
            params = None  # the next link carries them
        return found


def cf_apps() -> list[Value]:
    """The apps of the space the cf CLI targets, by name."""
    cc = _Cc()
    if not cc.config.space_guid:
        raise UsageError("no space targeted: run 'cf target -s SPACE'")
    apps = cc.get("/v3/apps", {"space_guids": cc.config.space_guid, "order_by": "name",
                               "per_page": "5000"})
    names = sorted({str(a["name"]) for a in apps if isinstance(a.get("name"), str)})
    return [(name, name) for name in names]


def cf_instances(app: str, process_type: str) -> list[Value]:
    """The instances of ``app``'s ``process_type`` processes: index and state, all first."""
    if not app:
        raise UsageError("choose the app first")
    cc = _Cc()
    query = {"names": app, "space_guids": cc.config.space_guid} if cc.config.space_guid \
        else {"guids": app}
    matches = [a for a in cc.get("/v3/apps", query) if a.get("name") == app or a.get("guid")
               == app]
    guid = str(matches[0].get("guid", "")) if matches else ""
    if not _GUID.fullmatch(guid):
        raise UsageError(f"app {app} not found in the targeted space")
    stats = cc.get(f"/v3/apps/{quote(guid, safe='')}/processes/"
                   f"{quote(process_type or 'web', safe='')}/stats")
    rows = sorted((int(s["index"]), str(s.get("state", "?"))) for s in stats
                  if isinstance(s.get("index"), int))
    return [("", "all instances")] + [(str(i), f"{i} ({state})") for i, state in rows]


def devices(target: str, args: argparse.Namespace) -> list[Value]:
    """Every device name any source of the target has (``capture … -D``), ``eth0`` and
    ``lo`` first."""
    listing = local_devices(list(args.netns)) if target == "local" else remote_devices(args)
    names = {d for _, found in listing if not isinstance(found, str) for d in found}
    ordered = [n for n in ("eth0", "lo") if n in names] + sorted(names - {"eth0", "lo"})
    return [(name, name) for name in ordered]
