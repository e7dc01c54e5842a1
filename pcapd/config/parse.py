"""From YAML text (or a mapping built in code) to a validated, frozen config object.

Every problem is reported, not just the first: the parser walks the raw mapping alongside the
Struct types, checks each value on its own with ``msgspec.convert`` (so the types stay the one
source of truth), and turns each failure into ``key: what is wrong — what to do``. A Struct whose
values are all well typed is then converted and its cross-value ``_rules`` run. Only the two
``load_*`` functions read a file; everything else is pure.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml

from pcapd.config.describe import describe
from pcapd.config.model import AgentConfig, ApiConfig, Secret
from pcapd.errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)
ConfigSource = str | bytes | Mapping[str, object]
"""YAML text, or a mapping built in code (the local mode, tests)."""

_TOP = "config"  # the "key" of a problem with the whole document


def parse_agent_config(data: ConfigSource, source: str = "<agent config>") -> AgentConfig:
    """Validate an agent config; raise :class:`ConfigError` naming ``source`` and every problem."""
    problems: list[str] = []
    raw = _load_yaml(data, problems)
    config = None if _unreadable(raw, problems) else _parse(raw, AgentConfig, problems)
    if config is None or problems:
        raise ConfigError(source, problems)
    return config


def parse_api_config(
    data: ConfigSource, source: str = "<api config>", *, require_platform: bool = True
) -> ApiConfig:
    """Validate an api config; raise :class:`ConfigError` naming ``source`` and every problem.

    A config file must name ``cf`` or ``bosh`` (or both), or the api could authorize nothing;
    the in-process local mode, which has neither, passes ``require_platform=False``.
    """
    problems: list[str] = []
    raw = _load_yaml(data, problems)
    config = None if _unreadable(raw, problems) else _parse(raw, ApiConfig, problems)
    platforms = [raw.get(key) for key in ("cf", "bosh")] if isinstance(raw, Mapping) else []
    if require_platform and platforms and all(p is None for p in platforms):
        problems.append(
            "cf, bosh: neither is configured — add cf: {api: URL} to capture apps, "
            "bosh: {director: URL} to capture BOSH VMs, or both"
        )
    if config is None or problems:
        raise ConfigError(source, problems)
    return config


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate the agent config file at ``path``."""
    return parse_agent_config(_read(path), os.fspath(path))


def load_api_config(path: str | os.PathLike[str]) -> ApiConfig:
    """Read and validate the api config file at ``path``."""
    return parse_api_config(_read(path), os.fspath(path))


def local_api_config(
    agents_tls: Mapping[str, str], storage_path: str, *, api_id: str = "local", **sections: object
) -> ApiConfig:
    """The api config of ``pcapd capture local``: no cf/bosh, the local-disk store.

    Built through the same validation as a file, so a bad value still names its key.
    ``sections`` overrides or adds top-level sections (``limits={...}``, ``merge={...}``).
    """
    data: dict[str, object] = {
        "id": api_id,
        "agents": {"tls": dict(agents_tls)},
        "storage": {"kind": "local", "path": storage_path},
        **sections,
    }
    return parse_api_config(data, "<local mode>", require_platform=False)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            os.fspath(path), [f"{_TOP}: cannot read the file ({reason}) — check the path"]
        ) from exc


# -- YAML ----------------------------------------------------------------------------------------


