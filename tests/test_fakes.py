"""The fakes of UAA, the Cloud Controller and the BOSH Director answer like the reference
(docs: shared/reference/external-apis.md §1–3), over real HTTP on loopback."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.fakes.cloud_controller import App, FakeCloudController, Instance, Space
from tests.fakes.director import FakeDirector
from tests.fakes.director import Instance as BoshInstance
from tests.fakes.uaa import ALICE, BOB, CAROL, FakeUAA


@pytest.fixture(scope="module")
def uaa() -> Iterator[FakeUAA]:
    with FakeUAA() as server:
        yield server


def bearer(token: str, scheme: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def b64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


# -- UAA ------------------------------------------------------------------------------------------

def test_token_keys_verify_issued_tokens_with_pyjwt(uaa: FakeUAA) -> None:
    response = httpx.get(f"{uaa.url}/token_keys")
    assert response.status_code == 200 and response.headers["ETag"]
    (key,) = response.json()["keys"]
    assert {k: key[k] for k in ("kty", "alg", "use", "kid", "e")} == {
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "key-1", "e": "AQAB"}
    lines = key["value"].splitlines()
    assert lines[0] == "-----BEGIN PUBLIC KEY-----" and lines[-1] == "-----END PUBLIC KEY-----"
    assert all(len(line) == 64 for line in lines[1:-2])
    public = load_pem_public_key(key["value"].encode())
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers().n == b64url_int(key["n"])

    token = uaa.issue(ALICE)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "jku": f"{uaa.url}/token_keys", "kid": "key-1",
                      "typ": "JWT"}
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="cloud_controller",
                        issuer=f"{uaa.url}/oauth/token")
    assert claims["scope"] == ["openid", "cloud_controller.read", "cloud_controller.write",
                               "password.write", "uaa.user"]
    assert claims["aud"] == ["openid", "cloud_controller", "password", "uaa", "cf"]
    assert claims["sub"] == claims["user_id"] == ALICE.user_id
    assert (claims["client_id"], claims["cid"], claims["azp"]) == ("cf", "cf", "cf")
    assert (claims["user_name"], claims["email"], claims["origin"], claims["zid"]) == (
        "alice", "alice@example.com", "uaa", "uaa")
    assert claims["exp"] - claims["iat"] == 600 and len(claims["rev_sig"]) == 8
    assert httpx.get(f"{uaa.url}/token_key").json() == key
    assert httpx.get(f"{uaa.url}/token_keys",
                     headers={"If-None-Match": response.headers["ETag"]}).status_code == 304
    discovery = httpx.get(f"{uaa.url}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == uaa.issuer and discovery["jwks_uri"] == header["jku"]


def test_client_credentials_token_has_authorities_and_no_user() -> None:
    with FakeUAA() as uaa:
        claims = uaa.verify(uaa.issue(client_id="pcap-api", scopes=["cloud_controller.admin"]))
    assert claims is not None
    assert claims["sub"] == "pcap-api" and claims["authorities"] == ["cloud_controller.admin"]
    assert claims["grant_type"] == "client_credentials"
    assert not {"user_id", "user_name", "email", "origin"} & claims.keys()


def test_verify_refuses_forgeries_expired_refresh_and_foreign_issuer(uaa: FakeUAA) -> None:
    assert uaa.verify(uaa.issue(BOB)) is not None
    for token in (uaa.forge_none(BOB), uaa.forge_hmac(BOB), uaa.forge_unknown_key(BOB),
                  uaa.expired(BOB), uaa.issue_refresh(BOB), uaa.issue(BOB, issuer="https://evil"),
                  "not-a-jwt"):
        assert uaa.verify(token) is None
    assert jwt.get_unverified_header(uaa.forge_none(BOB))["alg"] == "none"
    assert jwt.get_unverified_header(uaa.forge_unknown_key(BOB))["kid"] == uaa.active_kid


def test_rotation_lists_both_keys_until_retired() -> None:
    with FakeUAA() as uaa:
        old_token = uaa.issue(ALICE)
        etag = httpx.get(f"{uaa.url}/token_keys").headers["ETag"]
        time.sleep(0.002)
        new_kid = uaa.rotate()
        response = httpx.get(f"{uaa.url}/token_keys")
        assert [k["kid"] for k in response.json()["keys"]] == ["key-1", "key-2"] == uaa.kids
        assert response.headers["ETag"] != etag
        assert httpx.get(f"{uaa.url}/token_key").json()["kid"] == new_kid == "key-2"
        new_token = uaa.issue(ALICE)
        assert jwt.get_unverified_header(new_token)["kid"] == "key-2"
        assert uaa.verify(old_token) and uaa.verify(new_token)
        uaa.retire("key-1")
        assert [k["kid"] for k in httpx.get(f"{uaa.url}/token_keys").json()["keys"]] == ["key-2"]
        assert uaa.verify(old_token) is None and uaa.verify(new_token)
        assert uaa.count("/token_keys") == 3


def refresh(uaa: FakeUAA, token: str, *, basic: tuple[str, str] | None = ("cf", ""),
            form_client: bool = False) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token}
    if form_client:
        data.update(client_id="cf", client_secret="")
    return httpx.post(f"{uaa.url}/oauth/token", data=data, auth=basic,
                      headers={"Accept": "application/json"})


@pytest.mark.parametrize("style", ["basic", "form", "both"])
def test_refresh_grant_succeeds_with_basic_or_form_client(uaa: FakeUAA, style: str) -> None:
    token = uaa.issue_refresh(ALICE)
    response = refresh(uaa, token, basic=None if style == "form" else ("cf", ""),
                       form_client=style != "basic")
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"access_token", "token_type", "refresh_token", "expires_in", "scope",
                           "jti"}
    assert body["token_type"] == "bearer" and body["expires_in"] == uaa.access_token_lifetime
    assert body["scope"] == "openid cloud_controller.read cloud_controller.write " \
                            "password.write uaa.user"
    claims = uaa.verify(body["access_token"])
    assert claims is not None and claims["jti"] == body["jti"]
    assert claims["user_name"] == "alice"
    assert jwt.decode(body["refresh_token"], options={"verify_signature": False})[
        "jti"].endswith("-r")
    assert refresh(uaa, token).status_code == 200  # UAA keeps refresh tokens reusable
    assert refresh(uaa, body["refresh_token"]).status_code == 200


def test_refresh_grant_for_bosh_cli_with_short_lived_tokens() -> None:
    with FakeUAA(kid_prefix="uaa-jwt-key-") as uaa:
        uaa.access_token_lifetime = 120
        token = uaa.issue_refresh(ALICE, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
        body = refresh(uaa, token, basic=("bosh_cli", "")).json()
        claims = uaa.verify(body["access_token"])
        assert claims is not None and claims["exp"] - claims["iat"] == 120
        assert claims["scope"] == ["openid", "bosh.admin"] and claims["cid"] == "bosh_cli"
        assert jwt.get_unverified_header(body["access_token"])["kid"] == "uaa-jwt-key-1"
        assert (uaa.refresh_attempts, uaa.refreshes) == (1, 1)
        wrong_client = refresh(uaa, token, basic=("cf", ""))
        assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_grant"


def test_refresh_grant_refuses_bad_tokens_and_bad_clients(uaa: FakeUAA) -> None:
    good = uaa.issue_refresh(ALICE)
    revoked = uaa.issue_refresh(ALICE)
    uaa.revoke(revoked)
    expired = uaa.issue_refresh(ALICE, lifetime=-10)
    for token in (revoked, expired, uaa.issue(ALICE), "garbage"):
        response = refresh(uaa, token)
        jti = "garbage" if token == "garbage" else jwt.decode(
            token, options={"verify_signature": False})["jti"]
        assert response.status_code == 401
        assert response.json() == {
            "error": "invalid_token",
            "error_description": f"The token expired, was revoked, or the token ID is "
                                 f"incorrect: {jti}"}
    bad = {"error": "unauthorized", "error_description": "Bad credentials"}
    for basic in (("cf", "secret"), ("nobody", "")):
        response = refresh(uaa, good, basic=basic)
        assert (response.status_code, response.json()) == (401, bad)
    form_bad = httpx.post(f"{uaa.url}/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": good, "client_id": "cf",
        "client_secret": "x"})
    assert (form_bad.status_code, form_bad.json()) == (401, bad)
    anonymous = refresh(uaa, good, basic=None)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"


def test_https_with_trustme_ca() -> None:
    ca = trustme.CA()
    with FakeUAA(tls=ca) as uaa:
        assert uaa.url.startswith("https://127.0.0.1:") and uaa.ca_pem_path is not None
        context = ssl.create_default_context(cafile=str(uaa.ca_pem_path))
        response = httpx.get(f"{uaa.url}/token_keys", verify=context)
        assert response.status_code == 200
        assert jwt.get_unverified_header(uaa.issue())["jku"] == f"{uaa.url}/token_keys"


# -- Cloud Controller -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cc(uaa: FakeUAA) -> Iterator[FakeCloudController]:
    with FakeCloudController(uaa) as server:
        yield server


@dataclass
class World:
    cc: FakeCloudController
    uaa: FakeUAA
    space: Space
    other: Space
    app: App
    hidden: App

    def get(self, path: str, token: str | None, scheme: str = "bearer") -> httpx.Response:
        headers = bearer(token, scheme) if token is not None else {}
        return httpx.get(f"{self.cc.url}{path}", headers=headers)


@pytest.fixture
def world(cc: FakeCloudController, uaa: FakeUAA) -> World:
    org = cc.add_org("org")
    space = cc.add_space(org, "dev")
    other = cc.add_space(org, "secret")
    app = cc.add_app(space, "web-app", instances=[
        Instance(0, host="10.244.16.10"), Instance(1, state="DOWN"),
        Instance(2, state="STARTING", host=""), Instance(3, state="CRASHED")])
    hidden = cc.add_app(other, "hidden")
    cc.grant(ALICE, "developer", space)
    cc.grant(BOB, "auditor", space)
    return World(cc, uaa, space, other, app, hidden)


def test_cc_root_links_and_info(cc: FakeCloudController, uaa: FakeUAA) -> None:
    links = httpx.get(f"{cc.url}/").json()["links"]
    assert links["cloud_controller_v3"] == {"href": f"{cc.url}/v3",
                                            "meta": {"version": "3.90.0"}}
    assert links["uaa"] == links["login"] == {"href": uaa.url}
    assert links["app_ssh"]["meta"]["oauth_client"] == "ssh-proxy" and links["credhub"] is None
    assert httpx.get(f"{cc.url}/v3").json()["links"]["apps"] == {"href": f"{cc.url}/v3/apps"}
    assert httpx.get(f"{cc.url}/v3/info").json()["name"] == "Cloud Foundry"
    assert cc.requests[-1].authorization is False


def test_cc_app_visibility_and_lookup_by_name(world: World) -> None:
    alice = world.uaa.issue(ALICE)
    app = world.get(f"/v3/apps/{world.app.guid}", alice).json()
    assert (app["guid"], app["name"], app["state"]) == (world.app.guid, "web-app", "STARTED")
    assert app["relationships"]["space"]["data"]["guid"] == world.space.guid
    missing = world.get(f"/v3/apps/{world.hidden.guid}", alice)
    assert missing.status_code == 404
    assert missing.json() == {"errors": [{"code": 10010, "title": "CF-ResourceNotFound",
                                          "detail": "App not found"}]}
    found = world.get(f"/v3/apps?names=web-app,hidden&space_guids={world.space.guid},"
                      f"{world.other.guid}&include=space.organization", alice).json()
    assert [a["guid"] for a in found["resources"]] == [world.app.guid]
    assert found["pagination"]["total_results"] == 1 and found["pagination"]["next"] is None
    assert found["included"]["organizations"][0]["name"] == "org"
    carol = world.uaa.issue(CAROL)
    assert world.get(f"/v3/apps/{world.app.guid}", carol).status_code == 404
    world.cc.grant_org(CAROL, "manager", world.space.org)  # org managers see the org's apps
    assert world.get(f"/v3/apps/{world.app.guid}", carol).status_code == 200
    admin = world.uaa.issue(CAROL, scopes=["cloud_controller.admin"])
    assert world.get(f"/v3/apps/{world.hidden.guid}", admin).status_code == 200


@pytest.mark.parametrize(("who", "scopes", "sensitive"), [
    ("alice", None, True),  # space developer
    ("bob", None, False),  # space auditor
    ("carol", ["cloud_controller.admin"], True),
    ("carol", ["cloud_controller.admin_read_only"], True),
    ("carol", ["cloud_controller.global_auditor"], False),
])
def test_cc_permissions(world: World, who: str, scopes: list[str] | None,
                        sensitive: bool) -> None:
    user = {"alice": ALICE, "bob": BOB, "carol": CAROL}[who]
    response = world.get(f"/v3/apps/{world.app.guid}/permissions",
                         world.uaa.issue(user, scopes=scopes))
    assert response.json() == {"read_basic_data": True, "read_sensitive_data": sensitive}


def test_cc_process_stats_shapes(world: World) -> None:
    alice = world.uaa.issue(ALICE)
    stats = world.get(f"/v3/apps/{world.app.guid}/processes/web/stats", alice).json()
    running, down, starting, crashed = stats["resources"]
    assert [r["index"] for r in stats["resources"]] == [0, 1, 2, 3]
    first = world.app.processes["web"].instances[0]
    assert running["instance_guid"] == first.instance_guid and len(first.instance_guid) == 28
    assert (running["state"], running["host"], running["routable"]) == (
        "RUNNING", "10.244.16.10", True)
    assert running["instance_ports"][0]["internal"] == 8080
    assert running["instance_internal_ip"].startswith("10.255.")
    assert down == {"type": "web", "index": 1, "state": "DOWN", "routable": None, "uptime": 0,
                    "isolation_segment": None, "details": None}
    assert (starting["host"], starting["instance_ports"]) == ("", None)
    assert crashed["state"] == "CRASHED" and crashed["routable"] is False
    by_process = world.get(f"/v3/processes/{world.app.guid}/stats", alice).json()
    assert by_process == stats
    worker = world.get(f"/v3/apps/{world.app.guid}/processes/worker/stats", alice)
    assert worker.status_code == 404 and worker.json()["errors"][0]["detail"] == \
        "Process not found"
    hidden = world.get(f"/v3/apps/{world.hidden.guid}/processes/web/stats", alice)
    assert hidden.status_code == 404 and hidden.json()["errors"][0]["detail"] == "App not found"
    processes = world.get(f"/v3/apps/{world.app.guid}/processes", alice).json()
    assert [(p["type"], p["guid"], p["instances"]) for p in processes["resources"]] == [
        ("web", world.app.guid, 4)]


def test_cc_ssh_enabled_reasons_and_features(world: World) -> None:
    alice = world.uaa.issue(ALICE)
    path = f"/v3/apps/{world.app.guid}/ssh_enabled"
    assert world.get(path, alice).json() == {"enabled": True, "reason": ""}
    world.app.enable_ssh = False
    assert world.get(path, alice).json() == {"enabled": False,
                                             "reason": "ssh is disabled for app"}
    assert world.get(f"/v3/apps/{world.app.guid}/features/ssh", alice).json() == {
        "name": "ssh", "description": "Enable SSHing into the app.", "enabled": False}
    world.space.allow_ssh = False
    assert world.get(path, alice).json()["reason"] == "ssh is disabled for space 'dev'"
    assert world.get(f"/v3/spaces/{world.space.guid}/features/ssh", alice).json() == {
        "name": "ssh", "description": "Enable SSHing into apps in the space.", "enabled": False}
    world.cc.global_ssh = False
    try:
        assert world.get(path, alice).json()["reason"] == "ssh is disabled globally"
    finally:
        world.cc.global_ssh = True
    assert world.get(f"/v3/spaces/{world.other.guid}/features/ssh", alice).status_code == 404


def test_cc_authentication_errors_and_case_insensitive_bearer(world: World) -> None:
    path = f"/v3/apps/{world.app.guid}"
    uaa = world.uaa

    def error(response: httpx.Response) -> tuple[int, int, str]:
        (only,) = response.json()["errors"]
        return response.status_code, only["code"], only["title"]

    assert error(world.get(path, None)) == (401, 10002, "CF-NotAuthenticated")
    for token in (uaa.expired(ALICE), uaa.forge_none(ALICE), uaa.forge_hmac(ALICE),
                  uaa.forge_unknown_key(ALICE), uaa.issue_refresh(ALICE), "junk",
                  uaa.issue(ALICE, scopes=["openid"])):  # no cloud_controller audience
        assert error(world.get(path, token)) == (401, 1000, "CF-InvalidAuthToken")
    assert error(world.get(path, uaa.issue(ALICE), scheme="Basic")) == (
        401, 1000, "CF-InvalidAuthToken")
    write_only = uaa.issue(ALICE, scopes=["openid", "cloud_controller.write"])
    assert error(world.get(path, write_only)) == (403, 10003, "CF-NotAuthorized")
    for scheme in ("bearer", "Bearer", "BEARER"):
        assert world.get(path, uaa.issue(ALICE), scheme=scheme).status_code == 200
    records = [r for r in world.cc.requests if r.path == path]
    assert records[0].authorization is False and records[-1].authorization is True


# -- BOSH Director --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def director(uaa: FakeUAA) -> Iterator[FakeDirector]:
    with FakeDirector(uaa) as server:
        server.add_deployment("cf", teams=["t1"], instances=[
            BoshInstance("router", 0, "209b96c8-e482-43c7-9f3e-04de9f93c535",
                         ips=["10.0.1.3"]),
            BoshInstance("smoke_tests", 0, expects_vm=False)])
        server.add_deployment("other", teams=["t2"])
        yield server


def bosh_token(uaa: FakeUAA, *scopes: str) -> str:
    return uaa.issue(ALICE, client_id="bosh_cli", scopes=["openid", *scopes])


def test_director_info(director: FakeDirector, uaa: FakeUAA) -> None:
    info = httpx.get(f"{director.url}/info").json()
    assert info["uuid"] == director.uuid and info["user"] is None
    assert info["user_authentication"] == {
        "type": "uaa", "options": {"url": uaa.url, "urls": [uaa.url]}}
    with_user = httpx.get(f"{director.url}/info", headers=bearer(bosh_token(uaa)))
    assert with_user.json()["user"] == "alice"
    client = uaa.issue(client_id="pcap-api", scopes=["bosh.admin"])
    assert httpx.get(f"{director.url}/info", headers=bearer(client)).json()["user"] == \
        "pcap-api"


def test_director_deployments_filtered_by_team_scope(director: FakeDirector,
                                                     uaa: FakeUAA) -> None:
    def names(*scopes: str) -> list[str] | int:
        response = httpx.get(f"{director.url}/deployments?exclude_configs=true",
                             headers=bearer(bosh_token(uaa, *scopes)))
        return [d["name"] for d in response.json()] if response.status_code == 200 else \
            response.status_code

    assert names("bosh.admin") == names(f"bosh.{director.uuid}.admin") == ["cf", "other"]
    assert names("bosh.read") == ["cf", "other"]
    assert names("bosh.teams.t1.admin") == ["cf"]
    assert names("bosh.teams.t3.admin") == []
    assert names("bosh.teams.t1.read") == 401  # list_deployments needs a team admin scope
    (entry,) = httpx.get(f"{director.url}/deployments?exclude_configs=true",
                         headers=bearer(bosh_token(uaa, "bosh.teams.t1.admin"))).json()
    assert entry.keys() == {"name", "teams", "stemcells", "releases", "locked"}
    assert entry["teams"] == ["t1"]


def test_director_instances_and_errors(director: FakeDirector, uaa: FakeUAA) -> None:
    def get(path: str, token: str | None) -> httpx.Response:
        return httpx.get(f"{director.url}{path}",
                         headers=bearer(token) if token is not None else {})

    admin = bosh_token(uaa, "bosh.admin")
    router, smoke = get("/deployments/cf/instances", admin).json()
    assert router == {**router, "job": "router", "index": 0, "ips": ["10.0.1.3"],
                      "id": "209b96c8-e482-43c7-9f3e-04de9f93c535", "az": "z1",
                      "expects_vm": True}
    assert router["agent_id"] and router["cid"] and router["vm_created_at"]
    assert smoke == {"agent_id": None, "cid": None, "job": "smoke_tests", "index": 0,
                     "id": smoke["id"], "az": "z1", "ips": [], "vm_created_at": None,
                     "expects_vm": False}
    team_read = bosh_token(uaa, "bosh.teams.t1.read")
    assert get("/deployments/cf/instances", team_read).status_code == 200
    (vm,) = get("/deployments/cf/vms", team_read).json()
    assert vm["active"] is True and "expects_vm" not in vm

    missing = get("/deployments/nope/instances", bosh_token(uaa))  # lookup before scope check
    assert (missing.status_code, missing.json()) == (
        404, {"code": 70000, "description": "Deployment 'nope' doesn't exist"})
    denied = get("/deployments/cf/instances", bosh_token(uaa, "bosh.teams.t2.admin"))
    u = director.uuid
    assert (denied.status_code, denied.json()) == (401, {
        "code": 600000, "description": f"Require one of the scopes: bosh.admin, bosh.{u}.admin, "
        f"bosh.teams.t1.admin, bosh.teams.t1.read, bosh.read, bosh.{u}.read"})

    refresh_token = uaa.issue_refresh(ALICE, client_id="bosh_cli", scopes=["bosh.admin"])
    for token in (None, uaa.expired(ALICE, scopes=["bosh.admin"]), refresh_token,
                  uaa.forge_hmac(ALICE, scopes=["bosh.admin"]), "junk"):
        response = get("/deployments/cf/instances", token)
        assert response.status_code == 401
        assert response.text == "Not authorized: '/deployments/cf/instances'\n"
        assert response.headers["WWW-Authenticate"] == 'Basic realm="BOSH Director"'
        assert response.headers["Content-Type"].startswith("text/plain")
    unknown = get("/x", admin)
    assert (unknown.status_code, unknown.text) == (404, "Endpoint '/x' not found.")
