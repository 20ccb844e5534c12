"""Each package's face (``__all__``), pinned as httpx's tests/test_exported_members.py
pins its own: a name added to or dropped from a face is a change a reviewer sees here.
Every name resolves, and ``download``'s face is looked up lazily (no httpx on import)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FACES = {
    "vibrant_rpc.gguf": [
        "GGML_TYPES", "ArchFacts", "GGUFFormatError", "ModelHeader", "header_from_arch",
        "header_from_ranges", "read_header",
    ],
    "vibrant_rpc.cache": [
        "Cache", "CacheStats", "FileProgress", "Found", "InUseMark", "ManifestEntry",
        "ManifestFile", "ModelVersion", "PartialDownload", "PartialState", "RemovalResult",
        "adopt", "default_roots", "download_lock", "find_candidates", "read_state", "scan",
        "utcnow", "write_state",
    ],
    "vibrant_rpc.inference": [
        "FLASH_ATTENTION", "CompletionRequest", "CompletionResult", "LoadOptions",
        "LoadedModel", "ModelClosedError", "warm_up",
    ],
    "vibrant_rpc.fit": [
        "EstimateOptions", "Fit", "GpuDevice", "GpuPlan", "HeaderStore", "KnownHeader",
        "LoadRequest", "MemoryEstimate", "MemoryInfo", "Need", "Selection", "Sizing",
        "detect_gpus", "estimate", "fit_model", "header_for", "load_request", "read_memory",
        "select_model",
    ],
    "vibrant_rpc.completion": ["Completer", "Lifecycle", "StateChange", "TypedThrough"],
    "vibrant_rpc.completion.pipeline": [
        "DEFAULT_MS", "RULES", "Cursor", "Language", "Pipeline", "apply", "cursor_at",
        "language_for",
    ],
    "vibrant_rpc.download": [
        "DownloadJobs", "DownloadResult", "Downloader", "HubClient", "Progress",
        "ProgressCallback", "Reporter", "Sources", "Ticket", "UpdateCheck", "UpdateInfo",
        "UpdateSchedule", "Updates", "open_hub",
    ],
    "vibrant_rpc.engines": [
        "Engine", "EngineAnswer", "EngineStatus", "FimTemplate", "Routed", "ServeSpec",
        "Supervisor", "engine_key", "laptop_setting", "render", "route", "serve_args",
        "template_for",
    ],
    "vibrant_rpc.cli": ["main"],
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(FACES))
def test_the_face_is_pinned_and_every_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(FACES[package])
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_the_download_face_costs_nothing_until_a_name_is_used() -> None:
    code = (
        "import sys, vibrant_rpc.download as d; before = 'httpx' in sys.modules; d.Downloader; "
        "print(before, 'httpx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_the_engines_face_costs_nothing_until_a_name_is_used() -> None:
    code = (
        "import sys, vibrant_rpc.engines as e; before = 'httpx' in sys.modules; e.Engine; "
        "print(before, 'httpx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    download = importlib.import_module("vibrant_rpc.download")
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = download.Nothing
