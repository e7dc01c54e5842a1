"""pcapd.config: every problem named by its key, secrets hidden, file checks apart from parsing."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pcapd.certs import CertPaths, init_certs, make_pki, write_pki
from pcapd.config import (
    AgentConfig,
    ApiConfig,
    LocalStorageConfig,
    S3StorageConfig,
    Secret,
    check_agent_config_file,
    check_api_config_file,
    check_files,
    load_agent_config,
    load_api_config,
    local_api_config,
    parse_agent_config,
    parse_api_config,
)
from pcapd.config.parse import _translate
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


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


# -- examples and defaults -----------------------------------------------------------------------


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


def test_agent_defaults() -> None:
    config = parse_agent_config(AGENT)
    assert isinstance(config, AgentConfig)
    assert (config.listen.address, config.listen.port) == ("0.0.0.0", 9494)
    assert config.limits.concurrent_captures == 5
    assert config.limits.max_snaplen == 65535
    assert config.buffer.size == 1000
    assert config.containers.netns_dir is None
    assert config.drain_timeout == 30.0
    assert config.log.level == "info"


def test_api_defaults() -> None:
    config = parse_api_config(API)
    assert (config.listen.address, config.listen.port, config.listen.tls) == ("0.0.0.0", 8080, None)
    assert config.agents.port == 9494
    assert config.bosh is None
    assert config.storage == LocalStorageConfig(path="/tmp/store", retention_days=7)
    assert config.storage.kind == "local"
    limits = config.limits
    assert (limits.concurrent_captures_per_user, limits.concurrent_captures) == (5, 100)
    assert (limits.max_duration, limits.max_bytes, limits.max_packets) == (3600.0, 1 << 30, None)
    assert (config.buffer.size, config.buffer.upper_limit, config.buffer.lower_limit) == (
        10000,
        9500,
        8000,
    )
    assert config.merge.lateness == 1.0


def test_s3_defaults() -> None:
    storage = parse_api_config(S3).storage
    assert isinstance(storage, S3StorageConfig)
    assert (storage.kind, storage.secure, storage.region, storage.retention_days) == (
        "s3",
        True,
        None,
        7,
    )


def test_configs_are_frozen() -> None:
    config = parse_agent_config(AGENT)
    with pytest.raises(AttributeError):
        config.id = "other"  # type: ignore[misc]


def test_empty_sections_mean_defaults_and_empty_optional_sections_mean_absent() -> None:
    config = parse_agent_config(AGENT + "containers:\nlimits:\n")
    assert config.containers.netns_dir is None
    assert config.limits.concurrent_captures == 5
    assert parse_api_config(API + "bosh:\n").bosh is None


def test_mapping_input_and_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_agent_config({"id": "x"}, "built-in")
    assert str(info.value).startswith("built-in: tls: missing")


# -- problems, all of them, each naming its key --------------------------------------------------


def test_every_problem_is_reported_with_its_key() -> None:
    problems = problems_of(
        parse_agent_config,
        """
