"""The Cloud Foundry resolver against the fake UAA and Cloud Controller (real HTTP on loopback).

Each test checks the exact :class:`~pcapd.api.resolve.Resolution` or the :class:`Refusal` a
user would see (its code and its words). The fakes are shared by the module; every test makes
its own space and app, so the tests do not depend on each other. Real sockets do not mix with
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
from pcapd.api.auth import IdentityProviderUnavailable
from pcapd.api.cf import CfResolver
from pcapd.api.resolve import Unavailable
from pcapd.config import CfConfig
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, CaptureOptions, CfTarget, Start
from tests.api.resolving import GUARD, PORT, closed_port_url, refused, resolve, unique
from tests.fakes.cloud_controller import FakeCloudController, Instance, Org, Space
from tests.fakes.http import Response, json_response
from tests.fakes.uaa import ALICE, FakeUAA, User, make_user

SENSITIVE = "capturing needs the right to read its sensitive data (Space Developer of its " \
            "space, or admin)"


@dataclass
class Cf:
    uaa: FakeUAA
    cc: FakeCloudController
    org: Org


@pytest.fixture(scope="module")
def cf() -> Iterator[Cf]:
    with FakeUAA() as uaa, FakeCloudController(uaa) as cc:
        yield Cf(uaa, cc, cc.add_org("pcapd-org"))


def dev_space(cf: Cf, user: User = ALICE, role: str = "developer", *,
              cc: FakeCloudController | None = None, allow_ssh: bool = True) -> Space:
    """A new space in which ``user`` has ``role``."""
    cc = cc or cf.cc
    space = cc.add_space(cf.org, unique("space"), allow_ssh=allow_ssh)
    cc.grant(user, role, space)
    return space


def resolver(api: str, http: httpx.AsyncClient, *, ssh: bool = False) -> CfResolver:
    return CfResolver(CfConfig(api=api, require_ssh_enabled=ssh), http, agents_port=PORT)


def start(app: str, space: Space | str | None = None, instances: list[int] | None = None,
          process_type: str = "web") -> Start:
    space_guid = space.guid if isinstance(space, Space) else space
    return Start(target=CfTarget(app=app, space=space_guid, instances=instances or [],
                                 process_type=process_type),
                 options=CaptureOptions(device="eth0"))


def job(name: str, app_guid: str, instance: Instance) -> AgentJob:
    origin = f"{name}/{instance.index}"
    return AgentJob(instance.host, PORT, AgentTarget(
        namespace=instance.instance_guid, app_guid=app_guid, source=origin), origin=origin)


def v3_requests(cc: FakeCloudController) -> int:
    return sum(1 for r in cc.requests if r.path.startswith("/v3/"))


# --- who gets what ----------------------------------------------------------------------------


async def test_a_developer_gets_every_instance_of_the_app_by_name(
        cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    instances = [Instance(0, host="10.0.16.10"), Instance(1, host="10.0.16.11")]
    app = cf.cc.add_app(space, unique("app"), instances=instances)
    result = await resolve(resolver(cf.cc.url, http), start(app.name, space),
                           cf.uaa.issue(ALICE))
    assert result.jobs == [job(app.name, app.guid, i) for i in instances]
    assert result.jobs[1].address == "10.0.16.11:9494"
    assert result.jobs[0].target.namespace == instances[0].instance_guid
    assert result.unavailable == []
    assert result.names == [(i.instance_internal_ip, f"{app.name}/{i.index}") for i in instances]
    assert result.target == f"cf:{cf.org.name}/{space.name}/{app.name}"  # as captures list shows
    assert result.identity is not None
    assert (result.identity.user_name, result.identity.user_id) == ("alice", ALICE.user_id)
    # every Cloud Controller call about the app carried the user's own token
    about_app = [r for r in cf.cc.requests if app.guid in r.path]
    assert about_app and all(r.authorization and r.status == 200 for r in about_app)


async def test_an_app_guid_needs_no_space(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), instances=2)
    instances = app.processes["web"].instances
    result = await resolve(resolver(cf.cc.url, http), start(app.guid), cf.uaa.issue(ALICE))
    assert result.jobs == [job(app.name, app.guid, i) for i in instances]
    assert result.target == f"cf:{cf.org.name}/{space.name}/{app.name}"  # not by guid


async def test_only_the_requested_instances(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), instances=4)
    instances = app.processes["web"].instances
    result = await resolve(resolver(cf.cc.url, http),
                           start(app.name, space, instances=[3, 1, 3]), cf.uaa.issue(ALICE))
    assert result.jobs == [job(app.name, app.guid, instances[1]),
                           job(app.name, app.guid, instances[3])]
    assert [name for _, name in result.names] == [f"{app.name}/1", f"{app.name}/3"]


async def test_a_missing_index_is_the_users_mistake(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), instances=2)
    with pytest.raises(Refusal) as refused:
        await resolve(resolver(cf.cc.url, http), start(app.name, space, instances=[0, 5]),
                      cf.uaa.issue(ALICE))
    assert refused.value.code == "INVALID_REQUEST"
    assert refused.value.text == (f"{app.name} has no instance 5 (--instance); it has 0, 1 "
                                  f"(`cf app {app.name}`)")


async def test_instances_that_do_not_run_are_unavailable(
        cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    instances = [Instance(0), Instance(1, state="DOWN"), Instance(2, state="CRASHED"),
                 Instance(3, state="STARTING", host=""), Instance(4, state="STARTING"),
                 Instance(5, state="STOPPING")]
    app = cf.cc.add_app(space, unique("app"), instances=instances)
    result = await resolve(resolver(cf.cc.url, http), start(app.name, space),
                           cf.uaa.issue(ALICE))
    # a STARTING instance with a cell has its container: it is captured
    assert result.jobs == [job(app.name, app.guid, instances[0]),
                           job(app.name, app.guid, instances[4])]
    assert result.unavailable == [
        Unavailable(f"{app.name}/1", f"{app.name}/1 is DOWN: not captured"),
        Unavailable(f"{app.name}/2", f"{app.name}/2 is CRASHED: not captured"),
        Unavailable(f"{app.name}/3", f"{app.name}/3 is STARTING: not captured"),
        Unavailable(f"{app.name}/5", f"{app.name}/5 is STOPPING: not captured"),
    ]
    assert [name for _, name in result.names] == [f"{app.name}/0", f"{app.name}/4"]


async def test_an_app_whose_instances_are_all_down_resolves_to_no_jobs(
        cf: Cf, http: httpx.AsyncClient) -> None:
    """The resolver reports; the api refuses a capture with nothing to capture."""
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"),
                        instances=[Instance(0, state="DOWN"), Instance(1, state="DOWN")])
    result = await resolve(resolver(cf.cc.url, http), start(app.name, space),
                           cf.uaa.issue(ALICE))
    assert result.jobs == [] and result.names == []
    assert [u.text for u in result.unavailable] == [
        f"{app.name}/0 is DOWN: not captured", f"{app.name}/1 is DOWN: not captured"]


async def test_a_stopped_app_has_no_instances(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), instances=0, state="STOPPED")
    result = await resolve(resolver(cf.cc.url, http), start(app.name, space),
                           cf.uaa.issue(ALICE))
    assert (result.jobs, result.unavailable) == ([], [])


async def test_another_process_type(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), instances=1)
    worker = cf.cc.add_process(app, "worker", instances=[Instance(0, host="10.0.16.20")])
    result = await resolve(resolver(cf.cc.url, http),
                           start(app.name, space, process_type="worker"), cf.uaa.issue(ALICE))
    assert result.jobs == [job(app.name, app.guid, worker.instances[0])]  # the app's guid


async def test_an_unknown_process_type_is_invalid(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http),
                            start(app.name, space, process_type="worker"), cf.uaa.issue(ALICE))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == (f"app {app.name} has no process of type 'worker' (--process-type); "
                            "it has web")  # what there is to choose from


# --- not found --------------------------------------------------------------------------------


async def test_an_unknown_app_is_not_found(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    refusal = await refused(resolver(cf.cc.url, http), start("no-such-app", space),
                            cf.uaa.issue(ALICE))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == ("app no-such-app not found in the targeted space (or you may not "
                            "see it): check `cf apps`")


async def test_an_app_name_without_a_space_is_not_found(
        cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http), start(app.name), cf.uaa.issue(ALICE))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == (f"app {app.name} not found (name an app guid, or target a space "
                            "with `cf target -s SPACE`)")


async def test_an_unknown_app_guid_is_not_found(cf: Cf, http: httpx.AsyncClient) -> None:
    guid = str(uuid.uuid4())
    refusal = await refused(resolver(cf.cc.url, http), start(guid), cf.uaa.issue(ALICE))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text == f"app {guid} not found (or you may not see it)"


async def test_an_app_in_another_space_is_not_found(cf: Cf, http: httpx.AsyncClient) -> None:
    mine = dev_space(cf)
    theirs = dev_space(cf, make_user(unique("someone")))
    app = cf.cc.add_app(theirs, unique("app"))
    cf_resolver = resolver(cf.cc.url, http)
    token = cf.uaa.issue(ALICE)
    for named, space in ((app.name, mine), (app.name, theirs), (app.guid, None),
                         (app.guid, mine)):
        refusal = await refused(cf_resolver, start(named, space), token)
        assert refusal.code == "INVALID_REQUEST"
        assert refusal.text.startswith(f"app {named} not found"), refusal.text


async def test_names_are_matched_exactly(cf: Cf, http: httpx.AsyncClient) -> None:
    """Cloud Controller splits its ``names`` filter at commas: ``b,a`` must not capture a."""
    space = dev_space(cf)
    a = cf.cc.add_app(space, unique("a"))
    b = cf.cc.add_app(space, unique("b"))
    refusal = await refused(resolver(cf.cc.url, http), start(f"{b.name},{a.name}", space),
                            cf.uaa.issue(ALICE))
    assert refusal.code == "INVALID_REQUEST"
    assert refusal.text.startswith(f"app {b.name},{a.name} not found in the targeted space")


# --- who may capture ------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["auditor", "manager", "supporter"])
async def test_other_space_roles_may_not_capture(cf: Cf, http: httpx.AsyncClient,
                                                 role: str) -> None:
    user = make_user(unique(role))
    space = dev_space(cf, user, role)
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space),
                            cf.uaa.issue(user))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == f"you may not capture app {app.name}: {SENSITIVE}"


async def test_an_org_manager_may_not_capture(cf: Cf, http: httpx.AsyncClient) -> None:
    user = make_user(unique("org-manager"))
    org = cf.cc.add_org(unique("org"))
    space = cf.cc.add_space(org, unique("space"))
    cf.cc.grant_org(user, "manager", org)
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space),
                            cf.uaa.issue(user))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == f"you may not capture app {app.name}: {SENSITIVE}"


@pytest.mark.parametrize("scope", ["cloud_controller.admin", "cloud_controller.admin_read_only"])
async def test_admins_may_capture_any_app(cf: Cf, http: httpx.AsyncClient, scope: str) -> None:
    admin = make_user(unique("admin"))  # no role in any space
    space = dev_space(cf, make_user(unique("someone")))
    app = cf.cc.add_app(space, unique("app"), instances=1)
    token = cf.uaa.issue(admin, scopes=["openid", scope])
    result = await resolve(resolver(cf.cc.url, http), start(app.name, space), token)
    assert result.jobs == [job(app.name, app.guid, app.processes["web"].instances[0])]
    assert result.identity is not None and result.identity.user_name == admin.user_name


async def test_a_global_auditor_may_not_capture(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf, make_user(unique("someone")))
    app = cf.cc.add_app(space, unique("app"))
    token = cf.uaa.issue(make_user(unique("auditor")),
                         scopes=["openid", "cloud_controller.global_auditor"])
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space), token)
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == f"you may not capture app {app.name}: {SENSITIVE}"


async def test_a_token_cloud_controller_does_not_accept(
        cf: Cf, http: httpx.AsyncClient) -> None:
    """Signed by the platform's UAA, but not for Cloud Controller (a bosh_cli token): the api's
    acceptance rule refuses it before Cloud Controller is asked (issue 12, hole 3)."""
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    cf_resolver = resolver(cf.cc.url, http)
    bosh = cf.uaa.issue(ALICE, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    refusal = await refused(cf_resolver, start(app.name, space), bosh)
    assert refusal.code == "UNAUTHENTICATED"
    assert refusal.text == ("the token was issued for openid, bosh, bosh_cli, not for Cloud "
                            "Foundry (cloud_controller): log in with `cf login` and try again")
    write_only = cf.uaa.issue(ALICE, scopes=["openid", "cloud_controller.write"])
    refusal = await refused(cf_resolver, start(app.name, space), write_only)
    assert refusal.code == "UNAUTHENTICATED"
    assert refusal.text.startswith("the token carries none of the scopes Cloud Foundry needs "
                                   "here (cloud_controller.read, ")


async def test_a_process_of_another_app_is_never_captured(
        cf: Cf, http: httpx.AsyncClient) -> None:
    """Whatever the path, the process must be the authorized app's (issue 12, hole 2): a
    Cloud Controller (or a path trick) answering with app B's process is refused."""
    space = dev_space(cf)
    app_a = cf.cc.add_app(space, unique("app"))
    app_b = cf.cc.add_app(space, unique("app"))
    with trio.fail_after(GUARD):
        b_web = (await http.get(f"{cf.cc.url}/v3/apps/{app_b.guid}/processes/web", headers={
            "Authorization": f"bearer {cf.uaa.issue(ALICE)}"})).json()
    cf.cc.inject(f"/v3/apps/{app_a.guid}/processes/web", json_response(200, b_web))
    refusal = await refused(resolver(cf.cc.url, http), start(app_a.name, space),
                            cf.uaa.issue(ALICE))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == (f"Cloud Controller answered for --process-type 'web' with a "
                            f"process that is not app {app_a.name}'s: nothing was captured")


