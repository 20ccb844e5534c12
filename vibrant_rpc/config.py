"""Settings, parsed in one place: editor options, then ``config.toml``, then defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import psutil

from .errors import ConfigError, validation_problem
from .states import Auto, EngineKind
from .units import parse_size


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class EngineSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An inference server completions can go to (``[engines.<name>]``; docs/engines.md).
    The key is named here (an environment variable or a file), never written here."""

    url: str  # http(s)://host:port of llama-server, an OpenAI-compatible server or Ollama
    # "llama-server" (/infill, /completion), "openai" (/v1/completions) or "ollama"
    # (/api/generate, raw); None: probed.
    kind: EngineKind | None = None
    api_key_env: str | None = None  # the environment variable that holds the key
    api_key_file: str | None = None  # a file whose first line is the key (~ expanded)
    # "local": the local model answers when the engine can't be reached; None: an error.
    fallback: Literal["local"] | None = None
    model: str | None = None  # the served model to ask for; None: the one it serves
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    # A cold load on the engine can take a minute: the first token is waited for longer.
    first_token_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    token_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0  # between two pieces

    def __post_init__(self) -> None:
        url = urlsplit(self.url)
        if "@" in url.netloc:
            # A key in the URL would travel into logs and error messages.
            raise ValueError("url carries credentials: name the key in api_key_env or api_key_file")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"url {self.url!r} is not http(s)://host:port")
        if url.query or url.fragment:
            raise ValueError(f"url {self.url!r} has a query or fragment")
        if self.api_key_env and self.api_key_file:
            raise ValueError("api_key_env and api_key_file both set: name one")


# What the ``engine`` setting names when completions stay on this machine.
LOCAL_ENGINE = "local"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    cache_size_limit: int | None = None  # bytes; None = unlimited
    # Tokens of context; 0: the model's own; "auto": the largest that fits this machine.
    context_size: Annotated[int, msgspec.Meta(ge=0)] | Auto = 4096
    threads: int = msgspec.field(default_factory=_physical_cores)
    batch_size: int = 512
    mmap: bool = True
    mlock: bool = False
    # Layers on the GPU; -1: all; "auto": as many as fit its free memory, on a GPU the
    # installed llama.cpp can use (none with a CPU build: every layer stays in RAM).
    gpu_layers: Annotated[int, msgspec.Meta(ge=-1)] | Auto = "auto"
    keep_alive_s: float = 300.0  # 0 = never unload an idle model
    # Once a suggestion's first line is whole, generation stops at the next line end after
    # this many ms (llama.vim asks 250 for a first suggestion); 0: no limit.
    completion_time_budget_ms: Annotated[float, msgspec.Meta(ge=0)] = 250.0
    auto_update: bool = False
    update_check_delay_s: float = 30.0  # after start-up, before the weekly check may run
    download_connections: int = 4
    download_block_size: int = 16 * 1024 * 1024  # bytes per ranged request
    download_idle_timeout_s: float = 30.0  # a read that stalls this long is cut and resumed
    download_retry_base_s: float = 1.0  # first backoff; doubles, with jitter
    # Before downloading a file, look for it in huggingface_hub's, llama.cpp's, LM Studio's
    # and Ollama's caches; one with the reference SHA-256 is linked (or copied), not fetched.
    use_other_caches: bool = True
    # Endpoints to download from, in order (a team mirror first, the Hub last); empty: the
    # one endpoint HF_ENDPOINT names, else the Hub. The token goes to huggingface.co and to
    # the sources named in token_sources only.
    sources: list[str] = []
    token_sources: list[str] = []
    # Mirrors whose own SHA-256 of a file is taken as the reference where the Hub's can't
    # be had (unreachable, or the model is only on the mirror); any other mirror's word
    # never sets what its bytes are checked against.
    trusted_sources: list[str] = []
    # Which engine completions go to: "local" (this machine's llama.cpp) or a name in
    # ``engines``; and the llama-server that `vibrant model serve` runs (None: on PATH).
    engine: str = LOCAL_ENGINE
    engines: dict[str, EngineSettings] = {}
    llama_server: str | None = None