id: router/0
listen: {port: abc, adress: 0.0.0.0}
tls: {certificate: a.crt, private_key: a.key}
limits: {concurent_captures: 3, max_snaplen: 300000}
buffer: {size: 900}
drain_timeout: 0
log: {level: loud}
""",
    )
    assert problems == [
        "listen.port: expected an integer between 1 and 65535, got 'abc'",
        "listen.adress: unknown key (did you mean address?)",
        "tls.client_ca: missing — add it: the CA file (PEM) that issued the api's client "
        "certificate; the agent accepts only clients with a certificate from it",
        "limits.concurent_captures: unknown key (did you mean concurrent_captures?)",
        "limits.max_snaplen: expected an integer between 1 and 262144, got 300000",
        "buffer.upper_limit: must not exceed buffer.size (950 > 900) — "
        "lower it or raise buffer.size",
        "drain_timeout: expected a number greater than 0, got 0",
        "log.level: expected one of debug, info, warning, error, got 'loud'",  # the model's order
    ]


def test_config_error_message_names_the_file_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("id: 1\nlisten: {port: 0}\nx: 1\ny: 2\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: id: expected a non-empty string, got 1; ")
    assert str(info.value).endswith("(and 2 more)")


@pytest.mark.parametrize(
    ("buffer", "problem"),
    [
        ("{size: 1000, upper_limit: 800, lower_limit: 800}", "buffer.lower_limit: must be below"),
        ("{size: 1000, upper_limit: 700, lower_limit: 800}", "(800 ≥ 700)"),
        ("{size: 1000, upper_limit: 950, lower_limit: 0}", "buffer.lower_limit: expected an"),
        ("{size: 0}", "buffer.size: expected an integer of at least 1, got 0"),
        ("{size: true}", "buffer.size: expected an integer of at least 1, got true"),
        ("{size: 1.5}", "got 1.5"),
        ("[1, 2]", "buffer: expected a mapping of settings, got a list"),
    ],
)
def test_buffer_rules(buffer: str, problem: str) -> None:
    problems = problems_of(parse_agent_config, AGENT + f"buffer: {buffer}\n")
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("recorder", "problem"),
    [
        ("{storage: directory}", "recorder.directory: storage: directory needs it"),
        ("{storage: directory, directory: rings}",
         "recorder.directory: 'rings' must be an absolute path"),
        ("{storage: directory, directory: /var/vcap/data}",
         "recorder.directory: '/var/vcap/data' is emptied when the agent starts"),
        ("{storage: disk}", "recorder.storage: expected one of"),
        ("{directory: /var/vcap/data/rings}",
         "recorder.directory: only used with recorder.storage: directory"),
        ("{max_bytes: 0}", "recorder.max_bytes: expected an integer of at least 1, got 0"),
        ("{max_bytes: 1GiB}", "recorder.max_bytes: expected an integer"),
        ("{max_recordings: -1}", "recorder.max_recordings: expected an integer of at least 1"),
        ("{max_recording: 3}", "recorder.max_recording: unknown key (did you mean max_recordi"),
    ],
)
def test_recorder_rules(recorder: str, problem: str) -> None:
    problems = problems_of(parse_agent_config, AGENT + f"recorder: {recorder}\n")
    assert any(problem in p for p in problems), problems


def test_recorder_defaults_and_values() -> None:
    assert parse_agent_config(AGENT).recorder.max_bytes == 256 << 20
    recorder = parse_agent_config(AGENT + "recorder: {max_bytes: 1048576, max_recordings: 2}\n")
    assert (recorder.recorder.storage, recorder.recorder.max_bytes,
            recorder.recorder.max_recordings) == ("memory", 1 << 20, 2)


def test_buffer_limit_equal_to_size_is_fine() -> None:
    buffer = parse_agent_config(AGENT + "buffer: {size: 10, upper_limit: 10, lower_limit: 1}\n")
    assert buffer.buffer.upper_limit == 10


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    assert problems_of(parse_agent_config, AGENT + "colour: blue\n") == [
        "colour: unknown key — expected one of id, tls, listen, containers, limits, buffer, "
        "recorder, drain_timeout, log"
    ]


def test_missing_section_says_what_to_add() -> None:
    problems = problems_of(parse_api_config, "id: x\ncf: {api: https://a.example}\n")
    assert problems == [
        "agents: missing — add agents: {tls: ...}",
        "storage: missing — add storage: with kind: local or s3 and its settings",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "config: the document is empty — add at least id, tls"),
        ("- a\n", "config: expected a mapping of settings, got a list"),
        ("id: x\n  tls: [\n", "config: YAML syntax error at line 2, column 6: "),
        ("id: [a\n", "config: YAML syntax error at line 2, column 1"),
        ("1: x\n" + AGENT, "config: key 1 is not a string — quote it or remove it"),
        (AGENT + "id: again\n", "id: duplicate key (lines 2 and 4)"),
        (b"id: \xff\n", "config: not UTF-8 text (byte 0xFF at byte 4, line 1) — save it as "),
        (b"a: 1\nid: \xed\xa0\x80\n", "config: not UTF-8 text (byte 0xED at byte 9, line 2) — "),
        (b"\xff\xfei\x00d\x00", "config: not UTF-8 text (byte 0xFF at byte 0, line 1) — "),
        ("id: \x00\n", "config: not YAML text (character U+0000 at line 1, column 5) — remove it"),
        ("a: 1\nid: x\x07\n", "config: not YAML text (character U+0007 at line 2, column 6) — "),
    ],
)
def test_document_problems(text: str, problem: str) -> None:
    problems = problems_of(parse_agent_config, text)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_utf8_byte_order_mark_is_fine() -> None:
    assert parse_agent_config(b"\xef\xbb\xbf" + AGENT.encode()).id == "router/0"


@pytest.mark.parametrize("parse", [parse_agent_config, parse_api_config])
def test_unreadable_yaml_is_one_problem_not_also_an_empty_document(
        parse: object) -> None:
    problems = problems_of(parse, "id: [unclosed\n")
    assert problems == ["config: YAML syntax error at line 2, column 1: expected ',' or ']', "
                        "but got '<stream end>' — fix the YAML"]


def test_listen_address_must_be_an_address_or_host_name() -> None:
    problems = problems_of(parse_agent_config, AGENT + "listen: {address: 'not an address'}\n")
    assert problems == ["listen.address: expected an IP address or host name, got 'not an address'"]
    assert parse_agent_config(AGENT + "listen: {address: '::'}\n").listen.address == "::"


def test_strings_are_not_numbers() -> None:
    problems = problems_of(parse_agent_config, AGENT + "listen: {port: '9494'}\n")
    assert problems == ["listen.port: expected an integer between 1 and 65535, got '9494'"]


# -- api specifics -------------------------------------------------------------------------------


def test_api_needs_cf_or_bosh_in_a_file() -> None:
    text = API.replace("cf: {api: https://api.sys.example.com}\n", "")
    problems = problems_of(parse_api_config, text)
    assert problems == [
        "cf, bosh: neither is configured — add cf: {api: URL} to capture apps, "
        "bosh: {director: URL} to capture BOSH VMs, or both"
    ]
    assert parse_api_config(text, require_platform=False).cf is None


def test_local_mode_config_is_built_in_code_and_still_validated() -> None:
    tls = {"certificate": "c.crt", "private_key": "c.key", "ca": "ca.crt"}
    config = local_api_config(tls, "/tmp/captures", merge={"lateness": 0.5})
    assert isinstance(config, ApiConfig)
    assert (config.cf, config.bosh) == (None, None)
    assert config.storage == LocalStorageConfig(path="/tmp/captures")
    assert config.merge.lateness == 0.5
    with pytest.raises(ConfigError, match=r"<local mode>: limits.max_bytes: expected"):
        local_api_config(tls, "/tmp/captures", limits={"max_bytes": -1})


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("cf: {api: api.sys.example.com}", "cf.api: expected an http(s) URL such as"),
        ("cf: {api: 'ftp://x'}", "cf.api: expected an http(s) URL"),
        ("cf: {ca: x}", "cf.api: missing"),
        ("bosh: {director: 'https://'}", "bosh.director: expected an http(s) URL"),
        ("listen: {tls: {certificate: a}}", "listen.tls.private_key: missing"),
        ("limits: {max_packets: 0}", "limits.max_packets: expected an integer of at least 1"),
        ("limits: {max_duration: -5}", "limits.max_duration: expected a number greater than 0"),
        ("merge: {lateness: 0}", "merge.lateness: expected a number greater than 0"),
        ("buffer: {size: 9000}", "buffer.upper_limit: must not exceed buffer.size (9500 > 9000)"),
        ("cf: {api: 'https://x', tokens: {clients: []}}",
         "cf.tokens.clients: empty: no token would be accepted"),
        ("bosh: {director: 'https://x', tokens: {clients: [ci, '*']}}",
         "bosh.tokens.clients: '*' already accepts every client"),
    ],
)
def test_api_problems(section: str, problem: str) -> None:
    key = section.partition(":")[0]
    lines = [line for line in API.splitlines() if not line.startswith(key + ":")]
    problems = problems_of(parse_api_config, "\n".join([*lines, section]) + "\n")
    assert any(p.startswith(problem) for p in problems), problems


def test_agents_server_name_must_be_a_dns_name() -> None:
    text = API.replace("agents: {tls:", "agents: {server_name: 'a b', tls:")
    assert problems_of(parse_api_config, text) == [
        "agents.server_name: expected a DNS name, got 'a b'"
    ]


@pytest.mark.parametrize(
    ("storage", "problem"),
    [
        ("{path: /x}", "storage.kind: missing — set it to one of local, s3"),
        ("{kind: disk, path: /x}", "storage.kind: expected one of local, s3, got 'disk'"),
        ("{kind: local}", "storage.path: missing"),
        ("{kind: local, path: /x, bucket: b}", "storage.bucket: not used with kind: local — "),
        ("{kind: local, path: /x, retention_days: 0}", "storage.retention_days: expected an"),
        ("{kind: s3, path: /x}", "storage.path: not used with kind: s3 — remove it, or set kind"),
        ("{kind: s3}", "storage.secret_key: missing"),
        ("{kind: local, path: /x, colour: red}", "storage.colour: unknown key"),
    ],
)
def test_storage_kinds(storage: str, problem: str) -> None:
    problems = problems_of(
        parse_api_config, API.replace("{kind: local, path: /tmp/store}", storage)
    )
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("minio.example.com:9000", True),
        ("minio.example.com", True),
        ("10.0.0.9:9000", True),
        ("[fd00::9]:9000", True),
        ("https://minio.example.com", False),
        ("minio.example.com:99999", False),
        ("minio.example.com:9000/bucket", False),
    ],
)
def test_s3_endpoint(endpoint: str, ok: bool) -> None:
    text = S3.replace("minio.example.com:9000", f"'{endpoint}'")
    if ok:
        assert parse_api_config(text).storage.endpoint == endpoint  # type: ignore[union-attr]
    else:
        assert problems_of(parse_api_config, text)[0].startswith("storage.endpoint: expected host")


@pytest.mark.parametrize("bucket", ["Captures", "ab", "-captures", "a..b", "a_b"])
def test_s3_bucket_name(bucket: str) -> None:
    problems = problems_of(parse_api_config, S3.replace("bucket: captures", f"bucket: '{bucket}'"))
    assert problems[0].startswith(f"storage.bucket: {bucket!r} is not a valid bucket name")


class _Inner(msgspec.Struct):
    size: int


class _Outer(msgspec.Struct):
    buffer: _Inner


def test_msgspec_paths_become_dotted_keys() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"buffer": {"size": "x"}}, _Outer)
    # the dotted key is pcapd's; the reason after it is msgspec's wording (not asserted)
    assert re.fullmatch(r"buffer\.size: [^$]+", _translate(info.value))
    assert re.fullmatch(r"api\.buffer\.size: [^$]+", _translate(info.value, "api"))


# -- secrets -------------------------------------------------------------------------------------


def test_secret_hides_itself() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    assert secret != Secret("other")
    assert len({secret, Secret("hunter2")}) == 1


def test_secret_never_reaches_repr_or_errors() -> None:
    config = parse_api_config(S3)
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(config.storage)
    assert "hunter2" not in str(msgspec.structs.asdict(config.storage))
    # wrong type, wrong place, broken YAML on the secret's line: the value is never echoed
    for text in (
        S3.replace("secret_key: hunter2-very-secret", "secret_key: [hunter2-very-secret]"),
        S3.replace("secret_key: hunter2-very-secret", "secret_key: {hunter2-very-secret: 1}"),
        S3.replace("secret_key: hunter2-very-secret", "secret_kee: hunter2-very-secret"),
        S3.replace("secret_key: hunter2-very-secret", 'secret_key: "hunter2-very-secret'),
        S3.replace("kind: s3", "kind: local\n  path: /x"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_api_config(text)
        assert "hunter2" not in str(info.value)
        assert all("hunter2" not in p for p in info.value.problems), info.value.problems


def test_secret_wrong_type_says_what_kind_was_given() -> None:
    text = S3.replace("secret_key: hunter2-very-secret", "secret_key: 123456")
    assert problems_of(parse_api_config, text) == [
        "storage.secret_key: expected a non-empty string, got an integer"
    ]


# -- file checks ---------------------------------------------------------------------------------


def test_load_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_agent_config("/nonexistent/agent.yml")


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


def test_config_parsing_stays_free_of_trio() -> None:
    code = ("import sys; sys.modules['trio'] = None\n"  # any import of trio fails
            "import pcapd.config, pcapd.config.model, pcapd.config.parse, pcapd.config.files\n"
            "import pcapd.config.describe, pcapd.config.reference, pcapd.certs")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the flight recorder (pcapd record) ----------------------------------------------------------


def test_recorder_defaults() -> None:
    config = parse_api_config(API)
    recorder = config.recorder
    assert (recorder.keep.default, recorder.keep.max) == (300.0, 1800.0)
    assert (recorder.until.default, recorder.until.max) == (8 * 3600.0, 7 * 86400.0)
    assert (recorder.after.default, recorder.after.max) == (30.0, 300.0)
    assert (recorder.max_bytes.default, recorder.max_bytes.max) == (64 << 20, 1 << 30)
    assert (recorder.per_user, recorder.total, recorder.trigger_interval) == (3, 50, 300.0)


def test_recorder_keys_are_set_and_checked_by_name() -> None:
    config = parse_api_config(API + """
