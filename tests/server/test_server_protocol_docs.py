"""``protocol/`` is generated from the code's own types: regenerate and compare."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from vibrant_rpc import protocol as p
from vibrant_rpc.protocol import docs as protocol_docs
from vibrant_rpc.server.handlers import HANDLERS

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocol"
HOW = "protocol/ is out of date: run `.venv/bin/python -m vibrant_rpc.protocol.docs`"


def test_protocol_dir_matches_the_code(tmp_path: Path) -> None:
    protocol_docs.write(tmp_path)
    fresh = {str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file()}
    committed = {str(f.relative_to(PROTOCOL_DIR)) for f in PROTOCOL_DIR.rglob("*") if f.is_file()}
    assert fresh == committed, HOW
    for rel in sorted(fresh):
        assert (tmp_path / rel).read_text() == (PROTOCOL_DIR / rel).read_text(), f"{rel}: {HOW}"


def test_every_method_is_served_and_documented() -> None:
    assert set(HANDLERS) == set(p.METHOD_TABLE)
    readme = (PROTOCOL_DIR / "README.md").read_text()
    for method in p.METHODS:
        assert f"### `{method.name}`" in readme
    for error in p.ERROR_CODES:
        assert f"| {error.code} | `{error.kind}` |" in readme


def test_schemas_describe_the_wire_names() -> None:
    index = json.loads((PROTOCOL_DIR / "schema" / "index.json").read_text())
    complete = json.loads(
        (PROTOCOL_DIR / "schema" / index["methods"]["vibrant/complete"]["params"]).read_text()
    )
    assert complete["additionalProperties"] is False
    assert {"prompt", "maxTokens", "partialResultToken"} <= set(complete["properties"])
    assert complete["required"] == ["prompt"]
    # A value that round-trips through the types is what the schema names.
    result = p.CompleteResult(
        text="x", model_id="m", finish_reason="stop", stop_reason="end",
        usage=p.Usage(prompt_tokens=1, completion_tokens=1),
        timings=p.Timings(load_ms=0, total_ms=1), fim=False,
    )  # fmt: skip
    wire = msgspec.json.decode(msgspec.json.encode(result))
    schema = json.loads((PROTOCOL_DIR / "schema" / "CompleteResult.json").read_text())
    assert set(wire) == set(schema["properties"])
