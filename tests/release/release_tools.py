"""Helpers of the BOSH release tests: render job templates with Ruby's ERB, apply ops-files,
fill ((variables)), run ``pcapd ... --check``, and list the config model's keys.

Rendering goes through ``erb_shim.rb``, which stands in for bosh-template's ``p()``/``if_p()``.
Ops-files are applied by a small go-patch (the bosh CLI's ops-file engine) for the operations
the release's files use: ``replace`` with key, ``key?``, ``name=value``, index and ``-`` tokens.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "release"
JOBS = RELEASE / "jobs"
MANIFESTS = RELEASE / "manifests"
SHIM = Path(__file__).with_name("erb_shim.rb")
IN_CI = os.environ.get("CI") == "true"

needs_ruby = pytest.mark.skipif(
    shutil.which("ruby") is None and not IN_CI,
    reason="needs ruby to render ERB templates (dev/setup installs it)",
)

ROLE = {"pcapd-agent": "agent", "pcapd-api": "api"}
CONFIG_FILE = {"pcapd-agent": "config/agent.yml", "pcapd-api": "config/api.yml"}


class RenderError(Exception):
    """The shim (that is, a template or a property lookup) failed; the message is its stderr."""


def render_job(
    job: str, properties: dict[str, Any], out: Path, instance: dict[str, Any] | None = None
) -> Path:
    """Render every template (and monit) of ``job`` into ``out``, as BOSH would on a VM."""
    out.mkdir(parents=True, exist_ok=True)
    props = out / "manifest-properties.json"
    props.write_text(json.dumps(properties))
    args = ["ruby", str(SHIM), str(JOBS / job), str(props), str(out)]
    if instance is not None:
        spec = out / "instance.json"
        spec.write_text(json.dumps(instance))
        args.append(str(spec))
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return out


def rendered_config(job: str, rendered: Path) -> dict[str, Any]:
    """The rendered config file, parsed as pcapd parses it (YAML)."""
    import yaml

    data = yaml.safe_load((rendered / CONFIG_FILE[job]).read_text())
    assert isinstance(data, dict)
    return data


def localize(job: str, rendered: Path) -> Path:
    """A copy of the rendered config whose /var/vcap/jobs/JOB paths point into ``rendered``.

    The rendered certificate and key files get BOSH's mode (0640) on the way.
    """
    for key in (rendered / "config" / "certs").glob("*.key"):
        key.chmod(0o640)
    source = rendered / CONFIG_FILE[job]
    local = source.with_name(f"local-{source.name}")
    local.write_text(source.read_text().replace(f"/var/vcap/jobs/{job}", str(rendered)))
    return local


def pcapd_command() -> list[str]:
    """The ``pcapd`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("pcapd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pcapd.cli"]


def check_config(job: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``pcapd agent|api --config FILE --check``."""
    return subprocess.run(
        [*pcapd_command(), ROLE[job], "--config", str(config), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )


# -- manifests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # key, index, append, match
    key: str = ""
    value: str = ""
    index: int = 0
    optional: bool = False


def _decode(text: str) -> str:
    for escaped, plain in (("~1", "/"), ("~2", "?"), ("~3", "="), ("~7", ":"), ("~0", "~")):
        text = text.replace(escaped, plain)
    return text


def parse_path(path: str) -> list[_Token]:
    """go-patch's pointer syntax; a ``?`` makes its token and every later one optional."""
    assert path.startswith("/"), path
    tokens: list[_Token] = []
    optional = False
    parts = path.split("/")[1:]
    for i, part in enumerate(parts):
        if part == "-" and i == len(parts) - 1:
            tokens.append(_Token("append"))
            continue
        if re.fullmatch(r"-?\d+", part):
            tokens.append(_Token("index", index=int(part)))
            continue
        optional = optional or part.endswith("?")
        name = part.removesuffix("?")
        if "=" in name:
            key, value = name.split("=", 1)
            tokens.append(_Token("match", _decode(key), _decode(value), optional=optional))
        else:
            tokens.append(_Token("key", _decode(name), optional=optional))
    return tokens


def _missing(rest: list[_Token]) -> Any:
    return [] if rest and rest[0].kind in ("append", "match", "index") else {}


def _replace(node: Any, tokens: list[_Token], value: Any, path: str) -> Any:
    if not tokens:
        return value
    token, rest = tokens[0], tokens[1:]
    if token.kind == "key":
        if not isinstance(node, dict):
            raise KeyError(f"{path}: expected a map at {token.key!r}")
        if token.key not in node:
            if not token.optional:
                raise KeyError(f"{path}: no key {token.key!r}")
            node[token.key] = _missing(rest)
        node[token.key] = _replace(node[token.key], rest, value, path)
        return node
    if not isinstance(node, list):
        raise KeyError(f"{path}: expected a list")
    if token.kind == "append":
        node.append(value)
        return node
    if token.kind == "index":
        node[token.index] = _replace(node[token.index], rest, value, path)
        return node
    hits = [i for i, item in enumerate(node)
            if isinstance(item, dict) and item.get(token.key) == token.value]
    if len(hits) > 1:
        raise KeyError(f"{path}: {token.key}={token.value} matches {len(hits)} items")
    if not hits:
        if not token.optional:
            raise KeyError(f"{path}: nothing matches {token.key}={token.value}")
        node.append(value if not rest else {token.key: token.value})
        if not rest:
            return node
        hits = [len(node) - 1]
    node[hits[0]] = _replace(node[hits[0]], rest, value, path)
    return node


def apply_ops(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """``bosh int DOC -o OPS`` for ``replace`` operations."""
    result = copy.deepcopy(doc)
    for op in ops:
        assert op["type"] == "replace", f"unsupported op type {op['type']!r}"
        result = _replace(result, parse_path(op["path"]), copy.deepcopy(op["value"]), op["path"])
    return result


_VAR = re.compile(r"\(\(([^()]+)\)\)")


def interpolate(doc: Any, variables: dict[str, Any]) -> Any:
    """Fill ``((name))`` and ``((name.field))`` placeholders, as the director does."""

    def lookup(name: str) -> Any:
        base, _, field = name.partition(".")
        if base not in variables:
            raise KeyError(f"no value for (({name}))")
        value = variables[base]
        return value[field] if field else value

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(item) for item in node]
        if isinstance(node, str):
            whole = _VAR.fullmatch(node)
            if whole:
                return lookup(whole.group(1))
            return _VAR.sub(lambda m: str(lookup(m.group(1))), node)
        return node

    return fill(doc)


# -- the config model --------------------------------------------------------------------------


def _structs(t: mi.Type) -> list[mi.StructType]:
    if isinstance(t, mi.StructType):
        return [t]
    if isinstance(t, mi.UnionType):
        return [s for member in t.types for s in _structs(member)]
    return []


def config_keys(model: type[msgspec.Struct]) -> dict[str, Any]:
    """Every leaf key of a config Struct, dotted, with its default (``msgspec.NODEFAULT``
    when required). A tagged union contributes its tag field and all its members' keys."""
    keys: dict[str, Any] = {}

    def walk(struct: mi.StructType, prefix: str) -> None:
        if struct.tag_field is not None:
            keys.setdefault(prefix + struct.tag_field, msgspec.NODEFAULT)
        for field in struct.fields:
            name = prefix + field.name
            nested = _structs(field.type)
            if nested:
                for sub in nested:
                    walk(sub, name + ".")
            else:
                default = field.default
                if default is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
                    default = field.default_factory()
                if isinstance(default, tuple):  # a list in YAML
                    default = list(default)
                keys.setdefault(name, default)

    info = mi.type_info(model)
    assert isinstance(info, mi.StructType)
    walk(info, "")
    return keys
