"""FIM prompts as text for OpenAI-compatible engines: the served model's own tokens by
its name, the other files ahead of the prefix as llama-server's /infill lays them out."""

from __future__ import annotations

import pytest

from vibrant_rpc.engines.fim import CODELLAMA, QWEN_CODER, STARCODER2, render, template_for
from vibrant_rpc.inference.prompt import ContextChunk


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("Qwen/Qwen2.5-Coder-7B", "qwen2.5-coder"),
        ("qwen2.5-coder-14b-instruct-q5_k_m.gguf", "qwen2.5-coder"),
        ("qwen2.5-coder:1.5b-base", "qwen2.5-coder"),
        ("bigcode/starcoder2-3b", "starcoder"),
        ("google/codegemma-2b", "codegemma"),
        ("deepseek-ai/deepseek-coder-1.3b-base", "deepseek-coder"),
        ("codellama/CodeLlama-7b-hf", "codellama"),
    ],
)
def test_the_family_comes_from_the_served_name(name: str, family: str) -> None:
    template = template_for(name)
    assert template is not None and template.family == family


@pytest.mark.parametrize("name", [None, "", "gemma-3-270m-it-Q4_K_M.gguf", "Qwen/Qwen3-8B"])
def test_a_model_without_fim_gets_none(name: str | None) -> None:
    # Qwen3 (not a coder) has no FIM tokens (llama.vscode #55): the prefix is continued.
    assert template_for(name) is None


def test_qwen_plain_and_repo_level() -> None:
    assert render(QWEN_CODER, "def f(", "):\n") == (
        "<|fim_prefix|>def f(<|fim_suffix|>):\n<|fim_middle|>"
    )
    # Other files first, as the local runtime lays them out (inference.prompt).
    context = [ContextChunk("util.py", "X = 1\n"), ContextChunk("b.py", "Y = 2")]
    assert render(QWEN_CODER, "a", "b", context, "main.py") == (
        "<|repo_name|>project\n<|file_sep|>util.py\nX = 1\n<|file_sep|>b.py\nY = 2\n"
        "<|file_sep|>main.py\n<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    )
    # Stops: its end of text and the start of another file.
    assert {"<|endoftext|>", "<|file_sep|>"} <= set(QWEN_CODER.stops)


def test_other_layouts() -> None:
    assert render(STARCODER2, "p", "s", [ContextChunk("x.py", "1\n")]) == (
        "<repo_name>project\n<file_sep>x.py\n1\n<file_sep>file\n"
        "<fim_prefix>p<fim_suffix>s<fim_middle>"
    )
    # Without a file separator, other files are commented lines at the prefix's start.
    chunk = ContextChunk("x.lua", "a = 1\nb = 2\n")
    assert render(CODELLAMA, "p", "s", [chunk], comment="--") == (
        "<PRE> -- Path: x.lua\n-- a = 1\n-- b = 2\np <SUF>s <MID>"
    )
