"""A package face whose names are imported on first use (PEP 562, as huggingface_hub's
``__init__`` does): ``download/`` and ``engines/`` name httpx-backed classes, and the CLI
imports only what a command needs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_face(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``package.<where[name]>`` once."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)  # looked up once
        return value

    return __getattr__
