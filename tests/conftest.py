from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vibrant_rpc.paths import Paths


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    """Every test gets its own VIBRANT_HOME and HOME: nothing touches the real home folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VIBRANT_HOME", str(home / ".vibrant"))
    monkeypatch.delenv("VIBRANT_REGISTRY", raising=False)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    # Traffic stays on loopback: a test that forgets its Hub stand-in gets a refused
    # connection (the discard port), never the real Hub.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    yield Paths.from_env()


@pytest.fixture
def paths(isolated_home: Paths) -> Paths:
    return isolated_home


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