_FIELDS = {f.name for f in msgspec.structs.fields(Settings)}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(w.capitalize() for w in rest)


_CAMEL = {_camel(n): n for n in _FIELDS}
_SNAKE = {_camel(f.name): f.name for f in msgspec.structs.fields(EngineSettings)}


def _one(name: str, value: Any) -> Any:
    """``value`` checked as the setting ``name`` alone, so one bad value costs only itself."""
    if name in ("cache_size_limit", "download_block_size") and isinstance(value, str):
        value = parse_size(value)  # ValueError names what is wrong with the text
    checked = msgspec.convert({name: value}, Settings)
    return getattr(checked, name)


def _normalise(raw: dict[str, Any], source: str, warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key if key in _FIELDS else _CAMEL.get(key)
        if name is None:
            warnings.append(
                f"{source}: unknown setting {key!r}, ignored (known settings: "
                + ", ".join(sorted(_FIELDS))
                + ")."
            )
            continue
        if name == "engines":
            out[name] = _engines(value, source, warnings)
            continue
        try:
            out[name] = _one(name, value)
        except (ValueError, msgspec.ValidationError) as err:
            reason = validation_problem(err).reason
            warnings.append(f"{source}: setting {key!r} = {value!r} ignored: {reason}.")
    return out


def _engines(raw: Any, source: str, warnings: list[str]) -> dict[str, EngineSettings]:
    """Each engine checked alone; a refusal never echoes a value (one might be a key)."""
    if not isinstance(raw, dict):
        warnings.append(f"{source}: setting 'engines' ignored: a table of engines by name.")
        return {}
    out: dict[str, EngineSettings] = {}
    for name, fields in raw.items():
        if name == LOCAL_ENGINE or not isinstance(fields, dict):
            warnings.append(f"{source}: engines.{name} ignored: not a table of settings, or "
                            f"named {LOCAL_ENGINE!r} (this machine's own engine).")  # fmt: skip
            continue
        # initializationOptions write an engine's fields in camelCase too (apiKeyEnv).
        fields = {_SNAKE.get(k, k): v for k, v in fields.items()}
        if {"api_key", "apiKey", "key", "token"} & fields.keys():
            warnings.append(f"{source}: engines.{name} ignored: a key is never written in "
                            "the settings; name it with api_key_env or api_key_file.")  # fmt: skip
            continue
        try:
            out[name] = msgspec.convert(fields, EngineSettings)
        except msgspec.ValidationError as err:
            reason = validation_problem(err).reason
            warnings.append(f"{source}: engines.{name} ignored: {reason}.")
    return out


def read_settings(
    config_file: Path | None, overrides: dict[str, Any] | None = None
) -> tuple[Settings, list[str]]:
    """Merge (later wins) defaults < ``config_file`` < ``overrides``. A value of the wrong
    type (or an unknown name) is dropped with a warning naming its source; the rest hold."""
    warnings: list[str] = []
    merged: dict[str, Any] = {}
    if config_file is not None and config_file.is_file():
        try:
            raw = tomllib.loads(config_file.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
            warnings.append(f"{config_file}: not read, so every setting in it is ignored ({err}).")
        else:
            merged.update(_normalise(raw, str(config_file), warnings))
    if overrides:
        editor = _normalise(overrides, "editor settings", warnings)
        # An editor's engines add to (or replace by name) those in config.toml.
        editor["engines"] = {**merged.get("engines", {}), **editor.get("engines", {})}
        merged.update(editor)
    engine = merged.get("engine", LOCAL_ENGINE)
    if engine != LOCAL_ENGINE and engine not in merged.get("engines", {}):
        warnings.append(f"setting 'engine' = {engine!r} ignored: no [engines.{engine}] "
                        f"(known: {', '.join(merged.get('engines', {})) or 'none'}).")  # fmt: skip
        merged["engine"] = LOCAL_ENGINE
    return msgspec.convert(merged, Settings), warnings


def load_settings(config_file: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """``read_settings`` that refuses a bad value instead of dropping it."""
    settings, warnings = read_settings(config_file, overrides)
    if warnings:
        raise ConfigError(warnings[0])
    return settings
