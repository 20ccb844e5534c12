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
        # A missing field is named by its object's path ("" is the params themselves).
        raise InvalidParams(method, problem.field(missing=False), problem.reason) from None


def _unencodable(value: object, path: str = "") -> tuple[str, int] | None:
    """The first string in ``value`` that UTF-8 can't encode (JSON's ``\\ud800`` escapes
    decode to lone surrogates), as (field path, character index)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return path, err.start
        return None
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    for where, inner in items:
        if (found := _unencodable(inner, where)) is not None:
            return found
    return None


def encode(value: msgspec.Struct) -> Any:
    """A Struct as JSON-ready builtins, camelCase, for pygls to serialise."""
    return msgspec.to_builtins(value)
