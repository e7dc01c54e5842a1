"""Every template of both jobs rendered with Ruby's ERB (through erb_shim.rb, standing in for
bosh-template), and the rendered configs checked by ``pcapd agent|api --check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from pcapd.config import AgentConfig, ApiConfig
from pcapd.config.model import BoshTokensConfig, CfTokensConfig
from tests.release.release_tools import (
    CONFIG_FILE,
    RenderError,
    check_config,
    config_keys,
    localize,
    needs_ruby,
    render_job,
    rendered_config,
)

pytestmark = needs_ruby


def assert_checks(job: str, rendered: Path) -> None:
    done = check_config(job, localize(job, rendered))
    assert done.returncode == 0, done.stderr
    assert "ok (" in done.stdout


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}: manifest properties from dotted names."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


# -- the agent ---------------------------------------------------------------------------------


def test_agent_with_spec_defaults(agent_tls: dict[str, str], out: Path) -> None:
    rendered = render_job("pcapd-agent", {"pcapd": {"agent": {"tls": agent_tls}}}, out,
                          {"name": "diego-cell", "id": "0a1b2c3d-0000-4000-8000-000000000001"})
    config = rendered_config("pcapd-agent", rendered)
    assert config["id"] == "diego-cell/0a1b2c3d-0000-4000-8000-000000000001"
    assert config["listen"] == {"address": "0.0.0.0", "port": 9494}
    assert config["containers"] == {
        "netns_dir": "/var/vcap/data/garden-cni/container-netns",
        "metadata_store": "/var/vcap/data/container-metadata/store.json",
    }
    certs = "/var/vcap/jobs/pcapd-agent/config/certs"
    assert config["tls"] == {"certificate": f"{certs}/agent.crt",
                             "private_key": f"{certs}/agent.key",
                             "client_ca": f"{certs}/client-ca.crt", "client_name": "pcapd-api"}
    assert (rendered / "config/certs/agent.crt").read_text() == agent_tls["certificate"]
    assert (rendered / "config/certs/agent.key").read_text() == agent_tls["private_key"]
    assert (rendered / "config/certs/client-ca.crt").read_text() == agent_tls["client_ca"]
    assert_checks("pcapd-agent", rendered)


# Every non-file property set to a value other than its default (and valid together).
AGENT_VALUES = {
    "id": "router/d55baeba",
    "listen.address": "10.0.16.5",
    "listen.port": 9595,
    "tls.client_name": "api.pcapd.internal",
    "containers.netns_dir": "/var/vcap/data/other-netns",
    "containers.metadata_store": "/var/vcap/data/other-store.json",
    "limits.concurrent_captures": 7,
    "limits.max_snaplen": 9000,
    "buffer.size": 500,
    "buffer.upper_limit": 400,
    "buffer.lower_limit": 300,
    "recorder.storage": "memory",
    "recorder.max_bytes": 64 << 20,
    "recorder.max_recordings": 3,
    "drain_timeout": 12.5,
    "log.level": "debug",
    "log.format": "text",
}
AGENT_DIRECTORY = {"recorder.directory"}
"""Keys mapped and checked on their own (``recorder.storage: directory``)."""


def test_recorder_directory_is_mapped_and_accepted_by_the_agent(
    agent_tls: dict[str, str], out: Path
) -> None:
    props = nest({"pcapd.agent.recorder.storage": "directory",
                  "pcapd.agent.recorder.directory": "/var/vcap/data/pcapd-agent/rings"})
    props["pcapd"]["agent"]["tls"] = agent_tls
    rendered = render_job("pcapd-agent", props, out)
    config = rendered_config("pcapd-agent", rendered)
    assert config["recorder"]["storage"] == "directory"
    assert config["recorder"]["directory"] == "/var/vcap/data/pcapd-agent/rings"
    done = check_config("pcapd-agent", localize("pcapd-agent", rendered))
    assert done.returncode == 0, done.stdout + done.stderr


def test_agent_properties_map_to_config_keys_of_the_same_name(
    agent_tls: dict[str, str], out: Path
) -> None:
    props = nest({f"pcapd.agent.{k}": v for k, v in AGENT_VALUES.items()})
    props["pcapd"]["agent"]["tls"].update(agent_tls)
    rendered = render_job("pcapd-agent", props, out)
    config = rendered_config("pcapd-agent", rendered)
    for key, value in AGENT_VALUES.items():
        assert lookup(config, key) == value, key
    assert_checks("pcapd-agent", rendered)


def test_agent_without_containers(agent_tls: dict[str, str], out: Path) -> None:
    props = {"pcapd": {"agent": {"tls": agent_tls,
                                 "containers": {"netns_dir": "", "metadata_store": ""}}}}
    config = rendered_config("pcapd-agent", render_job("pcapd-agent", props, out))
    assert "containers" not in config
    assert_checks("pcapd-agent", out)


def test_agent_bpm(agent_tls: dict[str, str], tmp_path: Path) -> None:
    props: dict[str, Any] = {"pcapd": {"agent": {"tls": agent_tls}}}
    bpm = yaml.safe_load((render_job("pcapd-agent", props, tmp_path / "a")
                          / "config/bpm.yml").read_text())
    (process,) = bpm["processes"]
    assert process["name"] == "pcapd-agent"
    assert [process["executable"], *process["args"]] == [
        "/var/vcap/packages/pcapd/bin/pcapd", "agent",
        "--config", "/var/vcap/jobs/pcapd-agent/config/agent.yml"]
    assert process["unsafe"]["privileged"] is True
    assert {"path": "/var/vcap/data"} in process["unsafe"]["unrestricted_volumes"]
    assert process["env"] == {"MALLOC_MMAP_THRESHOLD_": "131072"}  # a flat RSS
    assert process["limits"] == {"open_files": 65536}

    props["pcapd"]["agent"]["bpm"] = {"privileged": False}
    bpm = yaml.safe_load((render_job("pcapd-agent", props, tmp_path / "b")
                          / "config/bpm.yml").read_text())
    (process,) = bpm["processes"]
    assert "privileged" not in process["unsafe"]
    assert set(process["capabilities"]) == {"NET_RAW", "NET_ADMIN", "SYS_ADMIN",
                                            "DAC_READ_SEARCH"}


def test_agent_without_certificates_fails_rendering(agent_tls: dict[str, str], out: Path) -> None:
    with pytest.raises(RenderError, match=r"pcapd\.agent\.tls\.private_key"):
        render_job("pcapd-agent", {"pcapd": {"agent": {"tls": {
            "certificate": agent_tls["certificate"], "client_ca": agent_tls["client_ca"]}}}}, out)
    with pytest.raises(RenderError, match=r"pcapd\.agent\.tls\.certificate is empty"):
        render_job("pcapd-agent", {"pcapd": {"agent": {"tls": {**agent_tls,
                                                               "certificate": ""}}}}, out)


def test_undeclared_property_is_refused(agent_tls: dict[str, str], out: Path) -> None:
    props = {"pcapd": {"agent": {"tls": agent_tls, "limits": {"concurent_captures": 3}}}}
    with pytest.raises(RenderError, match="concurent_captures"):
        render_job("pcapd-agent", props, out)


# -- the api -----------------------------------------------------------------------------------


def test_api_with_spec_defaults(api_agents_tls: dict[str, str], out: Path) -> None:
    props = {"pcapd": {"api": {"agents": {"tls": api_agents_tls},
                               "cf": {"api": "https://api.sys.example.com"}}}}
    rendered = render_job("pcapd-api", props, out, {"name": "pcapd-api", "index": 2})
    config = rendered_config("pcapd-api", rendered)
    assert config["id"] == "pcapd-api/2"
    assert config["storage"] == {"kind": "local", "path": "/var/vcap/store/pcapd-api",
                                 "retention_days": 7, "url_expiry": 3600}
    assert config["cf"] == {"api": "https://api.sys.example.com", "require_ssh_enabled": False,
                            "tokens": TOKENS_DEFAULTS["cf"]}
    assert "bosh" not in config
    assert "tls" not in config["listen"]
    assert "max_packets" not in config["limits"]
    (rendered / "store").mkdir()
    local = localize("pcapd-api", rendered)
    store = str(rendered / "store")
    local.write_text(local.read_text().replace("/var/vcap/store/pcapd-api", store))
    done = check_config("pcapd-api", local)
    assert done.returncode == 0, done.stderr
    bpm = yaml.safe_load((rendered / "config/bpm.yml").read_text())
    assert bpm["processes"][0]["persistent_disk"] is True


TOKENS_DEFAULTS = {  # the model's defaults, as the spec renders them
    kind: {key: list(value) for key, value in msgspec.to_builtins(section()).items()}
    for kind, section in (("cf", CfTokensConfig), ("bosh", BoshTokensConfig))}

API_VALUES = {
    "id": "pcap-api/7",
    "listen.address": "127.0.0.1",
    "listen.port": 8443,
    "external_url": "https://pcap.sys.example.com",
    "agents.port": 9595,
    "agents.server_name": "agent.pcapd.internal",
    "agents.reconnect_grace": 12.5,
    "cf.api": "https://api.sys.example.com",
    "cf.require_ssh_enabled": True,
    "cf.tokens.audiences": ["cloud_controller", "cc"],
    "cf.tokens.scopes": ["cloud_controller.admin"],
    "cf.tokens.clients": ["cf", "ci"],
    "bosh.director": "https://10.0.0.6:25555",
    "bosh.tokens.audiences": ["bosh"],
    "bosh.tokens.scopes": ["bosh.admin"],
    "bosh.tokens.clients": ["bosh_cli"],
    "storage.kind": "local",
    "storage.retention_days": 3,
    "storage.url_expiry": 600,
    "storage.download_secret": "0123456789abcdef-secret",
    "limits.concurrent_captures_per_user": 2,
    "limits.concurrent_captures": 20,
    "limits.max_duration": 60.5,
    "limits.max_bytes": 1000000,
    "limits.max_packets": 5000,
    "limits.requests_per_minute": 12,
    "limits.authentication_timeout": 4.5,
    "limits.unauthenticated_connections": 64,
    "limits.unauthenticated_connections_per_peer": 8,
    "buffer.size": 500,
    "buffer.upper_limit": 400,
    "buffer.lower_limit": 300,
    "merge.lateness": 0.25,
    "recorder.keep.default": 120,
    "recorder.keep.max": 900.5,
    "recorder.until.default": 3600,
    "recorder.until.max": 86400,
    "recorder.after.default": 0,
    "recorder.after.max": 60,
    "recorder.max_bytes.default": 1000000,
    "recorder.max_bytes.max": 256000000,
    "recorder.per_user": 1,
    "recorder.total": 7,
    "recorder.trigger_interval": 45.5,
    "drain_timeout": 12.5,
    "log.level": "warning",
    "log.format": "text",
}
S3_VALUES = {
    "storage.kind": "s3",
    "storage.endpoint": "minio.service.cf.internal:9000",
    "storage.bucket": "pcap-captures",
    "storage.access_key": "pcapd",
    "storage.secret_key": "s3cr3t-s3cr3t-s3cr3t",
    "storage.secure": False,
    "storage.region": "eu-west-1",
    "storage.retention_days": 2,
    "storage.url_expiry": 900,
    "storage.part_size": 10485760,
}
# file properties: PEM in the manifest, a path in the config, the PEM in that file
API_FILES = {
    "listen.tls.certificate": ("api", "api.crt"),
    "listen.tls.private_key": ("api-key", "api.key"),
    "agents.tls.certificate": ("api-client", "agents-client.crt"),
    "agents.tls.private_key": ("api-client-key", "agents-client.key"),
    "agents.tls.ca": ("ca", "agents-ca.crt"),
    "cf.ca": ("ca", "cf-ca.crt"),
    "bosh.ca": ("ca", "bosh-ca.crt"),
}


@pytest.mark.parametrize("variant", ["local", "s3"])
def test_api_properties_map_to_config_keys_of_the_same_name(
    variant: str, pki: dict[str, str], out: Path
) -> None:
    values = dict(API_VALUES)
    if variant == "s3":
        del values["storage.download_secret"]
        values.update(S3_VALUES)
    else:
        values["storage.path"] = "/var/vcap/store/pcapd-api/captures"
    flat: dict[str, Any] = {f"pcapd.api.{k}": v for k, v in values.items()}
    flat.update({f"pcapd.api.{k}": pki[pem] for k, (pem, _) in API_FILES.items()})
    rendered = render_job("pcapd-api", nest(flat), out)
    config = rendered_config("pcapd-api", rendered)
    for key, value in values.items():
        assert lookup(config, key) == value, key
    for key, (pem, file) in API_FILES.items():
        assert lookup(config, key) == f"/var/vcap/jobs/pcapd-api/config/certs/{file}", key
        assert (rendered / "config/certs" / file).read_text() == pki[pem], key
    other = {"local": set(S3_VALUES) - {"storage.kind", "storage.retention_days",
                                        "storage.url_expiry"},
             "s3": {"storage.path", "storage.download_secret"}}[variant]
    assert not {key.split(".", 1)[1] for key in other} & set(config["storage"])
    assert_checks("pcapd-api", rendered)


def test_api_optional_files_are_empty_when_unset(
    api_agents_tls: dict[str, str], out: Path
) -> None:
    props = {"pcapd": {"api": {"agents": {"tls": api_agents_tls},
                               "bosh": {"director": "https://10.0.0.6:25555"}}}}
    rendered = render_job("pcapd-api", props, out)
    for name in ("api.crt", "api.key", "cf-ca.crt", "bosh-ca.crt"):
        assert (rendered / "config/certs" / name).read_text().strip() == ""
    config = rendered_config("pcapd-api", rendered)
    assert config["bosh"] == {"director": "https://10.0.0.6:25555",
                              "tokens": TOKENS_DEFAULTS["bosh"]}
    assert "cf" not in config


@pytest.mark.parametrize(("api", "message"), [
    ({}, r"set pcapd\.api\.cf\.api .*pcapd\.api\.bosh\.director"),
    ({"cf": {"api": "https://api.example.com"}, "storage": {"kind": "nfs"}},
     r"pcapd\.api\.storage\.kind: expected local or s3"),
    ({"cf": {"api": "https://api.example.com"}, "listen": {"tls": {"certificate": "PEM"}}},
     r"pcapd\.api\.listen\.tls: give both"),
    ({"cf": {"api": "https://api.example.com"}, "storage": {"kind": "s3"}},
     r"Can't find property 'pcapd\.api\.storage\.endpoint'"),
    ({"cf": {"api": "https://api.example.com"}, "storage": {"path": "/srv/captures"}},
     r"pcapd\.api\.storage\.path: bpm mounts only"),
])
def test_api_misconfigurations_fail_rendering(
    api: dict[str, Any], message: str, api_agents_tls: dict[str, str], out: Path
) -> None:
    props = {"pcapd": {"api": {**api, "agents": {"tls": api_agents_tls}}}}
    with pytest.raises(RenderError, match=message):
        render_job("pcapd-api", props, out)


@pytest.mark.parametrize(("storage", "expected"), [
    ({"path": "/var/vcap/store/pcapd-api/captures"}, {"persistent_disk": True}),
    ({"path": "/var/vcap/data/pcapd-api/captures"}, {"ephemeral_disk": True}),
    ({"path": "/var/vcap/store/captures"},
     {"additional_volumes": [{"path": "/var/vcap/store/captures", "writable": True}]}),
    ({"kind": "s3", "endpoint": "s3.example.com", "bucket": "pcap", "access_key": "a",
      "secret_key": "b"}, {}),
])
def test_api_bpm_mounts_the_storage(
    storage: dict[str, Any], expected: dict[str, Any], api_agents_tls: dict[str, str], out: Path
) -> None:
    props = {"pcapd": {"api": {"agents": {"tls": api_agents_tls}, "storage": storage,
                               "cf": {"api": "https://api.example.com"}}}}
    bpm = yaml.safe_load((render_job("pcapd-api", props, out) / "config/bpm.yml").read_text())
    (process,) = bpm["processes"]
    assert process["args"] == ["api", "--config", "/var/vcap/jobs/pcapd-api/config/api.yml"]
    assert process["env"] == {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
    assert process["limits"] == {"open_files": 65536}
    assert {k: v for k, v in process.items()
            if k in ("persistent_disk", "ephemeral_disk", "additional_volumes")} == expected


@pytest.mark.parametrize("job", ["pcapd-agent", "pcapd-api"])
def test_monit_runs_the_job_through_bpm(
    job: str, agent_tls: dict[str, str], api_agents_tls: dict[str, str], out: Path
) -> None:
    props = ({"pcapd": {"agent": {"tls": agent_tls}}} if job == "pcapd-agent" else
             {"pcapd": {"api": {"agents": {"tls": api_agents_tls},
                                "cf": {"api": "https://api.example.com"}}}})
    rendered = render_job(job, props, out)
    monit = (rendered / "monit").read_text()
    assert f"check process {job}\n" in monit
    assert f"with pidfile /var/vcap/sys/run/bpm/{job}/{job}.pid" in monit
    assert f'start program "/var/vcap/jobs/bpm/bin/bpm start {job}"' in monit
    assert f'stop program "/var/vcap/jobs/bpm/bin/bpm stop {job}"' in monit
    assert (rendered / CONFIG_FILE[job]).read_text().startswith("# pcapd ")


def test_the_mapping_tests_cover_every_config_key() -> None:
    """A key added to the config model must be added to a template and to the tests above."""
    agent_files = {"tls.certificate", "tls.private_key", "tls.client_ca"}
    assert set(config_keys(AgentConfig)) == set(AGENT_VALUES) | agent_files | AGENT_DIRECTORY
    api = set(API_VALUES) | set(S3_VALUES) | set(API_FILES) | {"storage.path"}
    assert set(config_keys(ApiConfig)) == api
