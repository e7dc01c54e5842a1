"""The BOSH resolver against the fake UAA and BOSH Director (real HTTP on loopback).

Each test checks the exact :class:`~pcapd.api.resolve.Resolution` or the :class:`Refusal` a
user would see (its code and its words). The fakes are shared by the module; every test makes
its own deployment, so the tests do not depend on each other. Real sockets do not mix with
Trio's autojump clock, so these run on the real clock with a ``fail_after`` guard.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from pcapd.api.agents import AgentJob
from pcapd.api.bosh import BoshResolver
from pcapd.api.resolve import Unavailable
from pcapd.config import BoshConfig
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, BoshTarget, CaptureOptions, Start
from tests.api.resolving import GUARD, PORT, closed_port_url, refused, resolve, unique
from tests.fakes.director import Deployment, FakeDirector, Instance
from tests.fakes.http import Response, json_response, text_response
from tests.fakes.uaa import BOB, FakeUAA


@dataclass
class Bosh:
    uaa: FakeUAA
    director: FakeDirector

    def token(self, *scopes: str) -> str:
        return self.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", *scopes])

    def deployment(self, *instances: Instance, teams: tuple[str, ...] = ()) -> Deployment:
        return self.director.add_deployment(unique("deployment"), list(teams), list(instances))


@pytest.fixture(scope="module")
def bosh() -> Iterator[Bosh]:
    with FakeUAA() as uaa, FakeDirector(uaa) as director:
        yield Bosh(uaa, director)


def resolver(director: str, http: httpx.AsyncClient) -> BoshResolver:
    return BoshResolver(BoshConfig(director=director), http, PORT)


def start(deployment: Deployment | str, *groups: str, ids: tuple[str, ...] = ()) -> Start:
    name = deployment.name if isinstance(deployment, Deployment) else deployment
    return Start(target=BoshTarget(deployment=name, groups=list(groups), instances=list(ids)),
                 options=CaptureOptions(device="eth0"))


def job(instance: Instance) -> AgentJob:
    origin = f"{instance.job}/{instance.id}"
    return AgentJob(instance.ips[0], PORT, AgentTarget(namespace="host", source=origin),
                    origin=origin)


def names(*instances: Instance) -> list[tuple[str, str]]:
    return [(ip, f"{i.job}/{i.id}") for i in instances for ip in i.ips]


def capture_scopes(bosh: Bosh, *teams: str) -> str:
    return ", ".join(["bosh.admin", f"bosh.{bosh.director.uuid}.admin",
                      *(f"bosh.teams.{t}.admin" for t in teams)])


# --- who gets what ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["bosh.admin", "bosh.{uuid}.admin", "bosh.teams.ops.admin"])
async def test_admins_get_every_vm_of_the_group(bosh: Bosh, http: httpx.AsyncClient,
                                               scope: str) -> None:
    routers = [Instance("router", 0, ips=["10.0.1.3"]),
               Instance("router", 1, ips=["10.0.1.4", "10.1.1.4"])]
    deployment = bosh.deployment(*routers, Instance("diego_cell", 0, ips=["10.0.2.3"]),
                                 teams=("ops", "other"))
    token = bosh.token(scope.format(uuid=bosh.director.uuid))
    result = await resolve(resolver(bosh.director.url, http), start(deployment, "router"), token)
    assert result.jobs == [job(i) for i in routers]
    assert result.jobs[1].address == "10.0.1.4:9494"
    assert result.unavailable == []
    assert result.names == names(*routers)  # every ip of a VM, not only the first
    assert result.target == f"bosh:{deployment.name}/router"
    assert result.identity is not None
    assert (result.identity.user_name, result.identity.client_id) == ("bob", "bosh_cli")
    # the director was asked with the user's own token
    asked = [r for r in bosh.director.requests if deployment.name in r.path]
    assert asked and all(r.authorization and r.status == 200 for r in asked)


async def test_several_groups(bosh: Bosh, http: httpx.AsyncClient) -> None:
    router = Instance("router", 0, ips=["10.0.1.3"])
    cells = [Instance("diego_cell", 0, ips=["10.0.2.3"]),
             Instance("diego_cell", 1, ips=["10.0.2.4"])]
    deployment = bosh.deployment(cells[0], router, cells[1], Instance("api", 0))
    result = await resolve(resolver(bosh.director.url, http),
                           start(deployment, "router", "diego_cell"), bosh.token("bosh.admin"))
    assert result.jobs == [job(cells[0]), job(router), job(cells[1])]  # the director's order
    assert result.names == names(cells[0], router, cells[1])
    assert result.target == f"bosh:{deployment.name}/router,diego_cell"


async def test_only_the_requested_instances(bosh: Bosh, http: httpx.AsyncClient) -> None:
    routers = [Instance("router", n, ips=[f"10.0.1.{n + 3}"]) for n in range(3)]
    deployment = bosh.deployment(*routers)
    result = await resolve(resolver(bosh.director.url, http),
                           start(deployment, "router", ids=(routers[2].id, routers[0].id)),
                           bosh.token("bosh.admin"))
    assert result.jobs == [job(routers[0]), job(routers[2])]
    assert result.names == names(routers[0], routers[2])


async def test_instances_named_as_the_bosh_cli_names_them(bosh: Bosh, http: httpx.AsyncClient
                                                          ) -> None:
    routers = [Instance("router", n, ips=[f"10.0.1.{n + 3}"]) for n in range(3)]
    cell = Instance("diego_cell", 0, ips=["10.0.2.3"])
    deployment = bosh.deployment(*routers, cell)
    result = await resolve(resolver(bosh.director.url, http),
                           start(deployment, "router", "diego_cell",
                                 ids=("router/2", f"diego_cell/{cell.id}")),
                           bosh.token("bosh.admin"))
    assert result.jobs == [job(routers[2]), job(cell)]
    error = await refused(resolver(bosh.director.url, http),
                          start(deployment, "router", ids=("router/7",)), bosh.token("bosh.admin"))
    assert error.code == "INVALID_REQUEST" and "router/7" in error.text


async def test_an_instance_without_a_vm_is_unavailable(bosh: Bosh, http: httpx.AsyncClient
                                                      ) -> None:
    running = Instance("router", 0, ips=["10.0.1.3"])
    no_vm = Instance("router", 1, expects_vm=False)
    deployment = bosh.deployment(running, no_vm)
    result = await resolve(resolver(bosh.director.url, http), start(deployment, "router"),
                           bosh.token("bosh.admin"))
    assert result.jobs == [job(running)]
    assert result.unavailable == [Unavailable(f"router/{no_vm.id}",
                                              f"router/{no_vm.id} has no VM: not captured")]
    assert result.unavailable[0].code == "INSTANCE_UNAVAILABLE"
    assert result.names == names(running)


async def test_a_group_of_errands_resolves_to_no_jobs(bosh: Bosh, http: httpx.AsyncClient
                                                     ) -> None:
    """The resolver reports; the api refuses a capture with nothing to capture."""
    errand = Instance("smoke_tests", 0, expects_vm=False)
    deployment = bosh.deployment(errand, Instance("router", 0))
    result = await resolve(resolver(bosh.director.url, http), start(deployment, "smoke_tests"),
                           bosh.token("bosh.admin"))
    assert (result.jobs, result.names) == ([], [])
    assert [u.origin for u in result.unavailable] == [f"smoke_tests/{errand.id}"]


# --- who may capture --------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["bosh.read", "bosh.{uuid}.read"])
async def test_director_readers_may_not_capture(bosh: Bosh, http: httpx.AsyncClient,
                                                scope: str) -> None:
    deployment = bosh.deployment(Instance("router", 0), teams=("ops",))
    token = bosh.token(scope.format(uuid=bosh.director.uuid))
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"), token)
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == (f"you may not capture deployment {deployment.name}: it takes one of "
                            f"the scopes {capture_scopes(bosh, 'ops')}")


@pytest.mark.parametrize(("scope", "director_wants"), [
    # the director itself refuses a team reader the deployment list (401, code 600000)
    ("bosh.teams.ops.read", ""),
    # the deployment list hides it from another team's admin; its instances are refused
    ("bosh.teams.dev.admin", "bosh.teams.ops.admin, bosh.teams.ops.read, "),
], ids=["team-reader", "another-teams-admin"])
async def test_who_may_not_capture_is_told_which_scopes_it_takes(
        bosh: Bosh, http: httpx.AsyncClient, scope: str, director_wants: str) -> None:
    deployment = bosh.deployment(Instance("router", 0), teams=("ops",))
    token = bosh.token(scope)
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"), token)
    assert refusal.code == "PERMISSION_DENIED"
    uuid_ = bosh.director.uuid
    assert refusal.text == (
        f"you may not capture deployment {deployment.name}: it takes one of the scopes "
        f"bosh.admin, bosh.{uuid_}.admin or bosh.teams.<team>.admin of a team it belongs to "
        f"(the BOSH director says: Require one of the scopes: bosh.admin, bosh.{uuid_}.admin, "
        f"{director_wants}bosh.read, bosh.{uuid_}.read)")


async def test_a_team_admin_of_a_deployment_without_teams(bosh: Bosh, http: httpx.AsyncClient
                                                         ) -> None:
    deployment = bosh.deployment(Instance("router", 0))
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"),
                            bosh.token("bosh.teams.ops.admin", "bosh.read"))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == (f"you may not capture deployment {deployment.name}: it takes one of "
                            f"the scopes {capture_scopes(bosh)}")


async def test_another_directors_admin_may_not_capture(bosh: Bosh, http: httpx.AsyncClient
                                                      ) -> None:
    deployment = bosh.deployment(Instance("router", 0))
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"),
                            bosh.token(f"bosh.{uuid.uuid4()}.admin"))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text.startswith(f"you may not capture deployment {deployment.name}: it takes "
                                   f"one of the scopes bosh.admin, bosh.{bosh.director.uuid}.admin")


# --- names the director does not know ---------------------------------------------------------


async def test_an_unknown_deployment(bosh: Bosh, http: httpx.AsyncClient) -> None:
    name = unique("nope")
    refusal = await refused(resolver(bosh.director.url, http), start(name, "router"),
                            bosh.token("bosh.admin"))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == f"deployment '{name}' doesn't exist (-d): check `bosh deployments`"


async def test_an_unknown_group(bosh: Bosh, http: httpx.AsyncClient) -> None:
    deployment = bosh.deployment(Instance("router", 0), Instance("diego_cell", 0),
                                 Instance("router", 1))
    refusal = await refused(resolver(bosh.director.url, http),
                            start(deployment, "router", "routr"), bosh.token("bosh.admin"))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == (f"deployment {deployment.name} has no instance group 'routr' (-g); "
                            "it has diego_cell, router")
    empty = bosh.deployment()
    refusal = await refused(resolver(bosh.director.url, http), start(empty, "router"),
                            bosh.token("bosh.admin"))
    assert refusal.text == (f"deployment {empty.name} has no instance group 'router' (-g); "
                            "it has none")


async def test_an_unknown_instance_id(bosh: Bosh, http: httpx.AsyncClient) -> None:
    router, cell = Instance("router", 0), Instance("diego_cell", 0)
    deployment = bosh.deployment(router, cell)
    bosh_resolver = resolver(bosh.director.url, http)
    token = bosh.token("bosh.admin")
    for wanted in ("no-such-id", cell.id):  # an id of another group is not one of the group's
        refusal = await refused(bosh_resolver, start(deployment, "router", ids=(router.id, wanted)),
                                token)
        assert refusal.code == "INVALID_REQUEST"
        assert refusal.text == (f"no instance {wanted} in group(s) router of {deployment.name}; "
                                f"it has router/0 ({router.id}) (`bosh -d {deployment.name} "
                                "instances`)")  # what there is to choose from


# --- tokens -----------------------------------------------------------------------------------

LOGIN_AGAIN = re.escape("log in again (cf login / bosh log-in)")


@pytest.mark.parametrize(("forge", "words"), [
    pytest.param(lambda uaa: uaa.issue_refresh(BOB, client_id="bosh_cli"),
                 rf"a refresh token is not an access token: send the access token \(the CLI "
                 rf"refreshes it for you; {LOGIN_AGAIN}\)", id="refresh-token"),
    pytest.param(lambda uaa: uaa.expired(BOB, client_id="bosh_cli"),
                 rf"the token expired at (\d{{4}}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC: "
                 rf"{LOGIN_AGAIN}", id="expired"),
    pytest.param(lambda uaa: uaa.forge_unknown_key(BOB, client_id="bosh_cli"),
                 rf"the token's signature does not match: it was altered, or signed by another "
                 rf"key; {LOGIN_AGAIN}", id="foreign-key"),
    pytest.param(lambda uaa: uaa.forge_hmac(BOB, client_id="bosh_cli"),
                 "unsupported signing algorithm HS256: only RS256", id="alg-confusion"),
])
async def test_bad_tokens_are_unauthenticated_and_never_reach_the_director(
        bosh: Bosh, http: httpx.AsyncClient, forge: object, words: str) -> None:
    deployment = bosh.deployment(Instance("router", 0))
    token: str = forge(bosh.uaa)  # type: ignore[operator]
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"), token)
    assert refusal.code == "UNAUTHENTICATED"
    assert re.fullmatch(words, refusal.text), refusal.text
    for part in token.split("."):
        assert not part or part not in refusal.text
    assert not any(r.path.startswith("/deployments") and r.authorization
                   and deployment.name in r.path for r in bosh.director.requests)


async def test_no_token_is_unauthenticated(bosh: Bosh, http: httpx.AsyncClient) -> None:
    before = len(bosh.director.requests)
    refusal = await refused(resolver(bosh.director.url, http), start("cf", "router"), None)
    assert refusal.code == "UNAUTHENTICATED"
    assert refusal.text == "no token: log in with `bosh log-in` first"
    assert len(bosh.director.requests) == before


async def test_a_token_the_director_refuses(bosh: Bosh, http: httpx.AsyncClient) -> None:
    bosh.director.inject("/deployments", text_response(
        401, "Not authorized: '/deployments'\n",
        {"WWW-Authenticate": 'Basic realm="BOSH Director"'}))
    refusal = await refused(resolver(bosh.director.url, http), start("cf", "router"),
                            bosh.token("bosh.admin"))
    assert refusal.code == "UNAUTHENTICATED"
    assert refusal.text == "the BOSH director refused the token: log in again with `bosh log-in`"


async def test_a_renewed_token_is_verified_the_same_way(bosh: Bosh, http: httpx.AsyncClient
                                                       ) -> None:
    """... and authorized again for the same deployment (issue 12, hole 6)."""
    bosh_resolver = resolver(bosh.director.url, http)
    request = start(bosh.deployment(Instance("router", 0, ips=["10.0.1.3"]),
                                    teams=("team-a",)), "router")
    with trio.fail_after(GUARD):
        identity = await bosh_resolver.verify(request, bosh.token("bosh.admin"))
        assert identity.user_id == BOB.user_id and "bosh.admin" in identity.scopes
        with pytest.raises(Refusal) as info:
            await bosh_resolver.verify(request, bosh.uaa.issue_refresh(BOB, client_id="bosh_cli"))
        assert info.value.code == "UNAUTHENTICATED" and "refresh token" in info.value.text
        await bosh_resolver.verify(request, bosh.token("bosh.teams.team-a.admin"))
        with pytest.raises(Refusal) as info:
            await bosh_resolver.verify(request, bosh.token("bosh.teams.team-a.read"))
    assert info.value.code == "PERMISSION_DENIED" and "you may not capture" in info.value.text


# --- the director is unwell -------------------------------------------------------------------


async def test_a_director_with_basic_auth(bosh: Bosh, http: httpx.AsyncClient) -> None:
    with FakeDirector(bosh.uaa) as director:
        with trio.fail_after(GUARD):
            info = (await http.get(director.url + "/info")).json()
        info["user_authentication"] = {"type": "basic", "options": {}}
        director.inject("/info", json_response(200, info), times=None)
        refusal = await refused(resolver(director.url, http), start("cf", "router"),
                                bosh.token("bosh.admin"))
        assert refusal.code == "START_CAPTURE_FAILED"
        assert refusal.text == (f"the BOSH director at {director.url} uses basic "
                                "authentication; pcapd needs UAA")


@pytest.mark.parametrize("answer", [
    json_response(200, {"name": "not-a-director"}),
    json_response(200, {"uuid": "u", "user_authentication": {"type": "uaa", "options": {}}}),
    json_response(200, ["not", "info"]),
    Response(404, b"Endpoint '/info' not found.", "text/plain"),
])
async def test_an_info_without_uuid_or_uaa(bosh: Bosh, http: httpx.AsyncClient,
                                          answer: Response) -> None:
    deployment = bosh.deployment(Instance("router", 0))
    bosh_resolver = resolver(bosh.director.url, http)
    bosh.director.inject("/info", answer)
    refusal = await refused(bosh_resolver, start(deployment, "router"), bosh.token("bosh.admin"))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text == (f"the BOSH director at {bosh.director.url} answered {answer.status} "
                            "without the uuid and UAA of its /info (bosh.director)")
    # discovery is tried again on the next request
    result = await resolve(bosh_resolver, start(deployment, "router"), bosh.token("bosh.admin"))
    assert len(result.jobs) == 1


async def test_an_unreachable_director(bosh: Bosh, http: httpx.AsyncClient) -> None:
    url = closed_port_url()
    refusal = await refused(resolver(url, http), start("cf", "router"), bosh.token("bosh.admin"))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text.startswith(f"cannot reach the BOSH director at {url}: ConnectError")


async def test_a_director_error_is_not_the_users_fault(bosh: Bosh, http: httpx.AsyncClient
                                                      ) -> None:
    deployment = bosh.deployment(Instance("router", 0))
    bosh.director.inject(f"/deployments/{deployment.name}/instances", json_response(
        500, {"code": 100, "description": "Database is locked"}))
    refusal = await refused(resolver(bosh.director.url, http), start(deployment, "router"),
                            bosh.token("bosh.admin"))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text == "the BOSH director answered 500 (Database is locked)"