# --- cf.require_ssh_enabled -----------------------------------------------------------------


async def test_ssh_disabled_globally(cf: Cf, http: httpx.AsyncClient) -> None:
    with FakeCloudController(cf.uaa) as cc:
        cc.global_ssh = False
        space = dev_space(cf, cc=cc)
        app = cc.add_app(space, unique("app"))
        refusal = await refused(resolver(cc.url, http, ssh=True), start(app.name, space),
                                cf.uaa.issue(ALICE))
        assert refusal.code == "PERMISSION_DENIED"
        assert refusal.text == (f"you may not capture app {app.name}: this platform requires "
                                "`cf ssh` to be allowed for it, and ssh is disabled globally")
        # without the setting, ssh does not matter
        result = await resolve(resolver(cc.url, http), start(app.name, space),
                               cf.uaa.issue(ALICE))
        assert len(result.jobs) == 1


async def test_ssh_disabled_for_the_space(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf, allow_ssh=False)
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http, ssh=True), start(app.name, space),
                            cf.uaa.issue(ALICE))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == (f"you may not capture app {app.name}: this platform requires "
                            f"`cf ssh` to be allowed for it, and ssh is disabled for space "
                            f"'{space.name}'")


async def test_ssh_disabled_for_the_app(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"), enable_ssh=False)
    cf_resolver = resolver(cf.cc.url, http, ssh=True)
    refusal = await refused(cf_resolver, start(app.name, space), cf.uaa.issue(ALICE))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == (f"you may not capture app {app.name}: this platform requires "
                            "`cf ssh` to be allowed for it, and ssh is disabled for app")
    with cf.cc.lock:
        app.enable_ssh = True
    result = await resolve(cf_resolver, start(app.name, space), cf.uaa.issue(ALICE))
    assert result.jobs == [job(app.name, app.guid, app.processes["web"].instances[0])]


async def test_ssh_enabled_does_not_make_an_auditor_a_developer(
        cf: Cf, http: httpx.AsyncClient) -> None:
    user = make_user(unique("auditor"))
    space = dev_space(cf, user, "auditor")
    app = cf.cc.add_app(space, unique("app"))
    refusal = await refused(resolver(cf.cc.url, http, ssh=True), start(app.name, space),
                            cf.uaa.issue(user))
    assert refusal.code == "PERMISSION_DENIED"
    assert refusal.text == f"you may not capture app {app.name}: {SENSITIVE}"


# --- tokens -----------------------------------------------------------------------------------

LOGIN_AGAIN = re.escape("log in again (cf login / bosh log-in)")


@pytest.mark.parametrize(("forge", "words"), [
    pytest.param(lambda uaa: uaa.expired(ALICE),
                 rf"the token expired at (\d{{4}}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC: "
                 rf"{LOGIN_AGAIN}", id="expired"),
    pytest.param(lambda uaa: uaa.forge_unknown_key(ALICE),
                 rf"the token's signature does not match: it was altered, or signed by another "
                 rf"key; {LOGIN_AGAIN}", id="foreign-key"),
    pytest.param(lambda uaa: uaa.forge_none(ALICE),
                 "unsupported signing algorithm none: only RS256", id="alg-none"),
    pytest.param(lambda uaa: uaa.forge_hmac(ALICE),
                 "unsupported signing algorithm HS256: only RS256", id="alg-confusion"),
    pytest.param(lambda uaa: uaa.issue_refresh(ALICE),
                 rf"a refresh token is not an access token: send the access token \(the CLI "
                 rf"refreshes it for you; {LOGIN_AGAIN}\)", id="refresh-token"),
    pytest.param(lambda uaa: uaa.issue(ALICE, issuer="https://uaa.evil.example/oauth/token"),
                 r"the token was issued by https://uaa\.evil\.example/oauth/token, not by this "
                 r"platform's UAA http://127\.0\.0\.1:\d+/oauth/token: log in to this platform",
                 id="other-issuer"),
    pytest.param(lambda uaa: "not-a-token",
                 r"malformed token: not a signed JWT \(header\.payload\.signature, base64url\)",
                 id="garbage"),
])
async def test_bad_tokens_are_unauthenticated_and_never_reach_cloud_controller(
        cf: Cf, http: httpx.AsyncClient, forge: object, words: str) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    token: str = forge(cf.uaa)  # type: ignore[operator]
    before = v3_requests(cf.cc)
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space), token)
    assert refusal.code == "UNAUTHENTICATED"
    assert re.fullmatch(words, refusal.text), refusal.text
    for part in token.split("."):
        assert not part or part not in refusal.text
    assert v3_requests(cf.cc) == before


