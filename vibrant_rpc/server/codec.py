"""Raw JSON params into the protocol's types, and results back into JSON builtins."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from ..errors import InvalidParams, validation_problem
from ..protocol import Params

P = TypeVar("P", bound=Params)


def decode_params(method: str, raw: object, cls: type[P]) -> P:
    """Turn raw JSON params into ``cls``; any mismatch is an :class:`InvalidParams`."""
    if raw is None:
        raw = {}
    if (bad := _unencodable(raw)) is not None:
        field, position = bad
        raise InvalidParams(
            method,
            field,
            f"not valid Unicode text: a lone surrogate at character {position} (text must be "
            "whole characters; was it cut inside a surrogate pair?)",
        )
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as err:
        problem = validation_problem(err)
        if problem.unknown is not None:
            name = _shorten(problem.unknown)
            problem = msgspec.structs.replace(
                problem, unknown=name, reason=f"Object contains unknown field `{name}`"
            )
        # A missing field is named by its object's path ("" is the params themselves).
        raise InvalidParams(method, problem.field(missing=False), problem.reason) from None


_MAX_NAME = 100  # characters of a client's unknown key that its error echoes


def _shorten(name: str) -> str:
    """A key as an error names it: a 10 MB key is not sent back (three times) in full."""
    if len(name) <= _MAX_NAME:
        return name
    return f"{name[:_MAX_NAME]}… ({len(name):,} characters)"


def _unencodable(value: object) -> tuple[str, int] | None:
    """The first string in ``value`` that UTF-8 can't encode (JSON's ``\\ud800`` escapes
    decode to lone surrogates), as (field path, character index). A loop over a stack, not
    recursion: params nested as deep as the JSON parser allows must get an answer, not a
    RecursionError."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                return path, err.start
        elif isinstance(item, dict):
            stack.extend(
                reversed([(f"{path}.{k}" if path else str(k), v) for k, v in item.items()])
            )
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(item)]))
    return None


def encode(value: msgspec.Struct) -> Any:
    """A Struct as JSON-ready builtins, camelCase, for pygls to serialise."""
    return msgspec.to_builtins(value)
