"""The engine settings, parsed in config.py's one place: camelCase from an editor, one
bad engine dropped alone, and never a key in the settings or in a warning."""

from __future__ import annotations

from pathlib import Path

from vibrant_rpc.config import read_settings

SECRET = "sk-live-0123456789abcdef"


def test_an_engine_from_config_toml_and_camel_case_from_an_editor(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'engine = "team"\n[engines.team]\nurl = "http://gpu-box:8012"\n'
        'api_key_env = "VIBRANT_TEAM_KEY"\nfallback = "local"\n'
    )
    settings, warnings = read_settings(config)
    assert warnings == []
    team = settings.engines["team"]
    assert (settings.engine, team.url, team.api_key_env, team.fallback, team.kind) == (
        "team", "http://gpu-box:8012", "VIBRANT_TEAM_KEY", "local", None)  # fmt: skip
    # The editor's engines add to those of config.toml; its fields may be camelCase.
    editor = {"engines": {"vllm": {"url": "https://vllm.lan", "kind": "openai",
                                   "apiKeyFile": "~/.config/vibrant/vllm.key",
                                   "firstTokenTimeoutS": 60, "model": "Qwen/Qwen2.5-Coder-7B"}},
              "engine": "vllm"}  # fmt: skip
    settings, warnings = read_settings(config, editor)
    assert warnings == []
    assert set(settings.engines) == {"team", "vllm"} and settings.engine == "vllm"
    vllm = settings.engines["vllm"]
    assert (vllm.api_key_file, vllm.first_token_timeout_s, vllm.kind) == (
        "~/.config/vibrant/vllm.key", 60, "openai")  # fmt: skip


def test_a_key_in_the_settings_is_refused_without_being_echoed() -> None:
    settings, warnings = read_settings(None, {
        "engines": {
            "inline": {"url": "http://gpu-box:8012", "apiKey": SECRET},
            "in_url": {"url": f"http://user:{SECRET}@gpu-box:8012"},
            "good": {"url": "http://127.0.0.1:8012"},
        }
    })  # fmt: skip
    assert list(settings.engines) == ["good"]
    assert len(warnings) == 2
    assert "engines.inline ignored: a key is never written in the settings" in warnings[0]
    assert "engines.in_url ignored: url carries credentials" in warnings[1]
    assert not any(SECRET in w for w in warnings)


def test_bad_values_drop_only_their_engine() -> None:
    settings, warnings = read_settings(None, {
        "engine": "team",
        "engines": {
            "team": {"url": "http://gpu-box:8012", "kind": "vllm"},
            "ftp": {"url": "ftp://gpu-box"},
            "both": {"url": "http://h:1", "api_key_env": "A", "api_key_file": "/k"},
            "local": {"url": "http://h:1"},
            "ok": {"url": "http://h:1", "connect_timeout_s": 2},
        },
    })  # fmt: skip
    assert list(settings.engines) == ["ok"]
    text = "\n".join(warnings)
    assert "engines.team ignored: Invalid enum value 'vllm'" in text, text
    assert "engines.ftp ignored: url 'ftp://gpu-box' is not http(s)://host:port" in text
    assert "engines.both ignored: api_key_env and api_key_file both set" in text
    assert "engines.local ignored" in text
    # engine named a dropped engine: completions stay local, and a warning says why.
    assert settings.engine == "local"
    assert "setting 'engine' = 'team' ignored: no [engines.team] (known: ok)" in text


def test_defaults_are_local() -> None:
    settings, warnings = read_settings(None)
    assert (settings.engine, settings.engines, settings.llama_server, warnings) == (
        "local", {}, None, [])  # fmt: skip


def test_kind_ollama() -> None:
    settings, warnings = read_settings(None, {
        "engine": "box",
        "engines": {"box": {"url": "http://gpu-box:11434", "kind": "ollama",
                            "model": "qwen2.5-coder:7b-base"}},
    })  # fmt: skip
    assert warnings == []
    assert (settings.engines["box"].kind, settings.engines["box"].model) == (
        "ollama", "qwen2.5-coder:7b-base")  # fmt: skip
