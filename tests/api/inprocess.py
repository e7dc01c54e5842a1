"""Configurations for an agent and an api run in the test's own process (mutual TLS between
them on loopback, with certificates made for the test): the shared setup of the api tests
that need a real agent but not the platform fakes."""

from __future__ import annotations

from pathlib import Path

import msgspec

from pcapd.certs import init_certs
from pcapd.config import AgentConfig, ApiConfig, local_api_config, parse_agent_config
from pcapd.config.model import AgentListenConfig, ApiListenConfig


def in_process_configs(tmp: Path, **api_sections: object) -> tuple[AgentConfig, ApiConfig]:
    """An agent's and an api's configuration, both on 127.0.0.1 port 0 (any free port);
    ``api_sections`` are api configuration sections (``limits={...}``, ...)."""
    pki = init_certs(tmp / "pki")
    agent_config = msgspec.structs.replace(parse_agent_config({
        "id": "agent", "containers": {"netns_dir": "/run/netns"},
        "tls": {"certificate": str(pki.agent_cert), "private_key": str(pki.agent_key),
                "client_ca": str(pki.ca_cert)}}),
        listen=AgentListenConfig(address="127.0.0.1", port=0))
    api_config = msgspec.structs.replace(local_api_config(
        {"certificate": str(pki.api_client_cert), "private_key": str(pki.api_client_key),
         "ca": str(pki.ca_cert)}, str(tmp / "store"), **api_sections),
        listen=ApiListenConfig(address="127.0.0.1", port=0))
    return agent_config, api_config