async def test_no_token_is_unauthenticated(cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    before = len(cf.cc.requests)
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space), None)
    assert refusal.code == "UNAUTHENTICATED"
    assert refusal.text == "no token: log in with `cf login` first"
    assert len(cf.cc.requests) == before


async def test_a_renewed_token_is_verified_the_same_way(cf: Cf, http: httpx.AsyncClient) -> None:
    """... and authorized again for the same app (issue 12, hole 6)."""
    cf_resolver = resolver(cf.cc.url, http)
    space = dev_space(cf)
    request = start(cf.cc.add_app(space, unique("app")).name, space)
    with trio.fail_after(GUARD):
        identity = await cf_resolver.verify(request, cf.uaa.issue(ALICE))
        assert identity.user_id == ALICE.user_id
        with pytest.raises(Refusal) as info:
            await cf_resolver.verify(request, cf.uaa.expired(ALICE))
        assert info.value.code == "UNAUTHENTICATED" and "expired" in info.value.text
        cf.cc.revoke(ALICE, "developer", space)
        cf.cc.grant(ALICE, "auditor", space)
        with pytest.raises(Refusal) as info:
            await cf_resolver.verify(request, cf.uaa.issue(ALICE))
    assert info.value.code == "PERMISSION_DENIED" and SENSITIVE in info.value.text


