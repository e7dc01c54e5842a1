"""BOSH targets: who may capture a deployment's VMs, and where they are.

The director is asked with the user's own token: ``GET /deployments`` gives the deployments the
user may read and their teams, ``GET /deployments/:name/instances`` the VMs. pcapd then applies
its stricter rule — admin of the director or of one of the deployment's teams
(:func:`pcapd.authz.bosh_may_capture`). Each VM's agent is at ``ips[0]:agents.port`` and captures
its own interface (the host namespace).
"""

from __future__ import annotations

from typing import Any

import httpx

from pcapd.api.agents import AgentJob
from pcapd.api.resolve import Resolution, UaaPlatform, Unavailable, get_json
from pcapd.authz import bosh_may_capture
from pcapd.config import BoshConfig
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, BoshTarget, Start
from pcapd.tokens import Identity
from pcapd.urls import InvalidSegment, join


class BoshResolver(UaaPlatform):
    """Resolves ``bosh`` targets against one director (and its UAA)."""

    login = "bosh log-in"
    platform = "BOSH"
    setting = "bosh.tokens"

    def __init__(self, config: BoshConfig, http: httpx.AsyncClient, agents_port: int) -> None:
        super().__init__(http, config.tokens)
        self.config = config
        self.agents_port = agents_port
        self.director = config.director.rstrip("/")

    async def _find_uaa(self) -> tuple[str, str]:
        """The director's uuid and its UAA, from ``/info``."""
        status, info = await get_json(self.http, self.director + "/info", token=None,
                                      what="the BOSH director")
        try:
            auth = info["user_authentication"]
            if auth["type"] != "uaa":
                raise Refusal("START_CAPTURE_FAILED", f"the BOSH director at {self.director} "
                              f"uses {auth['type']} authentication; pcapd needs UAA")
            return str(info["uuid"]), str(auth["options"]["url"])
        except (TypeError, KeyError):
            raise Refusal("START_CAPTURE_FAILED", f"the BOSH director at {self.director} "
                          f"answered {status} without the uuid and UAA of its /info "
                          "(bosh.director)") from None

    async def resolve(self, start: Start, token: str | None) -> Resolution:
        target = start.target
        assert isinstance(target, BoshTarget)
        identity = await self.identify(token)
        assert token is not None
        uuid, _ = await self._discover()
        name = target.deployment
        status, listed = await get_json(self.http, f"{self.director}/deployments", token=token,
                                        what="the BOSH director")
        self._check(status, listed, name, uuid)
        teams = next((d.get("teams") or [] for d in listed or []
                      if isinstance(d, dict) and d.get("name") == name), None)
        try:
            url = join(self.director, "deployments", (name, "the deployment (-d)"), "instances")
        except InvalidSegment as exc:
            raise Refusal("INVALID_REQUEST", f"{exc}: nothing was captured") from None
        status, instances = await get_json(self.http, url, token=token,
                                           what="the BOSH director")
        self._check(status, instances, name, uuid)
        if teams is None:  # readable instances of an unlisted deployment: treat as no teams
            teams = []
        decision = bosh_may_capture(name, identity.scopes, uuid, teams)
        if not decision.allowed:
            raise Refusal("PERMISSION_DENIED", decision.reason)
        return self._select(target, instances or [], identity)

    @staticmethod
    def _check(status: int, body: Any, deployment: str, uuid: str) -> None:
        if 200 <= status < 300:
            return
        code = body.get("code") if isinstance(body, dict) else None
        description = body.get("description", "") if isinstance(body, dict) else ""
        if status == 404 and code == 70000:
            raise Refusal("INVALID_REQUEST", f"deployment {deployment!r} doesn't exist "
                          "(-d): check `bosh deployments`")
        if status == 401 and code == 600000:
            # The director lists the scopes that let one *read* the deployment; say what a
            # capture takes (its teams are unknown: the user may not list them), then its words.
            raise Refusal("PERMISSION_DENIED", f"you may not capture deployment {deployment}: "
                          f"it takes one of the scopes bosh.admin, bosh.{uuid}.admin or "
                          "bosh.teams.<team>.admin of a team it belongs to (the BOSH director "
                          f"says: {description})")
        if status == 401:
            raise Refusal("UNAUTHENTICATED", "the BOSH director refused the token: log in "
                          "again with `bosh log-in`")
        raise Refusal("START_CAPTURE_FAILED", f"the BOSH director answered {status}"
                      + (f" ({description})" if description else ""))

    def _select(self, target: BoshTarget, instances: list[Any],
                identity: Identity) -> Resolution:
        rows = [i for i in instances if isinstance(i, dict)]
        groups = {str(i.get("job")) for i in rows}
        for group in target.groups:
            if group not in groups:
                raise Refusal("INVALID_REQUEST", f"deployment {target.deployment} has no "
                              f"instance group {group!r} (-g); it has "
                              f"{', '.join(sorted(groups)) or 'none'}")
        chosen = [i for i in rows if i.get("job") in target.groups]
        if target.instances:
            known = set().union(*(_instance_names(i) for i in chosen))
            for wanted in target.instances:
                if wanted not in known:
                    raise Refusal("INVALID_REQUEST", f"no instance {wanted} in group(s) "
                                  f"{', '.join(target.groups)} of {target.deployment}; it has "
                                  f"{_listed(chosen)} (`bosh -d {target.deployment} "
                                  "instances`)")
            chosen = [i for i in chosen if _instance_names(i) & set(target.instances)]
        jobs: list[AgentJob] = []
        unavailable: list[Unavailable] = []
        names: list[tuple[str, str]] = []
        for instance in chosen:
            origin = f"{instance.get('job')}/{instance.get('id')}"
            ips = instance.get("ips") or []
            if not ips:
                unavailable.append(Unavailable(origin, f"{origin} has no VM: not captured"))
                continue
            jobs.append(AgentJob(str(ips[0]), self.agents_port,
                                 AgentTarget(namespace="host", source=origin), origin=origin))
            names.extend((str(ip), origin) for ip in ips)
        groups_text = ",".join(target.groups)
        return Resolution(jobs, unavailable, names, identity,
                          target=f"bosh:{target.deployment}/{groups_text}")


def _listed(instances: list[dict[str, Any]], most: int = 10) -> str:
    """``router/0 (d55b…), router/1 (8f3a…)``: the instances a user could have named."""
    named = sorted((str(i.get("job")), _index(i), str(i.get("id"))) for i in instances)
    shown = ", ".join(f"{group}/{index} ({uid})" if index >= 0 else f"{group}/{uid}"
                      for group, index, uid in named[:most])
    more = f" and {len(named) - most} more" if len(named) > most else ""
    return (shown + more) or "none"


def _index(instance: dict[str, Any]) -> int:
    index = instance.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else -1


def _instance_names(instance: dict[str, Any]) -> set[str]:
    """How a user may name an instance, as the bosh CLI takes it: ``ID``, ``GROUP/ID`` and
    ``GROUP/INDEX``."""
    group, uid, index = instance.get("job"), str(instance.get("id")), instance.get("index")
    names = {uid, f"{group}/{uid}"}
    if isinstance(index, int) and not isinstance(index, bool):
        names.add(f"{group}/{index}")
    return names
