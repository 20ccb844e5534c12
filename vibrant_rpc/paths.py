"""Where vibrant keeps its files. ``VIBRANT_HOME`` moves the whole tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def from_env(cls) -> Paths:
        home = os.environ.get("VIBRANT_HOME")
        return cls(Path(home).expanduser() if home else Path.home() / ".vibrant")

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def downloading(self) -> Path:
        return self.models / ".downloading"

    @property
    def locks(self) -> Path:
        return self.models / ".locks"

    @property
    def manifest(self) -> Path:
        return self.models / "manifest.json"

    @property
    def user_registry(self) -> Path:
        override = os.environ.get("VIBRANT_REGISTRY")
        return Path(override).expanduser() if override else self.home / "registry.json"

    @property
    def config(self) -> Path:
        return self.home / "config.toml"

    @property
    def state(self) -> Path:
        return self.home / "state.json"

    def partial_dir(self, model_id: str) -> Path:
        return self.downloading / model_id
