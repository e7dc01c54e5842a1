"""Cloud Foundry targets: who may capture an app, and where its instances run.

Everything is asked of Cloud Controller *with the user's own token*, so the platform's own
visibility rules apply first (an app in a space the user is not in is simply "not found"), then
pcapd's rule (:func:`pcapd.authz.cf_may_capture`). The app's instances come from its process
stats: the cell (``host``) runs the agent, ``instance_guid`` names the container's network
namespace there, and ``instance_internal_ip`` goes into the Name Resolution Block.

Every URL is built with :func:`pcapd.urls.join`, each value from the request a checked,
percent-encoded segment: an unencoded ``--process-type ../../<B>/processes/web`` once made the
HTTP client resolve the dot segments and fetch app B's instances after app A was authorized.
The instances are also *proven* to belong to the authorized app: the process is fetched first
and its ``relationships.app`` must be that app, and the stats are then asked of that process by
its own guid — so whatever the path, what is captured is what was authorized.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import httpx

from pcapd.api.agents import AgentJob
from pcapd.api.resolve import Resolution, UaaPlatform, Unavailable, get_json
from pcapd.authz import cf_may_capture
from pcapd.config import CfConfig
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, CfTarget, Start
from pcapd.tokens import Identity
from pcapd.urls import InvalidSegment, join

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
CAPTURABLE = {"RUNNING", "STARTING"}


class CfResolver(UaaPlatform):
    """Resolves ``cf`` targets against one Cloud Controller (and its UAA)."""

    login = "cf login"
    platform = "Cloud Foundry"
    setting = "cf.tokens"

    def __init__(self, config: CfConfig, http: httpx.AsyncClient, agents_port: int) -> None:
        super().__init__(http, config.tokens)
        self.config = config
        self.agents_port = agents_port
        self.api = config.api.rstrip("/")

    async def _find_uaa(self) -> tuple[str, str]:
        """The v3 endpoint and UAA, from the root document."""
        status, root = await get_json(self.http, self.api + "/", token=None,
                                      what="Cloud Controller")
        try:
            links = root["links"]
            v3 = links["cloud_controller_v3"]["href"]
            uaa = links["uaa"]["href"]
        except (TypeError, KeyError):
            raise Refusal("START_CAPTURE_FAILED", f"Cloud Controller at {self.api} answered "
                          f"{status} without the links of its root document (cf.api)") from None
        return str(v3).rstrip("/"), str(uaa)

    async def resolve(self, start: Start, token: str | None) -> Resolution:
        target = start.target
        assert isinstance(target, CfTarget)
        identity = await self.identify(token)
        assert token is not None
        v3, _ = await self._discover()
        try:
            return await self._resolve(v3, target, token, identity)
        except InvalidSegment as exc:
            raise Refusal("INVALID_REQUEST", f"{exc}: nothing was captured") from None

    async def _resolve(self, v3: str, target: CfTarget, token: str,
                       identity: Identity) -> Resolution:
        app = await self._find_app(v3, target, token)
        guid, name = str(app.get("guid")), str(app.get("name"))
        app_url = join(v3, "apps", (guid, "the app guid Cloud Controller sent"))
        _, permissions = await self._get(f"{app_url}/permissions", token, name)
        ssh = None
        if self.config.require_ssh_enabled:
            _, ssh = await self._get(f"{app_url}/ssh_enabled", token, name)
        decision = cf_may_capture(name, permissions or {}, ssh)
        if not decision.allowed:
            raise Refusal("PERMISSION_DENIED", decision.reason)
        kind = target.process_type
        status, process = await get_json(
            self.http, join(app_url, "processes", (kind, "--process-type")), token=token,
            what="Cloud Controller")
        if status == 404:
            raise Refusal("INVALID_REQUEST", f"app {name} has no process of type "
                          f"{kind!r} (--process-type); it has "
                          f"{await self._process_types(app_url, token)}")
        self._check(status, process, name)
        process_guid = _owned_process(process, guid, kind, name)
        status, stats = await get_json(
            self.http, join(v3, "processes", (process_guid, "the process guid"), "stats"),
            token=token, what="Cloud Controller")
        self._check(status, stats, name)
        resources = stats.get("resources") if isinstance(stats, dict) else None
        audit = {"org": _included_name(app, "organizations"),
                 "space": _included_name(app, "spaces"), "app_guid": guid,
                 "process_type": kind}
        resolution = self._instances(target, guid, name, resources or [], identity)
        # users see their captures by org and space too (`pcapd captures list`)
        return replace(resolution, audit=audit, target=f"cf:{_org_space(app)}{name}")

    async def _find_app(self, v3: str, target: CfTarget, token: str) -> dict[str, Any]:
        if _GUID.fullmatch(target.app):
            one = join(v3, "apps", (target.app, "the app guid")) + f"?include={_INCLUDED}"
            status, app = await get_json(self.http, one, token=token, what="Cloud Controller")
            if status == 200 and isinstance(app, dict):
                return app
            if status != 404:
                self._check(status, app, target.app)
            if target.space is None:
                raise Refusal("INVALID_REQUEST", f"app {target.app} not found (or you may not "
                              "see it)")
        if target.space is None:
            raise Refusal("INVALID_REQUEST", f"app {target.app} not found (name an app guid, "
                          "or target a space with `cf target -s SPACE`)")
        url = httpx.URL(join(v3, "apps"), params={"names": target.app,
                                                  "space_guids": target.space,
                                                  "include": _INCLUDED})
        status, found = await get_json(self.http, str(url), token=token,
                                       what="Cloud Controller")
        self._check(status, found, target.app)
        resources = found.get("resources") if isinstance(found, dict) else None
        # CC splits both filters at commas ("a,b" finds a and b): keep only the exact match
        for app in resources if isinstance(resources, list) else []:
            if isinstance(app, dict) and app.get("name") == target.app \
                    and _space_guid(app) == target.space:
                included = found.get("included") if isinstance(found, dict) else None
                return {**app, "included": included}
        raise Refusal("INVALID_REQUEST", f"app {target.app} not found in the targeted space "
                      "(or you may not see it): check `cf apps`")

    async def _process_types(self, app_url: str, token: str) -> str:
        """``web, worker``: what ``--process-type`` may name for this app (the user's mistake
        shows what exists); ``?`` when Cloud Controller does not say."""
        status, found = await get_json(self.http, f"{app_url}/processes", token=token,
                                       what="Cloud Controller")
        resources = found.get("resources") if status == 200 and isinstance(found, dict) else None
        types = sorted({str(p["type"]) for p in resources or []
                        if isinstance(p, dict) and isinstance(p.get("type"), str)})
        return ", ".join(types[:10]) or "?"

    async def _get(self, url: str, token: str, app: str) -> tuple[int, Any]:
        status, body = await get_json(self.http, url, token=token, what="Cloud Controller")
        self._check(status, body, app)
        return status, body

    @staticmethod
    def _check(status: int, body: Any, app: str) -> None:
        if 200 <= status < 300:
            return
        detail = _cc_error(body)
        if status == 401:
            raise Refusal("UNAUTHENTICATED", f"Cloud Controller refused the token ({detail}): "
                          "log in again with `cf login`")
        if status == 403:
            raise Refusal("PERMISSION_DENIED", f"Cloud Controller: {detail}")
        if status == 404:
            raise Refusal("INVALID_REQUEST", f"app {app} not found (or you may not see it)")
        raise Refusal("START_CAPTURE_FAILED", f"Cloud Controller answered {status} ({detail})")

    def _instances(self, target: CfTarget, guid: str, name: str,
                   resources: list[dict[str, Any]], identity: Identity) -> Resolution:
        by_index = {int(r["index"]): r for r in resources if "index" in r}
        wanted = sorted(set(target.instances)) if target.instances else sorted(by_index)
        unknown = [i for i in wanted if i not in by_index]
        if unknown:  # the user's mistake, not an instance down: nothing is captured
            have = ", ".join(str(i) for i in sorted(by_index)) or "none"
            asked = ", ".join(map(str, unknown[:10]))
            if len(unknown) > 10:
                asked += f" and {len(unknown) - 10} more"
            raise Refusal("INVALID_REQUEST", f"{name} has no instance {asked} (--instance); "
                          f"it has {have} (`cf app {name}`)")
        jobs: list[AgentJob] = []
        unavailable: list[Unavailable] = []
        names: list[tuple[str, str]] = []
        for index in wanted:
            origin = f"{name}/{index}"
            instance = by_index[index]
            state = str(instance.get("state", "UNKNOWN"))
            host, instance_guid = instance.get("host"), instance.get("instance_guid")
            if state not in CAPTURABLE or not host or not instance_guid:
                unavailable.append(Unavailable(origin, f"{origin} is {state}: not captured"))
                continue
            jobs.append(AgentJob(str(host), self.agents_port, AgentTarget(
                namespace=str(instance_guid), app_guid=guid, source=origin), origin=origin))
            if instance.get("instance_internal_ip"):
                names.append((str(instance["instance_internal_ip"]), origin))
        return Resolution(jobs, unavailable, names, identity, target=f"cf:{name}")


_INCLUDED = "space,space.organization"
"""Asked with the app so the audit line names its org and space (CC's ``include``)."""


def _owned_process(process: Any, app_guid: str, kind: str, name: str) -> str:
    """The guid of a process Cloud Controller sent, once it is proven to be ``kind`` of the
    authorized app; a Refusal otherwise (nothing of another app is ever captured)."""
    try:
        owner = process["relationships"]["app"]["data"]["guid"]
        process_guid, process_type = process["guid"], process["type"]
    except (TypeError, KeyError):
        owner = process_guid = process_type = None
    if owner != app_guid or process_type != kind or not isinstance(process_guid, str):
        raise Refusal("PERMISSION_DENIED", f"Cloud Controller answered for --process-type "
                      f"{kind!r} with a process that is not app {name}'s: nothing was captured")
    return process_guid


def _space_and_org(app: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The app's space and organization from CC's ``included``; None when it did not say."""
    try:
        included = app["included"]
        space = next(s for s in included["spaces"] if s["guid"] == _space_guid(app))
        org_guid = space["relationships"]["organization"]["data"]["guid"]
        org = next(o for o in included["organizations"] if o["guid"] == org_guid)
        return space, org
    except (TypeError, KeyError, StopIteration):
        return None


def _included_name(app: dict[str, Any], kind: str) -> str:
    """``name (guid)`` of the app's ``spaces`` or ``organizations`` entry; ``?`` if absent."""
    found = _space_and_org(app)
    if found is None:
        return "?"
    entry = found[0] if kind == "spaces" else found[1]
    return f"{entry.get('name')} ({entry.get('guid')})"


def _org_space(app: dict[str, Any]) -> str:
    """``my-org/dev/`` for the target label; ``""`` when Cloud Controller did not say."""
    found = _space_and_org(app)
    return "" if found is None else f"{found[1].get('name')}/{found[0].get('name')}/"


def _space_guid(app: dict[str, Any]) -> object:
    """The guid of an app's space (``relationships.space.data.guid``), None if absent."""
    try:
        return app["relationships"]["space"]["data"]["guid"]
    except (TypeError, KeyError):
        return None


def _cc_error(body: Any) -> str:
    """The ``detail`` of Cloud Controller's ``{"errors": [...]}``."""
    try:
        first = body["errors"][0]
        return f"{first.get('title', 'error')}: {first.get('detail', '')}"
    except (TypeError, KeyError, IndexError):
        return "no details"
