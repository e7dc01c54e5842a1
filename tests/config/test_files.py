"""``--check``'s file checks: the certificates, keys, CAs and directories a config names exist,
parse, belong together and are in date; problems fail the check, warnings do not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pcapd.certs import CertPaths, init_certs, make_pki, write_pki
from pcapd.config import (
    AgentConfig,
    check_agent_config_file,
    check_api_config_file,
    check_files,
    local_api_config,
    parse_agent_config,
    parse_api_config,
)
from tests.config.config_samples import EXAMPLES, render


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


def test_rendered_examples_pass_the_file_checks(certs: CertPaths, tmp_path: Path) -> None:
    agent = check_agent_config_file(render("agent.yml", certs.directory, tmp_path))
    assert agent.ok, agent.problems
    assert all(w.startswith("containers.") for w in agent.warnings), agent.warnings
    for example in ("api.yml", "api-s3.yml"):
        api = check_api_config_file(render(example, certs.directory, tmp_path))
        assert api.ok, api.problems


def test_unrendered_examples_fail_the_file_checks_by_key() -> None:
    result = check_agent_config_file(EXAMPLES / "agent.yml")
    assert not result.ok
    assert result.problems[0].startswith(
        "tls.certificate: /var/vcap/jobs/pcapd-agent/config/certs/agent.crt: no such file"
    )


def test_parse_problems_come_back_as_check_problems(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("id: x\n")
    result = check_agent_config_file(path)
    assert result.problems == [
        "tls: missing — add tls: {certificate: ..., private_key: ..., client_ca: ...}"
    ]


def agent_config(certs: CertPaths, **tls: str) -> AgentConfig:
    files = {
        "certificate": str(certs.agent_cert),
        "private_key": str(certs.agent_key),
        "client_ca": str(certs.ca_cert),
    }
    return parse_agent_config({"id": "a/0", "tls": files | tls})


def test_expired_and_future_certificates(tmp_path: Path) -> None:
    old = write_pki(make_pki(now=datetime.now(UTC) - timedelta(days=400)), tmp_path / "old")
    result = check_files(agent_config(old))
    assert any(
        p.startswith(f"tls.certificate: {old.agent_cert}: certificate") and "expired on" in p
        for p in result.problems
    ), result.problems
    future = check_files(agent_config(old), now=datetime.now(UTC) - timedelta(days=500))
    assert any("is not valid before" in p and "check the clock" in p for p in future.problems)


def test_certificate_close_to_expiry_is_a_warning(certs: CertPaths) -> None:
    result = check_files(agent_config(certs), now=datetime.now(UTC) + timedelta(days=350))
    assert result.ok
    assert any("renew it soon" in w for w in result.warnings)


def test_key_that_does_not_match_the_certificate(certs: CertPaths) -> None:
    result = check_files(agent_config(certs, private_key=str(certs.api_key)))
    assert result.problems == [
        f"tls.private_key: {certs.api_key}: does not match tls.certificate {certs.agent_cert} — "
        "the certificate was issued for another key"
    ]


def test_client_certificate_used_as_server_certificate(certs: CertPaths) -> None:
    config = agent_config(
        certs, certificate=str(certs.api_client_cert), private_key=str(certs.api_client_key)
    )
    (problem,) = check_files(config).problems
    assert problem.startswith("tls.certificate:") and "not for TLS server authentication" in problem


def test_readable_key_is_a_warning_not_a_problem(tmp_path: Path) -> None:
    paths = init_certs(tmp_path / "certs")
    paths.agent_key.chmod(0o640)
    result = check_files(agent_config(paths))
    assert result.ok
    assert result.warnings == [
        f"tls.private_key: {paths.agent_key}: readable by group or others (mode 0640) — "
        "chmod 600 it"
    ]


def test_unreadable_files(certs: CertPaths, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    encrypted.chmod(0o600)
    config = agent_config(
        certs, certificate=str(garbage), private_key=str(encrypted), client_ca=str(tmp_path)
    )
    assert check_files(config).problems == [
        f"tls.certificate: {garbage}: not a PEM certificate — expected -----BEGIN CERTIFICATE-----",
        f"tls.private_key: {encrypted}: is encrypted — give pcapd an unencrypted key protected "
        "by file permissions",
        f"tls.client_ca: {tmp_path}: is a directory — name a PEM file",
    ]


def test_ca_that_is_not_a_ca_is_a_warning(certs: CertPaths) -> None:
    result = check_files(agent_config(certs, client_ca=str(certs.api_cert)))
    assert result.ok
    assert any(w.startswith("tls.client_ca:") and "no CA certificate" in w for w in result.warnings)


def test_api_file_checks(certs: CertPaths, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "store"
    not_a_dir.write_text("")
    config = parse_api_config(
        {
            "id": "api/0",
            "listen": {"tls": {"certificate": str(certs.api_cert), "private_key": "/no/key"}},
            "agents": {
                "tls": {
                    "certificate": str(certs.api_client_cert),
                    "private_key": str(certs.api_client_key),
                    "ca": str(certs.ca_cert),
                }
            },
            "cf": {"api": "https://api.example.com", "ca": "/no/cf-ca.crt"},
            "bosh": {"director": "https://10.0.0.6:25555", "ca": str(certs.ca_cert)},
            "storage": {"kind": "local", "path": str(not_a_dir)},
        }
    )
    assert check_files(config).problems == [
        "listen.tls.private_key: /no/key: no such file — create it or fix the path",
        "cf.ca: /no/cf-ca.crt: no such file — create it or fix the path",
        f"storage.path: {not_a_dir}: is not a directory — name a directory",
    ]


def test_agent_certificate_used_as_api_client_certificate(certs: CertPaths) -> None:
    config = local_api_config(
        {
            "certificate": str(certs.agent_cert),
            "private_key": str(certs.agent_key),
            "ca": str(certs.ca_cert),
        },
        str(certs.directory),
    )
    (problem,) = check_files(config).problems
    assert problem.startswith("agents.tls.certificate:")
    assert "not for TLS client authentication" in problem


def test_a_key_that_is_not_pem_is_a_problem(certs: CertPaths, tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    key.write_text("ssh-ed25519 AAAA... not a TLS key\n")
    key.chmod(0o600)
    assert check_files(agent_config(certs, private_key=str(key))).problems == [
        f"tls.private_key: {key}: not a PEM private key — expected -----BEGIN ... PRIVATE KEY-----"
    ]


def test_container_paths_the_runtime_creates_later_are_warnings(certs: CertPaths,
                                                               tmp_path: Path) -> None:
    files = {"certificate": str(certs.agent_cert), "private_key": str(certs.agent_key),
             "client_ca": str(certs.ca_cert)}
    missing = parse_agent_config({"id": "a/0", "tls": files, "containers": {
        "netns_dir": str(tmp_path / "netns"), "metadata_store": str(tmp_path / "store.json")}})
    result = check_files(missing)
    assert result.ok
    assert result.warnings == [
        f"containers.netns_dir: {tmp_path / 'netns'}: does not exist yet — fine if the "
        "container runtime creates it",
        f"containers.metadata_store: {tmp_path / 'store.json'}: does not exist yet — fine if "
        "the container runtime creates it",
    ]
    (tmp_path / "netns").write_text("")
    (tmp_path / "store.json").mkdir()
    swapped = check_files(missing)
    assert swapped.problems == [
        f"containers.netns_dir: {tmp_path / 'netns'}: is not a directory — name a directory",
        f"containers.metadata_store: {tmp_path / 'store.json'}: is a directory — name a file",
    ]


def test_a_store_directory_not_there_yet_is_created_later(certs: CertPaths,
                                                         tmp_path: Path) -> None:
    config = local_api_config(
        {"certificate": str(certs.api_client_cert), "private_key": str(certs.api_client_key),
         "ca": str(certs.ca_cert)}, str(tmp_path / "captures"))
    result = check_files(config)
    assert result.ok, result.problems
    assert result.warnings == [
        f"storage.path: {tmp_path / 'captures'}: does not exist yet — pcapd will create it"]
