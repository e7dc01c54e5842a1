"""Bad input from files a peer or a user controls: only the documented errors, never a crash.

Configs (``ConfigError`` naming the file), the cf and bosh CLI files pcapd reads
(``PcapdError`` with a one-line reason). Arbitrary bytes, and arbitrary JSON-shaped documents
(the likelier kind of damage: wrong types, missing and unknown keys, deep nesting).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd.client.boshcli import load_bosh_environment
from pcapd.client.cfcli import load_cf_config
from pcapd.config import parse_agent_config, parse_api_config
from pcapd.errors import ConfigError, PcapdError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)
KEYS = st.sampled_from(["id", "listen", "tls", "agents", "storage", "cf", "bosh", "limits",
                        "buffer", "containers", "merge", "log", "drain_timeout", "port",
                        "address", "kind", "path", "size", "upper_limit", "lower_limit",
                        "Target", "AccessToken", "RefreshToken", "SpaceFields",
                        "environments", "url", "alias", "access_token", "ca_cert"])
DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children,
                                                                      max_size=6),
    max_leaves=40)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_configs_from_arbitrary_bytes(data: bytes) -> None:
    for parse in (parse_agent_config, parse_api_config):
        try:
            parse(data, "fuzz.yml")
        except ConfigError as exc:
            assert "fuzz.yml" in str(exc)


@FUZZ
@given(DOCUMENTS | JSON)
def test_configs_from_arbitrary_documents(document: object) -> None:
    text = json.dumps(document)  # JSON is YAML: the loader's own path
    for parse in (parse_agent_config, parse_api_config):
        try:
            parse(text, "fuzz.yml")
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) for p in exc.problems)


@FUZZ
@given(st.binary(max_size=300) | DOCUMENTS.map(lambda d: json.dumps(d).encode()))
def test_cli_login_files_from_arbitrary_content(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cf = Path(tmp) / "config.json"
        cf.write_bytes(data)
        bosh = Path(tmp) / "bosh-config"
        bosh.write_bytes(data)
        for load in (lambda: load_cf_config(cf), lambda: load_bosh_environment(bosh, "lab")):
            try:
                load()
            except PcapdError as exc:
                assert "\n" not in str(exc).strip()
