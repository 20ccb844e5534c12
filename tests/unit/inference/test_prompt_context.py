"""The prompt's layout with chunks of other files (inference/prompt.py), with a
tokenizer of one token per byte: where the chunks go, in which order, within which
budget. Through real models and the server: tests/server/test_server_quality.py."""

from __future__ import annotations

from vibrant_rpc.inference.prompt import (
    CONTEXT_TOKENS,
    ContextChunk,
    FimTokens,
    PromptModel,
    RepoTokens,
    build_prompt,
)

FIM = FimTokens(prefix=1001, suffix=1002, middle=1003)
REPO = RepoTokens(repo_name=1004, file_sep=1005)


def tokenize(text: str) -> list[int]:
    return list(text.encode())


def text(tokens: list[int]) -> str:
    return "".join(f"<{t}>" if t >= 1000 else chr(t) for t in tokens)


def model(fim: FimTokens | None, repo: RepoTokens | None, context_size: int = 8192) -> PromptModel:
    return PromptModel(tokenize, [], fim, repo, context_size, [0])


CHUNKS = [ContextChunk("lib/a.py", "def a():\n    pass\n"), ContextChunk("lib/b.py", "B = 2")]


def test_repo_level_format_where_the_model_has_its_tokens() -> None:
    p = build_prompt(model(FIM, REPO), "x = ", "\n", 16, CHUNKS, "main.py", "#")
    assert text(p.tokens) == (
        "<1004>project\n<1005>lib/a.py\ndef a():\n    pass\n<1005>lib/b.py\nB = 2\n"
        "<1005>main.py\n<1001>x = <1002>\n<1003>"
    )
    assert p.fim and p.context_tokens == len(p.tokens) - len("<x = \n") - 2


def test_commented_snippets_otherwise_first_in_the_prefix() -> None:
    fim = build_prompt(model(FIM, None), "x = ", "\n", 16, CHUNKS[1:], "main.py", "//")
    assert text(fim.tokens) == "<1001>// Path: lib/b.py\n// B = 2\nx = <1002>\n<1003>"
    plain = build_prompt(model(None, None), "x = ", "\n", 16, CHUNKS[1:], None, "#")
    assert text(plain.tokens) == "# Path: lib/b.py\n# B = 2\nx = "


def test_without_chunks_the_prompt_is_as_before() -> None:
    p = build_prompt(model(FIM, REPO), "x = ", "\n", 16, [], "main.py", "#")
    assert text(p.tokens) == "<1001>x = <1002>\n<1003>" and p.context_tokens == 0


def test_the_newest_chunks_that_fit_the_budget_in_the_given_order() -> None:
    big = [ContextChunk(f"f{i}.py", "y" * 300) for i in range(6)]
    p = build_prompt(model(None, None), "x", None, 16, big, None, "#")
    body = text(p.tokens)
    kept = [i for i in range(6) if f"Path: f{i}.py" in body]
    assert kept == [3, 4, 5]  # 3 chunks of ~320 tokens fit CONTEXT_TOKENS
    assert p.context_tokens <= CONTEXT_TOKENS
    # A small context: a quarter of the room, and the window keeps the rest.
    small = build_prompt(model(None, None, context_size=1024), "x", None, 16, big, None, "#")
    assert small.context_tokens <= (1024 - 16) // 4