def _duplicates(node: yaml.Node, path: str = "", seen: set[int] | None = None) -> Iterator[str]:
    """Every key given twice in one mapping of the composed document, named by its whole path
    (``listen.port``), with both lines: YAML itself keeps the last one silently. A node reached
    again through an alias is not walked again (aliases may nest exponentially, or loop)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key_node, value_node in node.value:
            name = path
            if isinstance(key_node, yaml.ScalarNode) and not key_node.tag.endswith(":merge"):
                name = f"{path}.{key_node.value}" if path else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    yield (f"{name}: duplicate key (lines {first[key_node.value]} and {line}) "
                           "— keep one; YAML would silently use the last")
                else:
                    first[key_node.value] = line
            yield from _duplicates(value_node, name, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, f"{path}[{index}]", seen)


def _load_yaml(data: ConfigSource, problems: list[str]) -> object:
    if isinstance(data, Mapping):
        return data
    if isinstance(data, bytes):
        # Decoded here, not by PyYAML's reader: its refusal is the stdlib codec's wording, and
        # it would also take UTF-16 for a byte-order mark. A UTF-8 BOM stays for YAML to skip.
        raw = data
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(_not_utf8(raw, exc.start))
            return None
    try:
        loader = yaml.SafeLoader(data)  # the reader checks the characters right here
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, data))
        return None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems.extend(_duplicates(node))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, data))
        return None
    finally:
        loader.dispose()


def _unreadable(raw: object, problems: list[str]) -> bool:
    """The YAML could not be read (its problem is noted): there is no document to check, and
    calling it empty would be a second, wrong, problem."""
    return raw is None and bool(problems)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    # Built from the parts, never str(exc): that quotes the offending line, which may hold a
    # secret.
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        return f"{_TOP}: YAML syntax error {where}{what} — fix the YAML"
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        # The text is decoded already: the reader refuses a character YAML does not allow
        # (controls but tab and newlines, U+FFFE, U+FFFF); pcapd says where, in its words.
        return (f"{_TOP}: not YAML text (character U+{exc.character:04X} at "
                f"{_line_column(text, exc.position)}) — remove it")
    return f"{_TOP}: not YAML text ({type(exc).__name__}) — fix the YAML"


def _not_utf8(data: bytes, start: int) -> str:
    line = data.count(b"\n", 0, start) + 1
    return (f"{_TOP}: not UTF-8 text (byte 0x{data[start]:02X} at byte {start}, line {line}) "
            "— save it as UTF-8")


def _line_column(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - text.rfind("\n", 0, index)  # rfind is -1 on the first line: 1-based
    return f"line {line}, column {column}"


# -- the walk ------------------------------------------------------------------------------------


def _dec_hook(tp: type, obj: object) -> object:
    if tp is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str) and obj:
            return Secret(obj)
        raise ValueError("expected a non-empty string")
    raise NotImplementedError(f"no conversion to {tp!r}")


def _parse(raw: object, cls: type[T], problems: list[str]) -> T | None:
    before = len(problems)
    normal = _walk_struct(raw, cls, "", problems)
    if len(problems) > before or normal is None:
        return None
    try:
        return msgspec.convert(normal, cls, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:  # a rule the walk does not know: still name the key
        problems.append(_translate(exc))
        return None


def _walk_struct(
    raw: object, cls: type[msgspec.Struct], path: str, problems: list[str]
) -> dict[str, object] | None:
    """Check ``raw`` against ``cls``; return it with empty sections (``null``) made ``{}``."""
    if raw is None and path:
        raw = {}  # "containers:" with every line commented out means "the defaults"
    if raw is None:
        needed = [f.encode_name for f in msgspec.structs.fields(cls) if _required(f)]
        problems.append(f"{_TOP}: the document is empty — add at least {', '.join(needed)}")
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"{path or _TOP}: expected a mapping of settings, got {_shown(raw)}")
        return None
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    tag_field = cls.__struct_config__.tag_field
    before = len(problems)
    normal: dict[str, object] = {}
    for key, value in raw.items():  # in the document's order, so problems read top to bottom
        if key == tag_field:
            normal[key] = value
        elif not isinstance(key, str):
            problems.append(f"{path or _TOP}: key {key!r} is not a string — quote it or remove it")
        elif key not in fields:
            problems.append(_unknown(_join(path, key), key, list(fields)))
        else:
            normal[key] = _walk_value(value, fields[key].type, _join(path, key), problems)
    for name, field in fields.items():
        if name not in raw and _required(field):
            problems.append(f"{_join(path, name)}: missing — {_how_to_add(name, field.type)}")
    if len(problems) == before:
        try:
            section = msgspec.convert(normal, cls, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(_translate(exc, path))
        else:
            rules = getattr(section, "_rules", None)
            for key, what in rules() if rules else ():
                problems.append(f"{_join(path, key)}: {what}")
    return normal


def _walk_value(value: object, tp: Any, path: str, problems: list[str]) -> object:
    members = _union_members(tp)
    structs = [m for m in members if _is_struct(m)]
    if structs and len(structs) == len(members):
        if value is None and _is_optional(tp):
            return None  # an optional section left empty: not configured
        if len(structs) == 1:
            return _walk_struct(value, structs[0], path, problems)
        return _walk_tagged(value, structs, path, problems)
    try:
        msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError:
        shown = _shown(value, hide=_holds_secret(tp))
        problems.append(f"{path}: expected {describe(tp)}, got {shown}")
    except UnicodeError:  # YAML "\ud800" escapes: lone surrogates no text can hold
        problems.append(f"{path}: holds characters that are not valid Unicode text")
    return value


def _walk_tagged(
    raw: object, structs: list[type[msgspec.Struct]], path: str, problems: list[str]
) -> dict[str, object] | None:
    """A section whose ``kind`` picks the Struct; keys of the other kinds are refused by name."""
    tag_field = structs[0].__struct_config__.tag_field or "kind"
    by_tag = {str(s.__struct_config__.tag): s for s in structs}
    choices = ", ".join(by_tag)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a mapping of settings, got {_shown(raw)}")
        return None
    tag = raw.get(tag_field)
    if tag_field not in raw:
        problems.append(f"{path}.{tag_field}: missing — set it to one of {choices}")
        return None
    if not isinstance(tag, str) or tag not in by_tag:
        problems.append(f"{path}.{tag_field}: expected one of {choices}, got {_shown(tag)}")
        return None
    own = {f.encode_name for f in msgspec.structs.fields(by_tag[tag])}
    kept: dict[object, object] = {}
    for key, value in raw.items():
        other = [t for t, s in by_tag.items() if t != tag and _has_field(s, key)]
        if key not in own and key != tag_field and other:
            problems.append(
                f"{path}.{key}: not used with {tag_field}: {tag} — remove it, "
                f"or set {tag_field}: {other[0]}"
            )
        else:
            kept[key] = value
    return _walk_struct(kept, by_tag[tag], path, problems)


# -- wording -------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(path: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"{path}: unknown key (did you mean {close[0]}?)"
    return f"{path}: unknown key — expected one of {', '.join(valid)}"


def _how_to_add(name: str, tp: Any) -> str:
    members = [m for m in _union_members(tp) if _is_struct(m)]
    if len(members) > 1:
        kinds = " or ".join(str(m.__struct_config__.tag) for m in members)
        return f"add {name}: with kind: {kinds} and its settings"
    if members:
        fields = msgspec.structs.fields(members[0])
        required = [f"{f.encode_name}: ..." for f in fields if _required(f)]
        return f"add {name}: {{{', '.join(required)}}}"
    info = mi.type_info(tp)
    if isinstance(info, mi.Metadata) and info.extra_json_schema:
        return f"add it: {info.extra_json_schema['description']}"
    return f"add it ({describe(tp)})"


def _shown(value: object, *, hide: bool = False) -> str:
    """How a bad value appears in a message: quoted when short and not secret, else its kind."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if not hide and isinstance(value, int | float | str):
        text = repr(value)
        if len(text) <= 60:
            return text
        return text[:57] + ("...'" if isinstance(value, str) else "...")
    kinds = {str: "a string", int: "an integer", float: "a number", list: "a list"}
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return "a mapping" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def _translate(exc: msgspec.ValidationError, prefix: str = "") -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.buffer.size``` → ``buffer.size: ...``."""
    message, sep, where = str(exc).rpartition(" - at `")
    if not sep:
        return f"{prefix or _TOP}: {exc}"
    key = where.rstrip("`").removeprefix("$").removeprefix(".")
    return f"{_join(prefix, key) if key else prefix or _TOP}: {message[:1].lower()}{message[1:]}"


# -- types ---------------------------------------------------------------------------------------


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for m in typing.get_args(tp) if m is not type(None)]
    return [tp]


def _required(field: msgspec.structs.FieldInfo) -> bool:
    return field.default is msgspec.NODEFAULT and field.default_factory is msgspec.NODEFAULT


def _is_optional(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return type(None) in typing.get_args(tp)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _has_field(cls: type[msgspec.Struct], key: object) -> bool:
    return any(f.encode_name == key for f in msgspec.structs.fields(cls))


def _holds_secret(tp: Any) -> bool:
    return Secret in _union_members(tp)
