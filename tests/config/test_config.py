"""pcapd.config as a whole: the example files load, and parsing stays free of Trio.

Each module has its own tests: test_parse.py (YAML to objects, every problem by its key),
test_model.py (defaults and the rules between values), test_files.py (``--check``'s file
checks), test_reference.py (the rendered reference page), test_describe.py (types in words).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pcapd.config import S3StorageConfig, load_agent_config, load_api_config
from tests.config.config_samples import EXAMPLES


def test_example_agent_config() -> None:
    config = load_agent_config(EXAMPLES / "agent.yml")
    assert config.listen.port == 9494
    assert config.tls.client_ca.endswith("/ca.crt")
    assert config.containers.netns_dir == "/var/vcap/data/garden-cni/container-netns"
    assert (config.buffer.size, config.buffer.upper_limit, config.buffer.lower_limit) == (
        1000,
        950,
        800,
    )


@pytest.mark.parametrize("example", ["api.yml", "api-s3.yml"])
def test_example_api_configs(example: str) -> None:
    config = load_api_config(EXAMPLES / example)
    assert config.agents.server_name == "pcap-agent.service.cf.internal"
    assert config.cf is not None
    assert config.limits.max_bytes == 1 << 30


def test_s3_example_hides_its_secret() -> None:
    config = load_api_config(EXAMPLES / "api-s3.yml")
    assert isinstance(config.storage, S3StorageConfig)
    assert config.storage.secret_key.reveal() == "CHANGE-ME"
    assert "CHANGE-ME" not in repr(config)


def test_config_parsing_stays_free_of_trio() -> None:
    code = ("import sys; sys.modules['trio'] = None\n"  # any import of trio fails
            "import pcapd.config, pcapd.config.model, pcapd.config.parse, pcapd.config.files\n"
            "import pcapd.config.describe, pcapd.config.reference, pcapd.certs")
    subprocess.run([sys.executable, "-c", code], check=True)
