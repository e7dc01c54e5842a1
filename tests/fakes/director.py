"""A fake BOSH Director: ``/info``, deployments and their instances, with the Director's
permission rules (``permission_authorizer.rb``) and its three kinds of error (reference §3).

Order of checks on ``/deployments/:name/…`` as the Director does it: authentication (401 text,
``WWW-Authenticate: Basic``), then the lookup (404 ``code 70000``), then the scope check
(401 ``code 600000``). Refresh tokens (``jti`` ending ``-r``) are not access tokens.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import trustme

from .http import FakeServer, Request, Response, json_response, text_response
from .uaa import FakeUAA


@dataclass
class Instance:
    job: str
    index: int
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    az: str | None = "z1"
    agent_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    cid: str | None = None  # default: derived from agent_id (None when expects_vm is False)
    vm_created_at: str | None = "2024-01-01T00:00:00Z"
    expects_vm: bool = True

    def __post_init__(self) -> None:
        if not self.expects_vm:
            self.agent_id = self.cid = self.vm_created_at = None
            self.ips = []
        elif self.cid is None:
            self.cid = f"vm-{self.agent_id}"

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "cid": self.cid, "job": self.job,
                "index": self.index, "id": self.id, "az": self.az, "ips": list(self.ips),
                "vm_created_at": self.vm_created_at, "expects_vm": self.expects_vm}


@dataclass
class Deployment:
    name: str
    teams: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    releases: list[dict[str, str]] = field(
        default_factory=lambda: [{"name": "pcap", "version": "1.0.0"}])
    stemcells: list[dict[str, str]] = field(
        default_factory=lambda: [{"name": "bosh-warden-boshlite-ubuntu-jammy-go_agent",
                                  "version": "1.8"}])
    cloud_config: str = "latest"
    locked: bool = False


class FakeDirector(FakeServer):
    name = "director"

    def __init__(self, uaa: FakeUAA, *, tls: trustme.CA | None = None,
                 director_name: str = "fake-director") -> None:
        super().__init__(tls=tls)
        self.uaa = uaa
        self.uuid = str(uuid.uuid4())
        self.director_name = director_name
        self.version = "280.1.0 (00000000)"
        self.deployments: dict[str, Deployment] = {}

    # -- builder API ------------------------------------------------------------------------------
    def add_deployment(self, name: str, teams: list[str] | None = None,
                       instances: list[Instance] | None = None) -> Deployment:
        with self.lock:
            deployment = Deployment(name, list(teams or []), list(instances or []))
            self.deployments[name] = deployment
            return deployment

    def set_instances(self, name: str, instances: list[Instance]) -> None:
        with self.lock:
            self.deployments[name].instances = list(instances)

    def remove_deployment(self, name: str) -> None:
        with self.lock:
            del self.deployments[name]

    # -- authorization (permission_authorizer.rb) --------------------------------------------------
    def _admin_scopes(self) -> list[str]:
        return ["bosh.admin", f"bosh.{self.uuid}.admin"]

    def _read_scopes(self) -> list[str]:
        return ["bosh.read", f"bosh.{self.uuid}.read"]

    def _deployment_read_scopes(self, deployment: Deployment) -> list[str]:
        return (self._admin_scopes() + [f"bosh.teams.{t}.admin" for t in deployment.teams]
                + [f"bosh.teams.{t}.read" for t in deployment.teams] + self._read_scopes())

    def _may_list(self, scopes: set[str]) -> bool:
        return bool(scopes & set(self._admin_scopes() + self._read_scopes())) or any(
            re.fullmatch(r"bosh\.teams\.[^.]+\.admin", s) for s in scopes)

    def _claims(self, request: Request) -> dict[str, Any] | None:
        token = request.bearer()
        return self.uaa.verify(token) if token else None

    # -- HTTP -------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if (request.method, path) == ("GET", "/info"):
            return json_response(200, self._info(request))
        if request.method == "GET" and path == "/deployments":
            return self._list(request, path)
        match = re.fullmatch(r"/deployments/([^/]+)(?:/(instances|vms))?", path)
        if request.method != "GET" or match is None:
            return text_response(404, f"Endpoint '{path}' not found.")
        claims = self._claims(request)
        if claims is None:
            return not_authorized(path)
        name, what = match.groups()
        with self.lock:
            deployment = self.deployments.get(name)
            if deployment is None:
                return director_error(404, 70000, f"Deployment '{name}' doesn't exist")
            wanted = self._deployment_read_scopes(deployment)
            if not set(claims.get("scope", [])) & set(wanted):
                return director_error(
                    401, 600000, f"Require one of the scopes: {', '.join(wanted)}")
            if what is None:
                return json_response(200, {"manifest": self._manifest(deployment)})
            if what == "instances":
                return json_response(200, [i.to_json() for i in deployment.instances])
            return json_response(200, [
                {k: v for k, v in i.to_json().items() if k != "expects_vm"}
                | {"active": True, "permanent_nats_credentials": False}
                for i in deployment.instances if i.cid is not None])

    def _info(self, request: Request) -> dict[str, Any]:
        user = None
        if request.header("Authorization") is not None and (claims := self._claims(request)):
            user = claims.get("user_name") or claims.get("client_id")
        return {
            "name": self.director_name, "uuid": self.uuid, "version": self.version,
            "user": user, "cpi": "warden_cpi", "stemcell_os": "ubuntu-jammy",
            "stemcell_version": "1.8",
            "user_authentication": {"type": "uaa", "options": {
                "url": self.uaa.url, "urls": [self.uaa.url]}},
            "features": {"local_dns": {"status": True, "extras": {"domain_name": "bosh"}},
                         "snapshots": {"status": False},
                         "config_server": {"status": True, "extras": {
                             "urls": ["https://127.0.0.1:8844/api/"]}}}}

    def _list(self, request: Request, path: str) -> Response:
        claims = self._claims(request)
        if claims is None:
            return not_authorized(path)
        scopes = set(claims.get("scope", []))
        if not self._may_list(scopes):
            wanted = self._admin_scopes() + self._read_scopes()
            return director_error(401, 600000, f"Require one of the scopes: {', '.join(wanted)}")
        excluded = {flag for flag in ("configs", "releases", "stemcells", "lock")
                    if request.param(f"exclude_{flag}") == "true"}
        with self.lock:
            readable = [d for d in self.deployments.values()
                        if scopes & set(self._deployment_read_scopes(d))]
            body = []
            for d in sorted(readable, key=lambda d: d.name):
                entry: dict[str, Any] = {"name": d.name, "teams": list(d.teams)}
                if "configs" not in excluded:
                    entry["cloud_config"] = d.cloud_config
                if "stemcells" not in excluded:
                    entry["stemcells"] = list(d.stemcells)
                if "releases" not in excluded:
                    entry["releases"] = list(d.releases)
                if "lock" not in excluded:
                    entry["locked"] = d.locked
                body.append(entry)
        return json_response(200, body)

    @staticmethod
    def _manifest(deployment: Deployment) -> str:
        groups = sorted({i.job for i in deployment.instances})
        lines = [f"name: {deployment.name}", "instance_groups:"]
        for group in groups:
            count = sum(1 for i in deployment.instances if i.job == group)
            lines += [f"- name: {group}", f"  instances: {count}"]
        return "---\n" + "\n".join(lines) + "\n"


def not_authorized(path: str) -> Response:
    return text_response(401, f"Not authorized: '{path}'\n",
                         {"WWW-Authenticate": 'Basic realm="BOSH Director"'})


def director_error(status: int, code: int, description: str) -> Response:
    return json_response(status, {"code": code, "description": description})
