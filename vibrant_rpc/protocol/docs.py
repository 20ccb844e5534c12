"""Generate ``protocol/``: the Markdown reference and a JSON Schema per params and result
type, from the msgspec types in ``vibrant_rpc.protocol`` (and ``config.Settings``).

``python -m vibrant_rpc.protocol.docs [OUT_DIR]`` rewrites them; a test regenerates
them into a temporary folder and fails on any difference, so the reference never
drifts from the code. Field descriptions are the comments beside the fields.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from .. import config
from .. import protocol as p

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "protocol"
_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:.*?#\s*(.+?)\s*$")


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a class body, by field name."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD_COMMENT.match(line)
        name = m.group(1) if m else re.match(r"^\s+(\w+)\s*:", line)
        if m:
            out[m.group(1)] = " ".join([*pending, m.group(2)])
        elif isinstance(name, re.Match) and pending:
            out[name.group(1)] = " ".join(pending)
        pending = []
    return out


def _escape(text: str) -> str:
    """Markdown table cells: no HTML tags, no column breaks."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _anchor(name: str) -> str:
    return name.lower()


def _constraints(t: Any) -> str:
    parts = []
    for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(t, attr, None)
        if value is not None:
            parts.append(f"{sym} {value}")
    for attr, what in (("min_length", "min length"), ("max_length", "max length")):
        value = getattr(t, attr, None)
        if value is not None:
            parts.append(f"{what} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def render_type(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        return render_type(t.type)
    if isinstance(t, mi.UnionType):
        return " \\| ".join(render_type(x) for x in t.types)
    if isinstance(t, mi.StructType):
        name = t.cls.__name__
        return f"[{name}](#{_anchor(name)})"
    if isinstance(t, mi.ListType):
        return f"{render_type(t.item_type)}[]" + _constraints(t)
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(json.dumps(v) for v in t.values)
    simple = {
        mi.IntType: "integer",
        mi.FloatType: "number",
        mi.StrType: "string",
        mi.BoolType: "boolean",
        mi.NoneType: "null",
        mi.DateTimeType: "string (date-time)",
        mi.AnyType: "any",
    }
    for cls, name in simple.items():
        if isinstance(t, cls):
            return name + _constraints(t)
    return type(t).__name__


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    factory = field.default_factory
    value = factory() if factory is not msgspec.NODEFAULT else field.default
    return "`" + msgspec.json.encode(value).decode() + "`"


def _struct_table(cls: type[msgspec.Struct]) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    comments = _field_comments(cls)
    if not info.fields:
        return ["No fields: `params` may be absent, `null` or `{}`.", ""]
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for f in info.fields:
        desc = _escape(comments.get(f.name, ""))
        rows.append(f"| `{f.encode_name}` | {render_type(f.type)} | {_default(f)} | {desc} |")
    return [*rows, ""]


def _nested(cls: type[msgspec.Struct], seen: set[type]) -> Iterator[type[msgspec.Struct]]:
    """Struct types used inside ``cls`` (not ``cls`` itself), depth first."""

    def walk(t: mi.Type) -> Iterator[type[msgspec.Struct]]:
        if isinstance(t, mi.StructType):
            if t.cls not in seen:
                seen.add(t.cls)
                yield t.cls
                for f in t.fields:
                    yield from walk(f.type)
        elif isinstance(t, mi.UnionType):
            for x in t.types:
                yield from walk(x)
        elif isinstance(t, mi.ListType):
            yield from walk(t.item_type)
        elif isinstance(t, mi.Metadata):
            yield from walk(t.type)

    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        yield from walk(f.type)


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    inherited = {inspect.getdoc(b) for b in cls.__mro__[1:]}
    return "" if doc in inherited else doc


SETTING_NOTES = {
    "model": "The model to load when a request names none and nothing is loaded.",
    "cache_size_limit": 'Largest size of the model cache (`"60GiB"` or bytes); '
    "unlimited when absent.",
    "context_size": "Context window of the loaded model, in tokens.",
    "threads": "CPU threads for llama.cpp; default: the physical cores.",
    "batch_size": "Prompt tokens evaluated per batch.",
    "mmap": "Map the model file instead of reading it into memory.",
    "mlock": "Lock the model in RAM (no swapping).",
    "gpu_layers": "Layers offloaded to a GPU (-1: all).",
    "keep_alive_s": "Seconds an idle model stays loaded; 0 = never unload.",
    "auto_update": "Look for newer revisions of downloaded models (off).",
    "download_connections": "Parallel connections per file download.",
}


def _settings_table() -> list[str]:
    info = mi.type_info(config.Settings)
    assert isinstance(info, mi.StructType)
    comments = _field_comments(config.Settings)
    rows = [
        "| `config.toml` | `initializationOptions` | type | default | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in info.fields:
        camel = config._camel(f.name)
        default = "physical cores" if f.name == "threads" else _default(f)
        desc = _escape(SETTING_NOTES.get(f.name) or comments.get(f.name, ""))
        rows.append(f"| `{f.name}` | `{camel}` | {render_type(f.type)} | {default} | {desc} |")
    return [*rows, ""]


HEADER = """\
# The vibrant-rpc protocol

<!-- Generated by `python -m vibrant_rpc.protocol.docs` from vibrant_rpc/protocol/;
     do not edit by hand (a test fails when this file and the code differ). -->

`vibrant-rpc` (or `python -m vibrant_rpc`) is a JSON-RPC 2.0 server on stdin/stdout
with LSP framing (`Content-Length` headers). It accepts and ignores `--stdio`.
Editors speak to it as to a language server:

1. `initialize` with the settings below as `initializationOptions` (camelCase), then
   `initialized`. Settings come from `initializationOptions`, then
   `~/.vibrant/config.toml` (snake_case keys), then the defaults; an unknown or bad
   option is dropped with a `window/showMessage` warning.
2. The `vibrant/*` requests below, in any order and concurrently.
3. `shutdown`, then `exit` (exit code 0; 1 without `shutdown`).

Nothing but protocol goes to stdout; logs go to stderr and `window/logMessage`.
Starting the server loads no model and touches no network: the first `vibrant/complete`
(or `vibrant/loadModel`) loads one; nothing is downloaded unless asked.

All field names are camelCase. Params objects reject unknown fields (-32602, naming
the field). Long requests (downloads, loads, completions) are cancelled with
`$/cancelRequest`, or with `window/workDoneProgress/cancel` on their progress token,
and then answer -32800; a cancelled download keeps its partial file and the next
`vibrant/downloadModel` resumes it.

Work-done progress (`$/progress` begin/report/end, `cancellable: true`) is sent for
downloads and loads on the request's `workDoneToken`, or on a token the server creates
with `window/workDoneProgress/create` when the client declares
`window.workDoneProgress`.

JSON Schemas of every params and result type are in [`schema/`](schema/).
"""


def render_readme() -> str:
    out = [HEADER, "## Methods", ""]
    out.append("| method | params | result | summary |")
    out.append("| --- | --- | --- | --- |")
    for m in p.METHODS:
        result = m.result.__name__ if m.result else "null"
        out.append(
            f"| [`{m.name}`](#{_anchor(m.name.replace('/', ''))}) | "
            f"[{m.params.__name__}](#{_anchor(m.params.__name__)}) | "
            f"[{result}](#{_anchor(result)}) | {m.summary.split('. ')[0].rstrip('.')}. |"
        )
    out.append("")
    documented: set[type] = set()
    for m in p.METHODS:
        out += [f"### `{m.name}`", "", m.summary, ""]
        for role, cls in (("Params", m.params), ("Result", m.result)):
            if cls is None:
                continue
            if cls in documented:  # shared by several methods: described once
                out += [f"**{role}: [`{cls.__name__}`](#{_anchor(cls.__name__)})**", ""]
                continue
            out += [f'<a id="{_anchor(cls.__name__)}"></a>**{role}: `{cls.__name__}`**']
            out += [f"(schema: [`schema/{cls.__name__}.json`](schema/{cls.__name__}.json))", ""]
            if doc := _doc(cls):
                out += [doc, ""]
            out += _struct_table(cls)
            documented.add(cls)
        if m.progress:
            out += ["Reports `$/progress` on `workDoneToken` (or a server-made token).", ""]
        if m.errors:
            out += ["Errors: " + ", ".join(f"`{e}`" for e in m.errors) + ".", ""]
    out += ["## Notifications (server to client)", ""]
    for n in p.NOTIFICATIONS:
        out += [f"### `{n.name}`", "", n.summary, ""]
        if n.params not in documented:
            out += [f'<a id="{_anchor(n.params.__name__)}"></a>**`{n.params.__name__}`**', ""]
            out += _struct_table(n.params)
            documented.add(n.params)
    out += ["## Types", ""]
    roots: list[type[msgspec.Struct]] = [m.params for m in p.METHODS]
    roots += [m.result for m in p.METHODS if m.result] + [n.params for n in p.NOTIFICATIONS]
    seen = set(documented)
    for root in roots:
        for cls in _nested(root, seen):
            out += [f"### {cls.__name__}", ""]
            if doc := _doc(cls):
                out += [doc, ""]
            out += _struct_table(cls)
    out += ["## Errors", "", "Every error's `data` is an object with `kind` and details.", ""]
    out += ["| code | kind | meaning |", "| --- | --- | --- |"]
    out += [f"| {e.code} | `{e.kind}` | {e.meaning} |" for e in p.ERROR_CODES]
    out += ["", "## Settings", ""]
    out += _settings_table()
    return "\n".join(out).rstrip() + "\n"


def schema_types() -> list[type[msgspec.Struct]]:
    types: list[type[msgspec.Struct]] = []
    for m in p.METHODS:
        types += [m.params] + ([m.result] if m.result else [])
    types += [n.params for n in p.NOTIFICATIONS]
    return list(dict.fromkeys(types))


def render_schemas() -> dict[str, str]:
    """File name → JSON text: one self-contained schema per type (shared ``$defs``)."""
    types = schema_types()
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    out: dict[str, str] = {}
    for cls, schema in zip(types, schemas, strict=True):
        name = cls.__name__
        body = dict(components[name]) if "$ref" in schema else dict(schema)
        refs = _refs(body, components)
        doc: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://vibrant.invalid/protocol/schema/{name}.json",
            **body,
        }
        if refs:
            doc["$defs"] = {r: components[r] for r in sorted(refs)}
        out[f"{name}.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    index = {
        "methods": {
            m.name: {
                "params": f"{m.params.__name__}.json",
                "result": f"{m.result.__name__}.json" if m.result else None,
            }
            for m in p.METHODS
        },
        "notifications": {n.name: f"{n.params.__name__}.json" for n in p.NOTIFICATIONS},
        "errors": {e.kind: e.code for e in p.ERROR_CODES},
    }
    out["index.json"] = json.dumps(index, indent=2) + "\n"
    return out


def _refs(node: Any, components: dict[str, Any], found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name not in found:
                found.add(name)
                _refs(components[name], components, found)
        for value in node.values():
            _refs(value, components, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, components, found)
    return found


def render_all() -> dict[str, str]:
    """Relative path → content of everything under ``protocol/``."""
    files = {"README.md": render_readme()}
    files.update({f"schema/{k}": v for k, v in render_schemas().items()})
    return files


def write(out_dir: Path) -> list[Path]:
    files = render_all()
    schema_dir = out_dir / "schema"
    schema_dir.mkdir(parents=True, exist_ok=True)
    for stale in schema_dir.glob("*.json"):
        if f"schema/{stale.name}" not in files:
            stale.unlink()
    written = []
    for rel, text in files.items():
        path = out_dir / rel
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    for path in write(out):
        print(path)
    if not args:  # the editors' copies of the same types, beside protocol/
        from . import typescript

        for path, text in typescript.render_ts().items():
            path.write_text(text)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
