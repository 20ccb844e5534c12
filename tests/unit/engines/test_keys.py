"""An engine's key comes from the environment or a file, is refused when too short to
hide, and from then on is hidden from every text redact sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from vibrant_rpc.config import EngineSettings
from vibrant_rpc.engines.keys import engine_key
from vibrant_rpc.errors import ConfigError, EngineError
from vibrant_rpc.redact import redact

KEY = "k3y-from-the-team-7f2c9a41"


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIBRANT_TEAM_KEY", KEY + "\n")
    settings = EngineSettings(url="http://h:1", api_key_env="VIBRANT_TEAM_KEY")
    assert engine_key("team", settings) == KEY
    # Read once, hidden everywhere: an error that somehow carried it shows ***.
    err = EngineError(f"engine said: bad key {KEY}!", hint=f"not {KEY}")
    assert KEY not in str(err) and "***" in err.message
    assert redact(f"Authorization: Bearer {KEY}") == "Authorization: Bearer ***"


def test_an_unset_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ConfigError, match="api_key_env names NOPE_KEY, which is not set"):
        engine_key("team", EngineSettings(url="http://h:1", api_key_env="NOPE_KEY"))


def test_from_a_file_as_llama_server_reads_it(tmp_path: Path) -> None:
    key_file = tmp_path / "team.key"
    key_file.write_text(f"# the team's key\n\n{KEY}\nsecond-key-ignored\n")
    settings = EngineSettings(url="http://h:1", api_key_file=str(key_file))
    assert engine_key("team", settings) == KEY
    # ~ is the user's home.
    (Path.home() / "k").write_text(KEY)
    assert engine_key("t", EngineSettings(url="http://h:1", api_key_file="~/k")) == KEY


def test_file_problems(tmp_path: Path) -> None:
    missing = EngineSettings(url="http://h:1", api_key_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"engines.team: the key file .*none can't be read"):
        engine_key("team", missing)
    (tmp_path / "empty").write_text("# nothing\n")
    empty = EngineSettings(url="http://h:1", api_key_file=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="has no key in it"):
        engine_key("team", empty)
    (tmp_path / "short").write_text("abc\n")
    short = EngineSettings(url="http://h:1", api_key_file=str(tmp_path / "short"))
    with pytest.raises(ConfigError, match="shorter than 8 characters") as err:
        engine_key("team", short)
    assert "abc" not in str(err.value)


def test_no_key_named() -> None:
    assert engine_key("team", EngineSettings(url="http://h:1")) is None
