"""Greedy completions with drafts looked up in the prompt (``greedy_decode``), on real
models: the drafts are used, the cache keeps only what the model agreed with, and the
output is one-token-at-a-time greedy's, but where llama.cpp's batched kernels break a
near-tie the other way (bounded here: the two tokens' logits within 0.5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.gguf_fixtures import gemma_path, tiny_fim_path
from vibrant_rpc.inference import greedy_decode
from vibrant_rpc.inference import model as runtime
from vibrant_rpc.inference.draft_policy import DraftPolicy
from vibrant_rpc.inference.llama_setup import COMPUTE
from vibrant_rpc.inference.model import (
    CompletionRequest,
    CompletionResult,
    LoadedModel,
    LoadOptions,
)

pytestmark = pytest.mark.llama

STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
FILES = [STDLIB / "argparse.py", STDLIB / "tarfile.py"]
OPTS = LoadOptions(context_size=4096, threads=2)
# Measured here (2 cores): 4 of 36 benchmark completions differ, the widest gap 0.31;
# on these 8 windows 3 differ on an AMD EPYC of this kind (gaps 0.000, 0.078, 0.131, two
# at the 16th token), fewer on the first machine. Which near-ties flip is the CPU's
# kernels', so the count is bounded loosely and every difference strictly.
NEAR_TIE = 0.5


@pytest.fixture(scope="module")
def gemma() -> Iterator[LoadedModel]:
    model = LoadedModel.load("gemma", gemma_path(), OPTS)
    yield model
    model.close()


def greedy(prompt: str, suffix: str | None = None, max_tokens: int = 16) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, suffix=suffix, max_tokens=max_tokens, temperature=0)


def cache_tokens(model: LoadedModel) -> list[int]:
    llm: Any = model._llm
    return list(llm.input_ids[: llm.n_tokens].tolist())


def cache_end(model: LoadedModel) -> int:
    """One past the last position the KV cache holds for sequence 0."""
    import llama_cpp

    return int(COMPUTE.run(lambda: llama_cpp.llama_memory_seq_pos_max(model._memory, 0))) + 1


def run(
    model: LoadedModel, req: CompletionRequest, draft_max: int, chosen: list[int] | None = None
) -> tuple[CompletionResult, list[int]]:
    """A completion from an empty cache, and the tokens the cache holds after it;
    ``chosen``: filled with the tokens greedy decoding chose (see ``chosen_tokens``)."""
    model.draft_max = draft_max
    model.draft_policy = DraftPolicy(adaptive=False)  # every draft, whatever it costs here
    model.complete(greedy("x", max_tokens=1))
    if chosen is not None:
        chosen.clear()
    result = model.complete(req)
    return result, cache_tokens(model)


@pytest.fixture
def chosen_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every token ``greedy_tokens`` yields to the runtime, the last one (never decoded,
    so not in the cache) and an end-of-generation token included: the real generator,
    watched."""
    seen: list[int] = []

    def watched(*args: Any, **kwargs: Any) -> Iterator[int]:
        for token in greedy_decode.greedy_tokens(*args, **kwargs):
            seen.append(token)
            yield token

    monkeypatch.setattr(runtime, "greedy_tokens", watched)
    return seen


def logits_after(model: LoadedModel, tokens: list[int], n_prompt: int) -> np.ndarray:
    """The logits after ``tokens``: the prompt in batches, then one token at a time."""
    llm: Any = model._llm

    def go() -> np.ndarray:
        import llama_cpp

        llm.reset()
        llama_cpp.llama_memory_clear(model._memory, True)
        llm.eval(tokens[:n_prompt])
        for t in tokens[n_prompt:]:
            llm.eval([t])
        out = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(out, shape=(llm.n_vocab(),)).copy()

    return COMPUTE.run(go)


