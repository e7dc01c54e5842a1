"""What a config value may be, in English: one describer for the errors of ``--check`` and for
the Type column of the config reference, so the two always say the same.

It reads the types of :mod:`pcapd.config.model` (``Meta`` bounds, literals, ``extra={"what":
…}`` for values a pattern would not explain) and writes a noun phrase with its article:
"an integer between 1 and 65535", "one of debug, info, warning, error", "a file path". An
error reads ``key: expected <phrase>, got <value>``; the reference shows the phrase as it is,
with literal values as code.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect as mi

from pcapd.config.model import Secret


def describe(tp: Any, *, code: Callable[[str], str] = str) -> str:
    """The values a field of type ``tp`` takes, for a person; ``code`` marks a literal value
    (the reference wraps it in backticks). ``None`` is left out: a missing or empty value is
    explained by the default, not the type."""
    members = _members(tp)
    return " or ".join(_member(m, code) for m in members)


def number(value: float) -> str:
    """``65535``, ``5242880 (5 MiB)``, ``0.5``: whole floats without ``.0``, sizes in MiB/GiB."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        mib = value >> 20
        text += f" ({mib >> 10} GiB)" if mib % 1024 == 0 else f" ({mib} MiB)"
    return text


def _members(tp: Any) -> list[Any]:
    """The types a value may have (``Optional`` and unions flattened, ``None`` left out);
    ``Annotated`` kept, as it carries the bounds."""
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(inner) in (typing.Union, types.UnionType):
        return [m for member in typing.get_args(inner) if member is not type(None)
                for m in _members(member)]
    return [tp]


def _member(tp: Any, code: Callable[[str], str]) -> str:
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(inner) is typing.Literal:  # in the order the model gives them
        return "one of " + ", ".join(code(str(v)) for v in typing.get_args(inner))
    if inner is Secret:
        return "a non-empty string"
    if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
        return "a mapping of settings"
    return _info(mi.type_info(tp), code)


def _info(info: mi.Type, code: Callable[[str], str]) -> str:
    if isinstance(info, mi.Metadata):
        what = (info.extra or {}).get("what")
        return str(what) if what else _info(info.type, code)
    if isinstance(info, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(info, mi.IntType) else "a number"
        return f"{noun} {_bounds(info)}".rstrip()
    if isinstance(info, mi.StrType):
        text = "a non-empty string" if info.min_length else "a string"
        return f"{text} matching {code(info.pattern)}" if info.pattern else text
    if isinstance(info, mi.BoolType):
        return f"{code('true')} or {code('false')}"
    if isinstance(info, mi.VarTupleType | mi.ListType):
        item = info.item_type
        if isinstance(item, mi.StrType) and not item.pattern:
            return "a list of non-empty strings" if item.min_length else "a list of strings"
        return f"a list, each {_info(item, code)}"
    if isinstance(info, mi.StructType):
        return "a mapping of settings"
    raise TypeError(f"describe() does not know {info!r} yet: teach it the new kind of value")


def _bounds(info: mi.IntType | mi.FloatType) -> str:
    if info.ge is not None and info.le is not None:
        return f"between {number(info.ge)} and {number(info.le)}"
    low = (f"at least {number(info.ge)}" if info.ge is not None
           else f"greater than {number(info.gt)}" if info.gt is not None else "")
    high = (f"at most {number(info.le)}" if info.le is not None
            else f"less than {number(info.lt)}" if info.lt is not None else "")
    text = " and ".join(b for b in (low, high) if b)
    return f"of {text}" if text.startswith("at ") else text
