"""The config objects: their defaults, the rules each value and each pair of values must
follow (worded ``key: what is wrong — what to do``), and the secret that never shows itself."""

from __future__ import annotations

import pickle

import pytest

from pcapd.config import (
    AgentConfig,
    LocalStorageConfig,
    S3StorageConfig,
    Secret,
    parse_agent_config,
    parse_api_config,
)
from pcapd.config.model import is_host
from tests.config.config_samples import AGENT, API, S3, problems_of


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


def test_listen_address_must_be_an_address_or_host_name() -> None:
    problems = problems_of(parse_agent_config, AGENT + "listen: {address: 'not an address'}\n")
    assert problems == ["listen.address: expected an IP address or host name, got 'not an address'"]
    assert parse_agent_config(AGENT + "listen: {address: '::'}\n").listen.address == "::"


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


def test_secret_hides_itself() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    assert secret != Secret("other")
    assert len({secret, Secret("hunter2")}) == 1


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


def test_a_secret_survives_pickling_and_never_equals_its_plain_text() -> None:
    secret = Secret("hunter2-very-secret")
    assert pickle.loads(pickle.dumps(secret)) == secret  # worker processes get the real value
    assert secret != "hunter2-very-secret"


def test_a_short_download_secret_is_refused_without_being_shown() -> None:
    text = API.replace("path: /tmp/store}", "path: /tmp/store, download_secret: hunter2}")
    assert problems_of(parse_api_config, text) == [
        "storage.download_secret: too short (under 16 characters) — use a long random string, "
        "e.g. the output of `openssl rand -hex 32`"]
    long = API.replace("path: /tmp/store}", "path: /tmp/store, download_secret: 0123456789abcdef}")
    storage = parse_api_config(long).storage
    assert isinstance(storage, LocalStorageConfig) and storage.download_secret is not None
    assert storage.download_secret.reveal() == "0123456789abcdef"


def test_the_external_url_is_an_http_url() -> None:
    assert problems_of(parse_api_config, API + "external_url: pcap.example.com\n") == [
        "external_url: expected an http(s) URL such as https://pcap.sys.example.com, "
        "got 'pcap.example.com'"]
    config = parse_api_config(API + "external_url: https://pcap.sys.example.com\n")
    assert config.external_url == "https://pcap.sys.example.com"


@pytest.mark.parametrize(("text", "ok"), [
    ("10.0.0.1", True), ("::1", True), ("host.example.com", True), ("host.example.com.", True),
    ("localhost", True), ("a." * 126 + "a", True),
    ("", False), ("a b", False), ("-bad.example", False), ("under_score.example", False),
    ("1.2.3.999", False),  # an all-numeric last label is a mistyped address, not a name
    ("x" * 254, False), ("a." * 126 + "ab", False),  # over 253 characters
])
def test_a_host_is_an_ip_address_or_a_dns_name(text: str, ok: bool) -> None:
    assert is_host(text) is ok
