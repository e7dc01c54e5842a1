"""Fixtures of the BOSH release tests: certificates from ``pcapd certs init`` and the values a
director would fill the manifests' ((variables)) with."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.release.release_tools import pcapd_command


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEMs by file stem: ca, agent, api-client, api (``.crt``) and their ``-key``s."""
    directory = tmp_path_factory.mktemp("pki") / "certs"
    subprocess.run([*pcapd_command(), "certs", "init", str(directory)],
                   check=True, capture_output=True, timeout=60)
    pems: dict[str, str] = {}
    for path in directory.iterdir():
        name = path.stem if path.suffix == ".crt" else f"{path.stem}-key"
        pems[name] = path.read_text()
    return pems


def _cert(pki: dict[str, str], name: str) -> dict[str, str]:
    return {"certificate": pki[name], "private_key": pki[f"{name}-key"], "ca": pki["ca"]}


@pytest.fixture(scope="session")
def variables(pki: dict[str, str]) -> dict[str, Any]:
    """What CredHub would hold for the manifests' ((placeholders)), plus the -v values."""
    return {
        "/pcapd_ca": {"certificate": pki["ca"], "private_key": pki["ca-key"], "ca": pki["ca"]},
        "pcapd_agent_tls": _cert(pki, "agent"),
        "pcapd_api_client_tls": _cert(pki, "api-client"),
        "pcapd_api_tls": _cert(pki, "api"),
        "nats_client_cert": _cert(pki, "api-client"),
        "pcapd_download_secret": "0123456789abcdef0123456789abcdef",
        "system_domain": "sys.example.com",
        "pcapd_version": "0.1.0",
    }


@pytest.fixture(scope="session")
def agent_tls(pki: dict[str, str]) -> dict[str, str]:
    """The pcapd.agent.tls properties."""
    return {"certificate": pki["agent"], "private_key": pki["agent-key"], "client_ca": pki["ca"]}


@pytest.fixture(scope="session")
def api_agents_tls(pki: dict[str, str]) -> dict[str, str]:
    """The pcapd.api.agents.tls properties."""
    return {"certificate": pki["api-client"], "private_key": pki["api-client-key"],
            "ca": pki["ca"]}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where a test renders a job: like /var/vcap/jobs/JOB on a VM."""
    return tmp_path / "job"