# --- the platform is unwell -------------------------------------------------------------------


async def test_cloud_controller_unreachable(cf: Cf, http: httpx.AsyncClient) -> None:
    url = closed_port_url()
    refusal = await refused(resolver(url, http), start("app", "space"), cf.uaa.issue(ALICE))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text.startswith(f"cannot reach Cloud Controller at {url}: ConnectError")


async def test_cloud_controller_goes_away_after_discovery(
        cf: Cf, http: httpx.AsyncClient) -> None:
    with FakeCloudController(cf.uaa) as cc:
        space = dev_space(cf, cc=cc)
        app = cc.add_app(space, unique("app"))
        cf_resolver = resolver(cc.url, http)
        assert len((await resolve(cf_resolver, start(app.name, space),
                                  cf.uaa.issue(ALICE))).jobs) == 1
        url = cc.url
    refusal = await refused(cf_resolver, start(app.name, space), cf.uaa.issue(ALICE))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text.startswith(f"cannot reach Cloud Controller at {url}: ")


@pytest.mark.parametrize("answer", [
    json_response(200, {"links": {"self": {"href": "https://api.example.org"}}}),
    json_response(200, {"links": {"cloud_controller_v3": None, "uaa": None}}),
    json_response(200, ["not", "a", "root", "document"]),
    Response(404, b"<html>Not Found</html>", "text/html"),
])
async def test_a_root_document_without_links(cf: Cf, http: httpx.AsyncClient,
                                             answer: Response) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    cf_resolver = resolver(cf.cc.url, http)
    cf.cc.inject("/", answer)
    refusal = await refused(cf_resolver, start(app.name, space), cf.uaa.issue(ALICE))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text == (f"Cloud Controller at {cf.cc.url} answered {answer.status} without "
                            "the links of its root document (cf.api)")
    # discovery is tried again on the next request
    result = await resolve(cf_resolver, start(app.name, space), cf.uaa.issue(ALICE))
    assert len(result.jobs) == 1


