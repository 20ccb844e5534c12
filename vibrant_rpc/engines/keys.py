"""An engine's key, read from where its settings point (an environment variable or a
file), never from the settings themselves. A key read here is added to the secrets
``redact`` hides, so no error, log record or output line ever shows it."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import EngineSettings
from ..errors import ConfigError
from ..redact import SECRET_MIN_LENGTH, add_secret


def read_key_file(path: Path, what: str) -> str:
    """The first line of ``path`` that is not empty or a ``#`` comment (llama-server's
    ``--api-key-file`` format, so one file serves both ends)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(
            f"{what}: the key file {path} can't be read ({err.strerror or err}).",
            hint="Write the key on the file's first line (and chmod 600 it).",
        ) from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return _checked(line, what)
    raise ConfigError(f"{what}: the key file {path} has no key in it.")


def engine_key(name: str, settings: EngineSettings) -> str | None:
    """The key for engine ``name``; None when its settings name none."""
    what = f"engines.{name}"
    if settings.api_key_env:
        value = os.environ.get(settings.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"{what}: api_key_env names {settings.api_key_env}, which is not set.",
                hint=f"Set {settings.api_key_env} in the environment the editor starts from.",
            )
        return _checked(value, what)
    if settings.api_key_file:
        return read_key_file(Path(settings.api_key_file).expanduser(), what)
    return None


def _checked(key: str, what: str) -> str:
    if len(key) < SECRET_MIN_LENGTH:
        raise ConfigError(
            f"{what}: the key is shorter than {SECRET_MIN_LENGTH} characters.",
            hint="Use a long random key, e.g. `openssl rand -hex 24`.",
        )
    add_secret(key)
    return key
