"""Config texts and helpers shared by the tests of pcapd.config's modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcapd.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
JOB_CERTS = ("/var/vcap/jobs/pcapd-agent/config/certs", "/var/vcap/jobs/pcapd-api/config/certs")

AGENT = """
id: router/0
tls: {certificate: a.crt, private_key: a.key, client_ca: ca.crt}
"""
API = """
id: pcap-api/0
agents: {tls: {certificate: c.crt, private_key: c.key, ca: ca.crt}}
cf: {api: https://api.sys.example.com}
storage: {kind: local, path: /tmp/store}
"""
S3 = """
id: pcap-api/0
agents: {tls: {certificate: c.crt, private_key: c.key, ca: ca.crt}}
bosh: {director: "https://10.0.0.6:25555"}
storage:
  kind: s3
  endpoint: minio.example.com:9000
  bucket: captures
  access_key: pcapd
  secret_key: hunter2-very-secret
"""


def problems_of(parse: object, text: str | dict[str, object]) -> list[str]:
    assert callable(parse)
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def render(example: str, certs: Path, directory: Path) -> Path:
    """An example config with its certificate directory pointed at ``certs``."""
    text = (EXAMPLES / example).read_text()
    for job_certs in JOB_CERTS:
        text = text.replace(job_certs, str(certs))
    path = directory / example
    path.write_text(text)
    return path