def windows() -> list[str]:
    """Prompts as the shims send them: 256 lines before the cursor, near the top and deep."""
    out = []
    for path in FILES:
        lines = path.read_text().splitlines(keepends=True)
        for row in (120, len(lines) // 2, len(lines) * 2 // 3, len(lines) - 40):
            start = max(0, row - 256)
            out.append("".join(lines[start - start % 32 : row]) + lines[row][:12])
    return out


def test_drafts_are_checked_and_the_cache_keeps_only_what_was_kept(gemma: LoadedModel) -> None:
    drafted = accepted = rejected_steps = 0
    for prompt in windows():
        result, cached = run(gemma, greedy(prompt), draft_max=1)
        drafted += result.drafted
        accepted += result.draft_accepted
        rejected_steps += result.drafted - result.draft_accepted
        # No rejected draft cell is left behind: the cache ends where input_ids says.
        assert cache_end(gemma) == len(cached)
        # It holds the prompt and the completion's tokens but the last: no draft runs
        # past the tokens asked for, and the last is chosen, never decoded.
        assert len(cached) == result.prompt_tokens + result.completion_tokens - 1
        assert cached[: result.prompt_tokens] == gemma.build_prompt(greedy(prompt)).tokens
    print(f"drafted {drafted}, accepted {accepted}")
    assert accepted > 0 and rejected_steps > 0  # both paths ran


def test_same_text_as_one_token_at_a_time_but_at_near_ties(
    gemma: LoadedModel, chosen_tokens: list[int]
) -> None:
    same = 0
    prompts = windows()
    for prompt in prompts:
        req = greedy(prompt)
        plain, cached = run(gemma, req, draft_max=0, chosen=chosen_tokens)
        plain_chosen = list(chosen_tokens)
        drafted, _ = run(gemma, req, draft_max=1, chosen=chosen_tokens)
        drafted_chosen = list(chosen_tokens)
        assert plain.drafted == 0
        # The first token comes from the prompt's logits, before any draft.
        assert plain_chosen[0] == drafted_chosen[0]
        if drafted.text == plain.text:
            same += 1
            continue
        assert_parted_at_a_near_tie(
            gemma, cached[: plain.prompt_tokens], plain_chosen, drafted_chosen
        )
    assert same >= len(prompts) // 2


def assert_parted_at_a_near_tie(
    model: LoadedModel, prompt_tokens: list[int], one: list[int], other: list[int]
) -> None:
    """Two greedy runs over the same prompt part only where the two tokens' logits (the
    first run's, one token at a time) are within NEAR_TIE. They can part at the last
    token, which is chosen and never decoded, or where one ends the generation: compared
    on the tokens chosen, not on the cache."""
    first = next((i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b), None)
    if first is None:  # one run stopped at an end token the other never chose
        return
    logits = logits_after(model, prompt_tokens + one[:first], len(prompt_tokens))
    gap = abs(float(logits[one[first]]) - float(logits[other[first]]))
    print(f"differ at token {first} of {len(one)}: logits {gap:.3f} apart")
    assert gap < NEAR_TIE


def test_drafts_stop_at_the_end_of_the_context() -> None:
    model = LoadedModel.load("gemma-small", gemma_path(), LoadOptions(context_size=512, threads=2))
    model.draft_policy = DraftPolicy(adaptive=False)
    try:
        # Repetitive code: the drafts are taken right up to the context's last cell.
        line = "    result.append(values[index] * 2)\n"
        prompt = "def double(values):\n    result = []\n" + line * 45
        result = model.complete(greedy(prompt, max_tokens=400))
        assert result.finish_reason == "length"
        assert result.prompt_tokens + result.completion_tokens == model.context_size
        assert result.draft_accepted > 0
        # The last draft fills the context's last cell and no more.
        assert cache_end(model) == len(cache_tokens(model)) <= model.context_size
    finally:
        model.close()


def test_tiny_fim_model_gives_the_same_text_with_drafts() -> None:
    model = LoadedModel.load("tiny", tiny_fim_path(), OPTS)
    try:
        prefix = "def alpha(beta):\n    gamma = beta * 2\n    return g"
        suffix = "amma\n\n" + "".join(f"print(alpha({i}))\n" for i in range(12))
        req = greedy(prefix, suffix, max_tokens=24)
        plain, _ = run(model, req, draft_max=0)
        drafted, _ = run(model, req, draft_max=1)
        assert drafted.fim and drafted.drafted > 0
        assert drafted.text == plain.text
    finally:
        model.close()


class Refusing(DraftPolicy):
    def wants(self, match: int, after_right: bool) -> bool:
        return False


def test_the_runtime_times_its_steps_and_follows_its_policy(
    gemma: LoadedModel, chosen_tokens: list[int]
) -> None:
    prompt = windows()[1]
    plain, cached = run(gemma, greedy(prompt), draft_max=0, chosen=chosen_tokens)
    plain_chosen = list(chosen_tokens)
    gemma.draft_max = 1
    gemma.draft_policy = Refusing()
    chosen_tokens.clear()
    refused = gemma.complete(greedy(prompt))
    assert refused.drafted == 0  # every draft refused: 1-token decodes only
    # From a warm cache the prompt's last batch has another shape than from a cold one, and
    # on an AMX Xeon that flips a near-tie ("a Namespace." / "a file object."): bounded,
    # not asserted bit for bit.
    if refused.text != plain.text:
        assert_parted_at_a_near_tie(
            gemma, cached[: plain.prompt_tokens], plain_chosen, list(chosen_tokens)
        )
    gemma.draft_policy = policy = DraftPolicy()
    for prompt in windows()[:4]:
        gemma.complete(greedy(prompt))
    plain_ms, drafted_ms, kept = policy.snapshot()
    print(f"plain step {plain_ms:.1f} ms, drafted {drafted_ms:.1f} ms, kept {kept}")
    # Both steps were timed (a drafted one decodes 2 positions, a plain one 1) and drafts
    # of more than one kind were checked.
    assert plain_ms is not None and drafted_ms is not None
    assert 0 < plain_ms < 1000 and 0.8 < drafted_ms / plain_ms < 4
    assert len(kept) >= 2 and all(0 <= rate <= 1 for rate in kept.values())
