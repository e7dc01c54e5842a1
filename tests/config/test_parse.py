"""From YAML (or a mapping built in code) to a config object: every problem reported at once,
each named by its dotted key with what to do, in the document's order, and no secret echoed."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from pcapd.config import (
    ApiConfig,
    LocalStorageConfig,
    load_agent_config,
    load_api_config,
    local_api_config,
    parse_agent_config,
    parse_api_config,
)
from pcapd.config.parse import _translate
from pcapd.errors import ConfigError
from tests.config.config_samples import AGENT, API, S3, problems_of


def test_empty_sections_mean_defaults_and_empty_optional_sections_mean_absent() -> None:
    config = parse_agent_config(AGENT + "containers:\nlimits:\n")
    assert config.containers.netns_dir is None
    assert config.limits.concurrent_captures == 5
    assert parse_api_config(API + "bosh:\n").bosh is None


def test_mapping_input_and_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_agent_config({"id": "x"}, "built-in")
    assert str(info.value).startswith("built-in: tls: missing")


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


def test_strings_are_not_numbers() -> None:
    problems = problems_of(parse_agent_config, AGENT + "listen: {port: '9494'}\n")
    assert problems == ["listen.port: expected an integer between 1 and 65535, got '9494'"]


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


def test_load_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_agent_config("/nonexistent/agent.yml")


def test_load_names_the_path_of_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_api_config(tmp_path)
    assert info.value.path == str(tmp_path)
    assert info.value.problems == [
        "config: cannot read the file (Is a directory) — check the path"]


def test_a_null_value_is_named_as_nothing() -> None:
    assert problems_of(parse_agent_config, AGENT + "limits: {concurrent_captures: null}\n") == [
        "limits.concurrent_captures: expected an integer of at least 1, got nothing (null)"]


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    [problem] = problems_of(parse_agent_config, AGENT + f"listen: {{port: '{'9' * 100}'}}\n")
    assert problem == f"listen.port: expected an integer between 1 and 65535, got '{'9' * 56}...'"


def test_a_long_bad_number_is_cut_without_a_quote() -> None:
    [problem] = problems_of(parse_agent_config, AGENT + f"listen: {{port: {'9' * 100}}}\n")
    assert problem == f"listen.port: expected an integer between 1 and 65535, got {'9' * 57}..."


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (AGENT + "listen:\n  port: 1\n  port: 2\n",
         "listen.port: duplicate key (lines 5 and 6)"),
        (AGENT + "x:\n- {a: 1, a: 2}\n", "x[0].a: duplicate key (lines 5 and 5)"),
    ],
)
def test_a_duplicate_key_is_named_by_its_whole_path(text: str, problem: str) -> None:
    problems = problems_of(parse_agent_config, text)
    assert any(p.startswith(problem) for p in problems), problems


def test_aliases_are_walked_once_for_duplicates() -> None:
    """A document of nested aliases (a 'billion laughs') or an alias of its own ancestor is
    checked in one pass over its nodes, not once per path to them."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
        for i in range(12))
    assert not any("duplicate" in p for p in problems_of(parse_agent_config, laughs))
    assert not any("duplicate" in p for p in problems_of(parse_agent_config, "a: &x [*x]\n"))


def test_text_no_unicode_string_can_hold_is_a_problem_not_a_crash() -> None:
    assert problems_of(parse_agent_config, AGENT + 'log: {level: "\\ud800"}\n') == [
        "log.level: holds characters that are not valid Unicode text"]


@pytest.mark.parametrize(
    ("storage", "problem"),
    [
        ("storage:", "storage.kind: missing — set it to one of local, s3"),
        ("storage: [local]", "storage: expected a mapping of settings, got a list"),
        ("storage: {kind: 3}", "storage.kind: expected one of local, s3, got 3"),
    ],
)
def test_a_section_whose_kind_picks_its_keys_needs_the_kind_first(storage: str,
                                                                 problem: str) -> None:
    text = API.replace("storage: {kind: local, path: /tmp/store}", storage)
    assert problems_of(parse_api_config, text) == [problem]


def test_a_section_that_is_not_a_mapping_is_one_problem_not_one_per_key() -> None:
    assert problems_of(parse_agent_config, AGENT + "limits: 5\n") == [
        "limits: expected a mapping of settings, got 5"]
