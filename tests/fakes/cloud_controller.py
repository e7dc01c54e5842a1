"""A fake Cloud Controller (v3): root document, apps, permissions, process stats and the ssh
feature flags, with CC's token checks, role-based visibility and error bodies (reference §2).

Tokens are checked the way CC's ``UaaTokenDecoder`` does: ``Authorization`` scheme matched
case-insensitively, signature by a key UAA lists, not expired, issuer, audience
``cloud_controller``, no refresh tokens. Invisible apps are 404 "App not found", never 403.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import trustme

from .http import FakeServer, Request, Response, json_response
from .uaa import FakeUAA, User

STAMP = "2024-01-01T00:00:00Z"
SPACE_ROLES = frozenset({"developer", "auditor", "manager", "supporter"})
ORG_ROLES = frozenset({"manager", "auditor", "billing_manager", "user"})


def _guid() -> str:
    return str(uuid.uuid4())


def instance_guid() -> str:
    """A Diego instance guid (8-4-4-4-4 hex digits, e.g. ``e49f448e-54d2-4c33-61a3-5335``)."""
    h = uuid.uuid4().hex
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}"


@dataclass
class Org:
    guid: str
    name: str
    suspended: bool = False


@dataclass
class Space:
    guid: str
    name: str
    org: Org
    allow_ssh: bool = True


@dataclass
class Instance:
    index: int
    state: str = "RUNNING"  # RUNNING | CRASHED | STARTING | STOPPING | DOWN
    instance_guid: str = field(default_factory=instance_guid)
    host: str = "127.0.0.1"  # the Diego cell (where the agent listens)
    instance_internal_ip: str = ""  # default: derived from the guid
    instance_ports: list[dict[str, int]] | None = None  # default: one 8080 mapping
    uptime: int = 100
    isolation_segment: str | None = None
    details: str | None = None

    def __post_init__(self) -> None:
        if not self.instance_internal_ip:
            h = int(self.instance_guid[:8], 16)
            self.instance_internal_ip = f"10.255.{(h >> 8) & 255}.{(h & 253) + 2}"
        if self.instance_ports is None and self.state != "STARTING":
            self.instance_ports = [{"external": 61000 + 2 * self.index, "internal": 8080,
                                    "external_tls_proxy_port": 61001 + 2 * self.index,
                                    "internal_tls_proxy_port": 61001}]


@dataclass
class Process:
    guid: str
    type: str
    instances: list[Instance]


@dataclass
class App:
    guid: str
    name: str
    space: Space
    state: str = "STARTED"
    enable_ssh: bool = True
    processes: dict[str, Process] = field(default_factory=dict)


def _instances(spec: int | list[Instance]) -> list[Instance]:
    return [Instance(i) for i in range(spec)] if isinstance(spec, int) else list(spec)


class FakeCloudController(FakeServer):
    name = "cloud-controller"

    def __init__(self, uaa: FakeUAA, *, tls: trustme.CA | None = None) -> None:
        super().__init__(tls=tls)
        self.uaa = uaa
        self.global_ssh = True  # allow_app_ssh_access
        self.orgs: list[Org] = []
        self.spaces: list[Space] = []
        self.apps: list[App] = []
        self._space_roles: dict[tuple[str, str], set[str]] = {}
        self._org_roles: dict[tuple[str, str], set[str]] = {}

    # -- builder API ------------------------------------------------------------------------------
    def add_org(self, name: str, guid: str | None = None) -> Org:
        with self.lock:
            self.orgs.append(org := Org(guid or _guid(), name))
            return org

    def add_space(self, org: Org, name: str, *, allow_ssh: bool = True,
                  guid: str | None = None) -> Space:
        with self.lock:
            self.spaces.append(space := Space(guid or _guid(), name, org, allow_ssh))
            return space

    def add_app(self, space: Space, name: str, guid: str | None = None,
                instances: int | list[Instance] = 1, *, enable_ssh: bool = True,
                state: str = "STARTED") -> App:
        """An app with a ``web`` process (whose guid is the app's) of ``instances``."""
        with self.lock:
            app = App(guid or _guid(), name, space, state, enable_ssh)
            app.processes["web"] = Process(app.guid, "web", _instances(instances))
            self.apps.append(app)
            return app

    def add_process(self, app: App, process_type: str,
                    instances: int | list[Instance] = 1) -> Process:
        with self.lock:
            process = Process(_guid(), process_type, _instances(instances))
            app.processes[process_type] = process
            return process

    def set_instances(self, app: App, instances: int | list[Instance],
                      process_type: str = "web") -> None:
        with self.lock:
            app.processes[process_type].instances = _instances(instances)

    def remove_app(self, app: App) -> None:
        with self.lock:
            self.apps.remove(app)

    def grant(self, user: User | str, role: str, space: Space) -> None:
        """Give a space role: developer, auditor, manager or supporter."""
        if role not in SPACE_ROLES:
            raise ValueError(f"unknown space role {role!r}")
        with self.lock:
            self._space_roles.setdefault((_uid(user), space.guid), set()).add(role)

    def grant_org(self, user: User | str, role: str, org: Org) -> None:
        """Give an org role: manager, auditor, billing_manager or user."""
        if role not in ORG_ROLES:
            raise ValueError(f"unknown org role {role!r}")
        with self.lock:
            self._org_roles.setdefault((_uid(user), org.guid), set()).add(role)

    def revoke(self, user: User | str, role: str, space: Space) -> None:
        with self.lock:
            self._space_roles.get((_uid(user), space.guid), set()).discard(role)

    # -- authorization ----------------------------------------------------------------------------
    def _authenticate(self, request: Request) -> dict[str, Any] | Response:
        if request.header("Authorization") is None:
            return cf_error(401, 10002, "CF-NotAuthenticated", "Authentication error")
        token = request.bearer()
        claims = self.uaa.verify(token) if token else None
        if claims is None or "cloud_controller" not in claims.get("aud", []):
            return cf_error(401, 1000, "CF-InvalidAuthToken", "Invalid Auth Token")
        scopes = set(claims.get("scope", []))
        if not scopes & {"cloud_controller.read", "cloud_controller.admin",
                         "cloud_controller.admin_read_only", "cloud_controller.global_auditor"}:
            return cf_error(403, 10003, "CF-NotAuthorized",
                            "You are not authorized to perform the requested action")
        return claims

    def _visible(self, claims: dict[str, Any], space: Space) -> bool:
        scopes = set(claims.get("scope", []))
        if scopes & {"cloud_controller.admin", "cloud_controller.admin_read_only",
                     "cloud_controller.global_auditor"}:
            return True
        user_id = claims.get("user_id", "")
        return bool(self._space_roles.get((user_id, space.guid))) or (
            "manager" in self._org_roles.get((user_id, space.org.guid), set()))

    def _sensitive(self, claims: dict[str, Any], space: Space) -> bool:
        scopes = set(claims.get("scope", []))
        if scopes & {"cloud_controller.admin", "cloud_controller.admin_read_only"}:
            return True
        return "developer" in self._space_roles.get((claims.get("user_id", ""), space.guid), set())

    # -- HTTP -------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if request.method != "GET":
            return cf_error(404, 10000, "CF-NotFound", "Unknown request")
        if path == "/":
            return json_response(200, self._root())
        if path == "/v3":
            return json_response(200, {"links": {
                name: {"href": f"{self.url}/v3/{name}"} for name in (
                    "apps", "info", "organizations", "processes", "spaces", "roles", "users")
            } | {"self": {"href": f"{self.url}/v3"}}})
        if path == "/v3/info":
            return json_response(200, self._info())
        claims = self._authenticate(request)
        if isinstance(claims, Response):
            return claims
        with self.lock:
            for pattern, method in self._routes:
                if match := re.fullmatch(pattern, path):
                    return method(self, request, claims, *match.groups())
        return cf_error(404, 10000, "CF-NotFound", "Unknown request")

    def _root(self) -> dict[str, Any]:
        url, uaa = self.url, self.uaa.url
        return {"links": {
            "self": {"href": url},
            "cloud_controller_v2": {"href": f"{url}/v2", "meta": {"version": "2.155.0"}},
            "cloud_controller_v3": {"href": f"{url}/v3", "meta": {"version": "3.90.0"}},
            "network_policy_v0": {"href": f"{url}/networking/v0/external"},
            "network_policy_v1": {"href": f"{url}/networking/v1/external"},
            "login": {"href": uaa}, "uaa": {"href": uaa}, "credhub": None,
            "routing": {"href": f"{url}/routing"},
            "logging": {"href": "wss://doppler.example.org:443"},
            "log_cache": {"href": "https://log-cache.example.org"},
            "log_stream": {"href": "https://log-stream.example.org"},
            "app_ssh": {"href": "ssh.example.org:2222", "meta": {
                "host_key_fingerprint": "Y411oivJwZCUQnXHq83mdM5SKCK4ftyoSXI31RRe4Zs",
                "oauth_client": "ssh-proxy"}}}}

    def _info(self) -> dict[str, Any]:
        return {"build": "afa73e3fe", "cli_version": {"minimum": "6.22.0",
                                                      "recommended": "latest"},
                "custom": {}, "description": "Put your apps here!", "name": "Cloud Foundry",
                "version": 123, "osbapi_version": "2.15",
                "rate_limits": {"enabled": True, "general_limit": 2000,
                                "reset_interval_in_minutes": 30},
                "links": {"self": {"href": f"{self.url}/v3/info"},
                          "support": {"href": "http://support.example.com"}}}

    def _app(self, claims: dict[str, Any], guid: str) -> App | None:
        for app in self.apps:
            if app.guid == guid and self._visible(claims, app.space):
                return app
        return None

    def _list_apps(self, request: Request, claims: dict[str, Any]) -> Response:
        wanted = {key: set(",".join(request.query[key]).split(","))
                  for key in ("names", "space_guids", "guids", "organization_guids")
                  if key in request.query}
        apps = [app for app in self.apps if self._visible(claims, app.space)
                and app.name in wanted.get("names", {app.name})
                and app.guid in wanted.get("guids", {app.guid})
                and app.space.guid in wanted.get("space_guids", {app.space.guid})
                and app.space.org.guid in wanted.get("organization_guids", {app.space.org.guid})]
        page = paginate(request, f"{self.url}/v3/apps", [self._app_json(a) for a in apps])
        if isinstance(page, Response):
            return page
        return json_response(200, self._included(request, apps, page))

    def _get_app(self, request: Request, claims: dict[str, Any], guid: str) -> Response:
        if (app := self._app(claims, guid)) is None:
            return not_found("App")
        return json_response(200, self._included(request, [app], self._app_json(app)))

    def _permissions(self, _: Request, claims: dict[str, Any], guid: str) -> Response:
        if (app := self._app(claims, guid)) is None:
            return not_found("App")
        return json_response(200, {"read_basic_data": True,
                                   "read_sensitive_data": self._sensitive(claims, app.space)})

    def _processes(self, request: Request, claims: dict[str, Any], guid: str) -> Response:
        if (app := self._app(claims, guid)) is None:
            return not_found("App")
        page = paginate(request, f"{self.url}/v3/apps/{guid}/processes",
                        [self._process_json(app, p) for p in app.processes.values()])
        return page if isinstance(page, Response) else json_response(200, page)

    def _process(self, claims: dict[str, Any], guid: str, kind: str | None
                 ) -> tuple[App, Process] | Response:
        """By app guid and type (``kind`` given) or by process guid."""
        for app in self.apps:
            for process in app.processes.values():
                wanted = (app.guid, process.type) == (guid, kind) or (
                    kind is None and process.guid == guid)
                if wanted and self._visible(claims, app.space):
                    return app, process
        if kind is not None and self._app(claims, guid) is None:
            return not_found("App")
        return not_found("Process")

    def _get_process(self, _: Request, claims: dict[str, Any], guid: str,
                     kind: str | None = None) -> Response:
        found = self._process(claims, guid, kind)
        return found if isinstance(found, Response) else json_response(
            200, self._process_json(*found))

    def _stats(self, _: Request, claims: dict[str, Any], guid: str,
               kind: str | None = None) -> Response:
        found = self._process(claims, guid, kind)
        if isinstance(found, Response):
            return found
        instances = sorted(found[1].instances, key=lambda i: i.index)
        return json_response(200, {"resources": [_stat(found[1].type, i) for i in instances]})

    def _ssh_enabled(self, _: Request, claims: dict[str, Any], guid: str) -> Response:
        if (app := self._app(claims, guid)) is None:
            return not_found("App")
        reason = ("ssh is disabled globally" if not self.global_ssh
                  else f"ssh is disabled for space '{app.space.name}'"
                  if not app.space.allow_ssh
                  else "ssh is disabled for app" if not app.enable_ssh else "")
        return json_response(200, {"enabled": not reason, "reason": reason})

    def _app_ssh_feature(self, _: Request, claims: dict[str, Any], guid: str) -> Response:
        if (app := self._app(claims, guid)) is None:
            return not_found("App")
        return json_response(200, {"name": "ssh", "description": "Enable SSHing into the app.",
                                   "enabled": app.enable_ssh})

    def _space_ssh_feature(self, _: Request, claims: dict[str, Any], guid: str) -> Response:
        for space in self.spaces:
            if space.guid == guid and self._visible(claims, space):
                return json_response(200, {"name": "ssh", "enabled": space.allow_ssh,
                                           "description": "Enable SSHing into apps in the space."})
        return not_found("Space")

    def _get_space(self, _: Request, claims: dict[str, Any], guid: str) -> Response:
        for space in self.spaces:
            if space.guid == guid and self._visible(claims, space):
                return json_response(200, self._space_json(space))
        return not_found("Space")

    _routes: list[tuple[str, Callable[..., Response]]] = [
        (r"/v3/apps", _list_apps),
        (r"/v3/apps/([^/]+)", _get_app),
        (r"/v3/apps/([^/]+)/permissions", _permissions),
        (r"/v3/apps/([^/]+)/processes", _processes),
        (r"/v3/apps/([^/]+)/processes/([^/]+)", _get_process),
        (r"/v3/apps/([^/]+)/processes/([^/]+)/stats", _stats),
        (r"/v3/processes/([^/]+)", _get_process),
        (r"/v3/processes/([^/]+)/stats", _stats),
        (r"/v3/apps/([^/]+)/ssh_enabled", _ssh_enabled),
        (r"/v3/apps/([^/]+)/features/ssh", _app_ssh_feature),
        (r"/v3/spaces/([^/]+)", _get_space),
        (r"/v3/spaces/([^/]+)/features/ssh", _space_ssh_feature),
    ]

    # -- presenters -------------------------------------------------------------------------------
    def _app_json(self, app: App) -> dict[str, Any]:
        base = f"{self.url}/v3/apps/{app.guid}"
        return {
            "guid": app.guid, "name": app.name, "state": app.state,
            "created_at": STAMP, "updated_at": STAMP,
            "lifecycle": {"type": "buildpack", "data": {"buildpacks": ["python_buildpack"],
                                                        "stack": "cflinuxfs4"}},
            "relationships": {"space": {"data": {"guid": app.space.guid}},
                              "current_droplet": {"data": {"guid": app.guid[::-1]}}},
            "links": {"self": {"href": base},
                      "space": {"href": f"{self.url}/v3/spaces/{app.space.guid}"},
                      "processes": {"href": f"{base}/processes"},
                      "features": {"href": f"{base}/features"},
                      "environment_variables": {"href": f"{base}/environment_variables"}},
            "metadata": {"labels": {}, "annotations": {}}}

    def _space_json(self, space: Space) -> dict[str, Any]:
        return {"guid": space.guid, "name": space.name, "created_at": STAMP, "updated_at": STAMP,
                "relationships": {"organization": {"data": {"guid": space.org.guid}},
                                  "quota": {"data": None}},
                "metadata": {"labels": {}, "annotations": {}},
                "links": {"self": {"href": f"{self.url}/v3/spaces/{space.guid}"},
                          "features": {"href": f"{self.url}/v3/spaces/{space.guid}/features"},
                          "organization": {
                              "href": f"{self.url}/v3/organizations/{space.org.guid}"}}}

    def _included(self, request: Request, apps: list[App], document: dict[str, Any]
                  ) -> dict[str, Any]:
        include = set(",".join(request.query.get("include", [])).split(",")) - {""}
        if not include:
            return document
        spaces = list({a.space.guid: a.space for a in apps}.values())
        included: dict[str, Any] = {"spaces": [self._space_json(s) for s in spaces]}
        if "space.organization" in include:
            orgs = list({s.org.guid: s.org for s in spaces}.values())
            included["organizations"] = [{
                "guid": o.guid, "name": o.name, "suspended": o.suspended, "created_at": STAMP,
                "updated_at": STAMP, "metadata": {"labels": {}, "annotations": {}},
                "links": {"self": {"href": f"{self.url}/v3/organizations/{o.guid}"}}}
                for o in orgs]
        return document | {"included": included}

    def _process_json(self, app: App, process: Process) -> dict[str, Any]:
        base = f"{self.url}/v3/processes/{process.guid}"
        return {
            "guid": process.guid, "type": process.type, "command": "[PRIVATE DATA HIDDEN]",
            "user": "vcap", "instances": len(process.instances), "memory_in_mb": 256,
            "disk_in_mb": 1024, "log_rate_limit_in_bytes_per_second": 1024,
            "health_check": {"type": "port", "data": {"timeout": None}},
            "readiness_health_check": {"type": "process", "data": {"invocation_timeout": None}},
            "relationships": {"app": {"data": {"guid": app.guid}},
                              "revision": {"data": None}},
            "metadata": {"labels": {}, "annotations": {}}, "created_at": STAMP,
            "updated_at": STAMP, "version": process.guid,
            "links": {"self": {"href": base}, "scale": {"href": f"{base}/actions/scale",
                                                        "method": "POST"},
                      "app": {"href": f"{self.url}/v3/apps/{app.guid}"},
                      "space": {"href": f"{self.url}/v3/spaces/{app.space.guid}"},
                      "stats": {"href": f"{base}/stats"},
                      "process_instances": {"href": f"{base}/process_instances"}}}


def _stat(process_type: str, inst: Instance) -> dict[str, Any]:
    if inst.state == "DOWN":
        return {"type": process_type, "index": inst.index, "state": "DOWN", "routable": None,
                "uptime": 0, "isolation_segment": inst.isolation_segment,
                "details": inst.details}
    return {"type": process_type, "index": inst.index, "instance_guid": inst.instance_guid,
            "state": inst.state, "routable": inst.state == "RUNNING",
            "usage": {"time": STAMP, "cpu": 0.00038, "cpu_entitlement": 0.011, "mem": 19177472,
                      "disk": 69705728, "log_rate": 0},
            "host": inst.host, "instance_internal_ip": inst.instance_internal_ip,
            "instance_ports": inst.instance_ports, "uptime": inst.uptime,
            "mem_quota": 268435456, "disk_quota": 1073741824, "fds_quota": 16384,
            "isolation_segment": inst.isolation_segment, "log_rate_limit": None,
            "details": inst.details}


def _uid(user: User | str) -> str:
    return user if isinstance(user, str) else user.user_id


def cf_error(status: int, code: int, title: str, detail: str) -> Response:
    return json_response(status, {"errors": [{"code": code, "title": title, "detail": detail}]})


def not_found(kind: str) -> Response:
    return cf_error(404, 10010, "CF-ResourceNotFound", f"{kind} not found")


def paginate(request: Request, base: str, items: list[dict[str, Any]]
             ) -> dict[str, Any] | Response:
    """CC's paginated list shape; ``page``/``per_page`` honoured, other filters kept in links."""
    try:
        page = int(request.param("page") or 1)
        per_page = int(request.param("per_page") or 50)
    except ValueError:
        page = per_page = 0
    if page < 1 or not 1 <= per_page <= 5000:
        return cf_error(400, 10005, "CF-BadQueryParameter",
                        "The query parameter is invalid: Per page must be between 1 and 5000")
    pages = max(1, -(-len(items) // per_page))
    kept = {k: ",".join(v) for k, v in request.query.items() if k not in ("page", "per_page")}

    def link(number: int) -> dict[str, str]:
        return {"href": f"{base}?{urlencode(kept | {'page': number, 'per_page': per_page})}"}

    return {"pagination": {"total_results": len(items), "total_pages": pages,
                           "first": link(1), "last": link(pages),
                           "next": link(page + 1) if page < pages else None,
                           "previous": link(page - 1) if page > 1 else None},
            "resources": items[(page - 1) * per_page: page * per_page]}