recorder:
  keep: {default: 60, max: 7200}
  until: {max: 86400}
  after: {default: 0}
  max_bytes: {default: 1000000, max: 256000000}
  per_user: 1
  total: 10
  trigger_interval: 30
""")
    recorder = config.recorder
    assert (recorder.keep.default, recorder.keep.max, recorder.until.max) == (60, 7200, 86400)
    assert recorder.after.default == 0
    assert recorder.max_bytes.max == 256_000_000
    assert (recorder.per_user, recorder.total, recorder.trigger_interval) == (1, 10, 30)
    assert problems_of(parse_api_config, API + """
recorder:
  keep: {default: 3600}
  until: {default: 0}
  after: {default: -1}
  max_bytes: {default: 2000000000}
  per_user: 0
  trigger_intervall: 30
""") == [
        "recorder.keep.default: must not exceed max (3600 > 1800) — lower it or raise max",
        "recorder.until.default: expected a number greater than 0, got 0",
        "recorder.after.default: expected a number of at least 0, got -1",
        "recorder.max_bytes.default: must not exceed max (2000000000 > 1073741824) — lower it "
        "or raise max",
        "recorder.per_user: expected an integer of at least 1, got 0",
        "recorder.trigger_intervall: unknown key (did you mean trigger_interval?)",
    ]
