"""What the user sees, through the real server over stdio: completions that end where
the code does (the completion pipeline, docs/completion.md), with the real Gemma 3 270M
and the tiny FIM model; and context from other files that keeps the KV cache's reuse.

One server for the module: Gemma first, then the tiny model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path, tiny_fim_path
from tests.support.rpc_client import (
    Recorder,
    call,
    home_env,
    model_entry,
    serving,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]

GEMMA = "gemma-270m"
TINY = "tiny-fim"
REASONS = {"end", "stop", "length", "oneLine", "scope", "bracket", "lineSuffix", "codeBelow",
           "repetition", "timeBudget"}  # fmt: skip

# A file the model has seen the like of: the cursor in it marked with |.
SOURCE = '''import os


class Entry:
    """A file in an archive."""

    def __init__(self, name, size):
        self._name = name
        self._size = size

    def filename(|self):
        return os.path.basename(self._name)

    def size(self):
        return self._size


def entries(names):
    return [Entry(name, 0) for name in names]
'''


def at(marked: str) -> tuple[str, str]:
    prefix, suffix = marked.split("|")
    return prefix, suffix


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    env = home_env(
        tmp_path_factory.mktemp("quality"),
        [
            (model_entry(GEMMA, sha256=GEMMA_SHA256, recommended=True), gemma_path()),
            (model_entry(TINY, ram_required_mb=50), tiny_fim_path()),
        ],
    )
    async with serving(env, {"contextSize": 2048, "keepAliveS": 0}) as server:
        yield server


async def complete(client: LanguageClient, **params: Any) -> dict[str, Any]:
    base = {"maxTokens": 64, "temperature": 0, "modelId": GEMMA}
    result: dict[str, Any] = await call(client, "vibrant/complete", {**base, **params})
    return result


async def test_mid_line_is_one_line_that_doubles_nothing(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, rec = server
    prefix, suffix = at(SOURCE)
    params = {"prompt": prefix, "suffix": suffix, "languageId": "python"}
    raw = await complete(client, **params, raw=True)
    # What the issue saw: the model writes the rest of the line again, and runs on.
    assert "\n" in raw["text"] and raw["text"].startswith("self)"), raw
    result = await complete(client, **params, partialResultToken="mid")
    text = result["text"]
    assert "\n" not in text and "self)" not in text
    assert text == "" or not "self):".startswith(text)
    assert result["stopReason"] in REASONS, result
    # Generation ended with the line: far fewer tokens than the raw run.
    assert result["usage"]["completionTokens"] < raw["usage"]["completionTokens"]
    assert "".join(p["text"] for p in rec.partials("mid")) == text


async def test_next_line_stays_in_its_block(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    marked = SOURCE.replace("def filename(|self)", "def filename(self)").replace(
        "        self._size = size\n", "        self._size = size\n        |\n"
    )
    prefix, suffix = at(marked)
    raw = await complete(client, prompt=prefix, suffix=suffix, raw=True)
    result = await complete(client, prompt=prefix, suffix=suffix, partialResultToken="next")
    lines = result["text"].split("\n")
    assert result["text"].strip(), result
    for line in lines[1:]:
        assert not line.strip() or len(line) - len(line.lstrip()) >= 8, result["text"]
    assert result["stopReason"] in REASONS - {"length"}, result
    assert raw["stopReason"] == "length" and raw["usage"]["completionTokens"] == 64
    assert result["usage"]["completionTokens"] < 64
    # Streamed pieces are text the pipeline accepted: they make the result.
    assert "".join(p["text"] for p in rec.partials("next")) == result["text"]


async def test_language_rules_come_with_the_language(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    # In a Python comment: one line, by the language's line comment.
    prompt = "import os\n\n# Return the "
    result = await complete(client, prompt=prompt, suffix="\n", filename="tool.py")
    assert "\n" not in result["text"]
    assert result["stopReason"] in REASONS


def chunk(name: str, n: int) -> dict[str, str]:
    body = "".join(
        f"def {name}_{i}(value):\n    return value * {i} + {len(name)}\n" for i in range(n)
    )
    return {"filename": f"lib/{name}.py", "text": body}


async def check_context_reuse(client: LanguageClient, model_id: str) -> None:
    prefix, suffix = at(SOURCE.replace("def filename(|self)", "def filename(self)|"))
    one = [chunk("alpha", 3)]
    two = [*one, chunk("beta", 3)]
    base = {"suffix": suffix, "maxTokens": 4, "modelId": model_id, "filename": "entry.py"}
    plain = await complete(client, prompt=prefix, **base)
    first = await complete(client, prompt=prefix, context=one, **base)
    added = first["usage"]["promptTokens"] - plain["usage"]["promptTokens"]
    assert added > 40, first  # the chunk is in the prompt
    # Keystrokes with the context unchanged: a token or two each.
    # (Text the suggestion can't start with: typing through it would answer from it.)
    typed = ":  # zq"
    await complete(client, prompt=prefix + typed, context=one, **base)
    for key in "vw":
        typed += key
        keystroke = await complete(client, prompt=prefix + typed, context=one, **base)
        assert not keystroke.get("cached")
        assert keystroke["usage"]["promptEvaluated"] <= 2, keystroke["usage"]
    # A new chunk costs about its own tokens; the window after it is shifted, not evaluated.
    again = await complete(client, prompt=prefix + typed, context=two, **base)
    grown = again["usage"]["promptTokens"] - keystroke["usage"]["promptTokens"]
    assert grown > 40
    assert grown <= again["usage"]["promptEvaluated"] <= grown + 8, again["usage"]


async def test_context_from_other_files_keeps_kv_reuse_on_gemma(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    await check_context_reuse(client, GEMMA)


async def test_tiny_fim_model_through_the_pipeline(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    prefix, suffix = at(SOURCE)
    result = await complete(
        client, prompt=prefix, suffix=suffix, modelId=TINY, languageId="python", maxTokens=24
    )
    assert result["fim"] is True and "\n" not in result["text"]
    assert result["stopReason"] in REASONS
    await check_context_reuse(client, TINY)