async def test_a_cloud_controller_error_is_not_the_users_fault(
        cf: Cf, http: httpx.AsyncClient) -> None:
    space = dev_space(cf)
    app = cf.cc.add_app(space, unique("app"))
    cf.cc.inject(f"/v3/processes/{app.guid}/stats", json_response(500, {"errors": [
        {"code": 10001, "title": "UnknownError", "detail": "An unknown error occurred."}]}))
    refusal = await refused(resolver(cf.cc.url, http), start(app.name, space),
                            cf.uaa.issue(ALICE))
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text == ("Cloud Controller answered 500 (UnknownError: An unknown error "
                            "occurred.)")


async def test_uaa_unreachable(cf: Cf, http: httpx.AsyncClient) -> None:
    with trio.fail_after(GUARD):
        root = (await http.get(cf.cc.url + "/")).json()
    uaa_url = closed_port_url()
    root["links"]["uaa"] = {"href": uaa_url}
    cf.cc.inject("/", json_response(200, root))
    token = cf.uaa.issue(ALICE)
    refusal = await refused(resolver(cf.cc.url, http), start("app", "space"), token)
    assert isinstance(refusal, IdentityProviderUnavailable)
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text.startswith(
        f"cannot reach the UAA at {uaa_url}/token_keys to check the token (ConnectError")
    assert refusal.text.endswith("): try again later")
    assert token.split(".")[2] not in refusal.text


async def test_uaa_answering_an_error(cf: Cf, http: httpx.AsyncClient) -> None:
    cf.uaa.inject("/token_keys", Response(503, b"down", "text/plain"))
    refusal = await refused(resolver(cf.cc.url, http), start("app", "space"),
                            cf.uaa.issue(ALICE))
    assert isinstance(refusal, IdentityProviderUnavailable)
    assert refusal.code == "START_CAPTURE_FAILED"
    assert refusal.text == (f"the UAA at {cf.uaa.url}/token_keys answered HTTP 503: cannot "
                            "check the token; try again later")
