"""A small declarative schema for JSON messages from the network.

Every message that arrives from a socket is checked against a table of fields
before any code looks at it: types, lengths, ranges and allowed values, with
unknown fields refused. A failure is a `RemoteError` whose message names the
field, so a peer that sends junk learns exactly what was wrong and the process
that received it carries on.

JSON is parsed by orjson, several times faster than the standard library on a
relayed envelope, but the standard library stays the reference for what is
accepted and what it means. orjson accepts a subset of what ``json.loads``
does (no NaN or Infinity, no lone surrogates, no numbers beyond a float, no
nesting past 1,024), reading it to the same values, except that it reads an
integer beyond 64 bits as a float. So whatever orjson refuses, holds a float
or nests too deeply is parsed again by ``json.loads``, whose answer or error
stands. (No Parley message holds a float, so the second parse is for junk.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ErrorCode, RemoteError

MAX_DEPTH = 8


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    max_len: int | None = None  # str: characters; list: items
    min_value: int | None = None
    max_value: int | None = None
    choices: frozenset[Any] | None = None
    check: Callable[[Any], Any] | None = None  # raises RemoteError if bad


def text(max_len: int, *, required: bool = True, choices: frozenset[str] | None = None) -> Field:
    return Field(str, required=required, max_len=max_len, choices=choices)


def integer(lo: int, hi: int, *, required: bool = True) -> Field:
    return Field(int, required=required, min_value=lo, max_value=hi)


def boolean(*, required: bool = True) -> Field:
    return Field(bool, required=required)


def obj(*, required: bool = True, check: Callable[[Any], Any] | None = None) -> Field:
    return Field(dict, required=required, check=check)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "an object",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def validate(data: Any, fields: Mapping[str, Field], *, what: str) -> dict[str, Any]:
    """Check `data` against `fields`; return it (a dict) or raise RemoteError."""
    # Runs for every frame and envelope a server relays: kept lean (no sets or
    # unions built per call), with the same checks in the same order.
    if not isinstance(data, dict):
        raise RemoteError(f"{what} must be a JSON object", code=ErrorCode.BAD_MESSAGE)
    if not data.keys() <= fields.keys():
        extra = set(data) - set(fields)
        raise RemoteError(
            f"{what} has unknown field(s): {', '.join(sorted(map(str, extra))[:5])}",
            code=ErrorCode.BAD_MESSAGE,
        )
    for name, spec in fields.items():
        value = data.get(name)
        if value is None:
            if spec.required:
                raise RemoteError(f"{what} lacks the field {name!r}", code=ErrorCode.BAD_MESSAGE)
            continue
        kind = spec.kind
        # bool is an int in Python; JSON keeps them apart, so do we.
        if not isinstance(value, kind) or (
                value.__class__ is bool and bool is not kind
                and not (isinstance(kind, tuple) and bool in kind)):
            raise RemoteError(
                f"{what}.{name} must be {_type_name(spec.kind)}", code=ErrorCode.BAD_MESSAGE
            )
        if spec.max_len is not None and isinstance(value, _SIZED) and len(value) > spec.max_len:
            raise RemoteError(
                f"{what}.{name} is longer than {spec.max_len}", code=ErrorCode.TOO_LARGE
            )
        if (spec.min_value is not None or spec.max_value is not None) \
                and isinstance(value, int) and value.__class__ is not bool:
            if spec.min_value is not None and value < spec.min_value:
                raise RemoteError(f"{what}.{name} is below {spec.min_value}")
            if spec.max_value is not None and value > spec.max_value:
                raise RemoteError(f"{what}.{name} is above {spec.max_value}")
        if spec.choices is not None and value not in spec.choices:
            raise RemoteError(
                f"{what}.{name} must be one of {', '.join(sorted(map(str, spec.choices)))}"
            )
        if spec.check is not None:
            spec.check(value)
    return data


_SIZED = (str, list)


def parse_json(raw: str | bytes, *, max_bytes: int, what: str) -> Any:
    """Parse JSON from the network with a size limit and a depth limit."""
    if len(raw) > max_bytes:
        raise RemoteError(
            f"{what} is {len(raw)} bytes; the limit is {max_bytes}", code=ErrorCode.TOO_LARGE
        )
    try:
        value = orjson.loads(raw)
        # Depth first: it bounds the walk for floats (orjson nests up to 1,024 deep).
        if _depth(value) <= MAX_DEPTH and not _holds_float(value):
            return value
    except orjson.JSONDecodeError:
        pass
    # Anything else gets the standard library's own answer, as it always did.
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteError(f"{what} is not valid JSON: {exc}", code=ErrorCode.BAD_MESSAGE) from exc
    if _depth(value) > MAX_DEPTH:
        raise RemoteError(f"{what} is nested too deeply", code=ErrorCode.BAD_MESSAGE)
    return value


def _holds_float(value: Any) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return value.__class__ is float
    for child in children:
        if child.__class__ is float or (isinstance(child, _CONTAINERS) and _holds_float(child)):
            return True
    return False


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return level
    # A scalar child is one level down; only containers need a recursive look.
    deepest = level + 1 if children else level
    for child in children:
        if isinstance(child, _CONTAINERS):
            deepest = max(deepest, _depth(child, level + 1))
    return deepest


_CONTAINERS = (dict, list)
