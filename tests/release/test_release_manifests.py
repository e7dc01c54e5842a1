"""The manifests under release/manifests: applied as the bosh CLI would (ops-files, runtime
config addons), filled with CredHub-like values, and the job properties they give rendered and
checked by ``pcapd ... --check``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.release.release_tools import (
    MANIFESTS,
    apply_ops,
    check_config,
    interpolate,
    localize,
    needs_ruby,
    parse_path,
    render_job,
    rendered_config,
)

NETNS_DIR = "/var/vcap/data/garden-cni/container-netns"
METADATA_STORE = "/var/vcap/data/container-metadata/store.json"
REP = {"name": "rep", "release": "diego"}
LINUX = [{"os": "ubuntu-jammy"}, {"os": "ubuntu-noble"}]


def load(name: str) -> Any:
    return yaml.safe_load((MANIFESTS / name).read_text())


def cf_like() -> dict[str, Any]:
    """The shape of cf-deployment that the ops-files touch."""
    return {
        "name": "cf",
        "releases": [{"name": "bpm", "version": "1.2.3"}],
        "instance_groups": [
            {"name": "router", "jobs": [
                {"name": "bpm", "release": "bpm"},
                {"name": "gorouter", "release": "routing",
                 "properties": {"router": {"ca_certs": ["((cc_tls.ca))"]}}}]},
            {"name": "diego-cell", "jobs": [
                {"name": "bpm", "release": "bpm"}, {"name": "rep", "release": "diego"}]},
        ],
        "variables": [{"name": "cc_tls", "type": "certificate"}],
    }


def agent_job(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [j for j in jobs if j["name"] == "pcapd-agent"]
    assert job["release"] == "pcapd"
    return job


def render_and_check(job: str, properties: dict[str, Any], out: Path) -> dict[str, Any]:
    rendered = render_job(job, properties, out)
    done = check_config(job, localize(job, rendered))
    assert done.returncode == 0, done.stderr
    return rendered_config(job, rendered)


def shared_variables() -> list[dict[str, Any]]:
    return [v for v in load("pcapd-api.yml")["variables"] if v["name"].startswith("/")]


AGENT_CERTIFICATE: dict[str, Any] = {  # one per deployment: a relative name
    "name": "pcapd_agent_tls", "type": "certificate", "options": {
        "ca": "/pcapd_ca", "common_name": "pcap-agent.service.cf.internal",
        "alternative_names": ["pcap-agent.service.cf.internal"],
        "extended_key_usage": ["server_auth"]}}


# -- go-patch stand-in ----------------------------------------------------------------------------


def test_ops_paths_parse_like_go_patch() -> None:
    tokens = parse_path("/variables?/name=~1pcapd_ca")
    assert [(t.kind, t.key, t.value, t.optional) for t in tokens] == [
        ("key", "variables", "", True), ("match", "name", "/pcapd_ca", True)]
    tokens = parse_path("/instance_groups/name=router/jobs/0/properties/x/-")
    assert [t.kind for t in tokens] == ["key", "match", "key", "index", "key", "key", "append"]
    assert not any(t.optional for t in tokens)


# -- the agent everywhere --------------------------------------------------------------------------


def check_agent_addons(addons: list[dict[str, Any]], variables: dict[str, Any],
                       tmp_path: Path) -> None:
    by_name = {a["name"]: a for a in addons}
    cells, others = by_name["pcapd-agent-cells"], by_name["pcapd-agent"]
    assert cells["include"] == {"stemcell": LINUX, "jobs": [REP]}
    assert others["include"] == {"stemcell": LINUX}
    assert others["exclude"] == {"jobs": [REP]}

    cell = render_and_check(
        "pcapd-agent", interpolate(agent_job(cells["jobs"])["properties"], variables),
        tmp_path / "cell")
    assert cell["containers"] == {"netns_dir": NETNS_DIR, "metadata_store": METADATA_STORE}
    other = render_and_check(
        "pcapd-agent", interpolate(agent_job(others["jobs"])["properties"], variables),
        tmp_path / "other")
    assert "containers" not in other


@needs_ruby
def test_runtime_config_adds_the_agent_to_every_linux_vm(
    variables: dict[str, Any], tmp_path: Path
) -> None:
    config = load("runtime-config.yml")
    assert config["releases"] == [{"name": "pcapd", "version": "((pcapd_version))"}]
    check_agent_addons(config["addons"], variables, tmp_path)
    assert config["variables"] == [*shared_variables(), AGENT_CERTIFICATE]


@needs_ruby
def test_ops_file_adds_the_agent_to_every_instance_group_of_a_deployment(
    variables: dict[str, Any], tmp_path: Path
) -> None:
    ops = load("ops-files/add-pcapd-agent.yml")
    manifest = apply_ops(cf_like(), ops)
    assert {"name": "pcapd", "version": "latest"} in manifest["releases"]
    check_agent_addons(manifest["addons"], variables, tmp_path)
    assert manifest["variables"][1:] == [*shared_variables(), AGENT_CERTIFICATE]
    assert apply_ops(manifest, ops) == manifest  # applying it twice changes nothing
    assert apply_ops({"name": "other", "releases": [], "instance_groups": []}, ops)["addons"]


@needs_ruby
def test_ops_file_adds_the_agent_to_diego_cells(variables: dict[str, Any], tmp_path: Path) -> None:
    ops = load("ops-files/add-pcapd-agent-to-diego-cells.yml")
    manifest = apply_ops(cf_like(), ops)
    groups = {g["name"]: g for g in manifest["instance_groups"]}
    assert "pcapd-agent" not in [j["name"] for j in groups["router"]["jobs"]]
    job = agent_job(groups["diego-cell"]["jobs"])
    config = render_and_check("pcapd-agent", interpolate(job["properties"], variables),
                              tmp_path / "cell")
    assert config["containers"] == {"netns_dir": NETNS_DIR, "metadata_store": METADATA_STORE}
    assert manifest["variables"][1:] == [*shared_variables(), AGENT_CERTIFICATE]
    assert apply_ops(manifest, ops) == manifest


# -- the api ---------------------------------------------------------------------------------------


def api_job(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (group,) = manifest["instance_groups"]
    jobs = {j["name"]: j for j in group["jobs"]}
    assert jobs["bpm"]["release"] == "bpm"
    assert jobs["pcapd-api"]["release"] == "pcapd"
    return group, jobs


@needs_ruby
def test_api_deployment(variables: dict[str, Any], tmp_path: Path) -> None:
    manifest = load("pcapd-api.yml")
    group, jobs = api_job(manifest)
    assert group["persistent_disk_type"]  # storage.kind local keeps captures there
    config = render_and_check(
        "pcapd-api", interpolate(jobs["pcapd-api"]["properties"], variables), tmp_path / "api")
    assert config["cf"]["api"] == "https://api.sys.example.com"
    assert config["storage"]["kind"] == "local"
    assert config["storage"]["download_secret"] == variables["pcapd_download_secret"]
    assert "tls" not in config["listen"]

    names = {v["name"]: v for v in manifest["variables"]}
    agent_cert = AGENT_CERTIFICATE["options"]  # defined per deployment, with the agents
    assert config["agents"]["server_name"] in agent_cert["alternative_names"]
    assert agent_cert["extended_key_usage"] == ["server_auth"]
    assert "/pcapd_agent_tls" not in names and "pcapd_agent_tls" not in names
    assert names["pcapd_api_client_tls"]["options"] == {
        "ca": "/pcapd_ca", "common_name": "pcapd-api", "alternative_names": ["pcapd-api"],
        "extended_key_usage": ["client_auth"]}
    assert names["/pcapd_ca"]["options"]["is_ca"] is True


@needs_ruby
def test_route_registration(variables: dict[str, Any], tmp_path: Path) -> None:
    """route_registrar's rules from external-apis.md §5, and an api that serves TLS."""
    manifest = apply_ops(load("pcapd-api.yml"), load("ops-files/register-api-route.yml"))
    assert {"name": "routing", "version": "latest"} in manifest["releases"]
    _, jobs = api_job(manifest)
    registrar = interpolate(jobs["route_registrar"], variables)
    assert registrar["release"] == "routing"
    assert registrar["consumes"] == {"nats-tls": {"from": "nats-tls", "deployment": "cf"}}
    nats = registrar["properties"]["nats"]["tls"]
    assert nats["enabled"] is True and nats["client_cert"] and nats["client_key"]

    api = render_and_check("pcapd-api", interpolate(jobs["pcapd-api"]["properties"], variables),
                           tmp_path / "api")
    (route,) = registrar["properties"]["route_registrar"]["routes"]
    assert route["name"]
    assert route.get("type", "http") == "http"
    assert route["protocol"] in ("http1", "http2")
    assert route["tls_port"] == api["listen"]["port"]
    assert "tls" in api["listen"]  # gorouter speaks TLS to tls_port
    assert re.fullmatch(r"[1-9]\d*(ms|s|m|h)", route["registration_interval"])
    assert route["uris"] == ["pcap.sys.example.com"]
    server_cert = {v["name"]: v for v in manifest["variables"]}["pcapd_api_tls"]["options"]
    assert route["server_cert_domain_san"] in server_cert["alternative_names"]
    assert server_cert["extended_key_usage"] == ["server_auth"]
    assert server_cert["ca"] == "/pcapd_ca"

    trust = apply_ops(cf_like(), load("ops-files/gorouter-trusts-pcapd-ca.yml"))
    gorouter = trust["instance_groups"][0]["jobs"][1]["properties"]["router"]
    assert gorouter["ca_certs"] == ["((cc_tls.ca))", "((/pcapd_ca.certificate))"]


def test_shared_variables_are_defined_alike_everywhere() -> None:
    """CredHub generates an absolute variable once; differing definitions would race."""
    shared = shared_variables()
    assert [v["name"] for v in shared] == ["/pcapd_ca"]
    for name in ("ops-files/add-pcapd-agent.yml", "ops-files/add-pcapd-agent-to-diego-cells.yml"):
        defined = [op["value"] for op in load(name) if op["path"].startswith("/variables")]
        assert defined == [*shared, AGENT_CERTIFICATE], name
    assert load("runtime-config.yml")["variables"] == [*shared, AGENT_CERTIFICATE]
