"""KV cache reuse across shifts (issue 11) on real models: Gemma 3 270M and the tiny FIM model.

A moved chunk keeps keys and values computed beside its old neighbours, so the
model sees an approximation of the new prompt (as with llama-server's
--cache-reuse); even a prompt evaluated in other batches differs from a fresh one
in the last bits. The Gemma test bounds the difference: the first token is the
fresh evaluation's choice every time, and most of the others are too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gguf_fixtures import gemma_path, tiny_fim_path
from vibrant_rpc.inference.kv_reuse import Move, ReusePlan, plan_reuse
from vibrant_rpc.inference.llama_setup import COMPUTE
from vibrant_rpc.inference.model import (
    CompletionRequest,
    CompletionResult,
    LoadedModel,
    LoadOptions,
)

pytestmark = pytest.mark.llama

SOURCE = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/argparse.py")
OPTS = LoadOptions(context_size=4096, threads=2)
STEP, LINES = 32, 256  # the shims' window: 256 lines before the cursor, moved in steps of 32
# A token the shifted cache chose may trail a fresh evaluation's best by this much: a
# near-tie that llama.cpp's numbers (cells in another order, another batch shape) break
# the other way, as tests/unit/inference/test_greedy_decode.py bounds it.
NEAR_TIE = 0.5
# The moved cells were computed beside lines the window has since dropped, so after the
# first token the shifted cache may choose one that trails by more than a near-tie: seen
# here once in ~100 tokens (1.2 behind, one CI run; 0.0 on a rerun of the same windows).
# Most tokens must still be the fresh evaluation's choice.
MOSTLY = 0.8


@pytest.fixture(scope="module")
def gemma() -> Iterator[LoadedModel]:
    model = LoadedModel.load("gemma", gemma_path(), OPTS)
    yield model
    model.close()


@pytest.fixture(scope="module")
def gemma_fresh() -> Iterator[LoadedModel]:
    model = LoadedModel.load("gemma-fresh", gemma_path(), OPTS)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny() -> Iterator[LoadedModel]:
    model = LoadedModel.load("tiny", tiny_fim_path(), OPTS)
    yield model
    model.close()


def held_tokens(model: LoadedModel) -> list[int]:
    """What the model's cache holds: the prompt, then the tokens it chose but the last."""
    llm: Any = model._llm
    return list(llm.input_ids[: llm.n_tokens].tolist())


def behind_best(model: LoadedModel, tokens: list[int], n_prompt: int) -> list[float]:
    """For each token after the prompt, how far its logit is below the best one in a
    fresh evaluation by ``model`` (the prompt in batches, then a token at a time)."""
    llm: Any = model._llm

    def go() -> list[float]:
        import llama_cpp
        import numpy as np

        llm.reset()
        llama_cpp.llama_memory_clear(model._memory, True)
        llm.eval(tokens[:n_prompt])
        out = []
        for t in tokens[n_prompt:]:
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
            out.append(float(logits.max() - logits[t]))
            llm.eval([t])
        return out

    return COMPUTE.run(go)


def near_fresh(behinds: list[list[float]]) -> int:
    """Checks completions from a moved cache against fresh evaluations (``behind_best`` of
    each): every first token is the fresh choice but at a near-tie, and MOSTLY of all
    tokens are. Returns how many are."""
    for behind in behinds:
        assert behind and behind[0] < NEAR_TIE, behind
    every = [b for behind in behinds for b in behind]
    near = sum(b < NEAR_TIE for b in every)
    assert near >= MOSTLY * len(every), every
    return near


def greedy(prompt: str, suffix: str | None = None, max_tokens: int = 12) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, suffix=suffix, max_tokens=max_tokens, temperature=0)


def fresh(model: LoadedModel, req: CompletionRequest) -> CompletionResult:
    model.complete(greedy("x", max_tokens=1))  # nothing of req left in its cache
    result = model.complete(req)
    assert result.prompt_cached <= 1  # <bos> at most
    return result


def window(lines: list[str], end: int) -> str:
    start = max(0, end - LINES)
    return "".join(lines[start - start % STEP : end])


def test_gemma_can_shift(gemma: LoadedModel) -> None:
    assert gemma.can_shift


def test_gemma_window_slide_reuses_the_cache_and_matches_a_fresh_evaluation(
    gemma: LoadedModel, gemma_fresh: LoadedModel
) -> None:
    lines = SOURCE.read_text().splitlines(keepends=True)
    first = gemma.complete(greedy(window(lines, 1020)))
    assert first.prompt_evaluated + first.prompt_cached == first.prompt_tokens
    same_text = 0
    ends = [1020 + STEP * k for k in (1, 2, 3, 4)]
    behinds: list[list[float]] = []
    for end in ends:
        req = greedy(window(lines, end))
        shifted = gemma.complete(req)
        # The window lost its first STEP lines and gained STEP at the end: those are new.
        assert shifted.prompt_cached > shifted.prompt_tokens // 2
        assert shifted.prompt_evaluated + shifted.prompt_cached == shifted.prompt_tokens
        chosen = held_tokens(gemma)
        base = fresh(gemma_fresh, req)
        assert base.prompt_evaluated == base.prompt_tokens - base.prompt_cached
        assert shifted.text
        same_text += shifted.text == base.text
        # The first token the shifted cache chose is a fresh evaluation's greedy choice,
        # but at a near-tie; so are most of the others (MOSTLY). Positions that disagree
        # with the cells (a gap, an overlap) make llama_decode fail outright.
        behind = behind_best(gemma_fresh, chosen, shifted.prompt_tokens)
        print(f"{end}: {shifted.prompt_cached}/{shifted.prompt_tokens} cached,", end=" ")
        print(f"{shifted.text!r} vs fresh {base.text!r}; behind the best by at most "
              f"{max(behind):.3f}")  # fmt: skip
        assert len(behind) == len(chosen) - shifted.prompt_tokens > 0
        behinds.append(behind)
    near = near_fresh(behinds)
    # Measured here (CPU, 2 threads): 1 to 3 of 4 the same text; the others part at a
    # near-tie and continue the file with other code of argparse from the same place.
    tokens = sum(map(len, behinds))
    print(f"the same text as a fresh evaluation: {same_text} of {len(ends)}; {near} of "
          f"{tokens} tokens the fresh evaluation's choice but at a near-tie")  # fmt: skip


def head_dropped(
    gemma: LoadedModel, gemma_fresh: LoadedModel, end: int
) -> tuple[CompletionResult, list[float]]:
    """The window ``lines[end - 256 : end]``, then the same without its first STEP lines:
    the second prompt is all moved cells but its last token (never taken from the cache),
    so what it gives rests on which cells moved where. Returns the second completion and
    how far each token it chose trails a fresh evaluation's best."""
    lines = SOURCE.read_text().splitlines(keepends=True)
    gemma.complete(greedy("".join(lines[end - LINES : end])))
    dropped = gemma.complete(greedy("".join(lines[end - LINES + STEP : end])))
    assert dropped.prompt_evaluated <= 2 and dropped.prompt_cached > 1000
    assert dropped.text
    chosen = held_tokens(gemma)
    return dropped, behind_best(gemma_fresh, chosen, dropped.prompt_tokens)


def test_gemma_window_without_its_head_lines_answers_from_the_moved_cells(
    gemma: LoadedModel, gemma_fresh: LoadedModel
) -> None:
    behinds = []
    for end in (1100, 1500, 2000, 2300):
        dropped, behind = head_dropped(gemma, gemma_fresh, end)
        print(f"{end}: {dropped.text!r}; behind the best by at most {max(behind):.3f}")
        behinds.append(behind)
    # Measured here: first tokens 0.000 behind, the others at most 0.607 (in 1 of 44);
    # cells moved from 7 tokens too early give first tokens 3.8, 5.4, 3.7 and 0.0 behind
    # (the next test).
    near_fresh(behinds)


def test_the_moved_cells_test_fails_when_the_wrong_cells_move(
    gemma: LoadedModel, gemma_fresh: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the test above would see if the plan moved cells from 7 tokens too early (the
    same positions, other content): a first token far below a fresh evaluation's best."""
    from vibrant_rpc.inference import model as model_module

    def off_by_seven(held: list[int], prompt: list[int], min_chunk: int) -> ReusePlan:
        plan = plan_reuse(held, prompt, min_chunk)
        moves = [Move(max(0, m.src - 7), m.dst, m.length) for m in plan.moves]
        return ReusePlan(plan.prefix, moves, plan.evaluate)

    monkeypatch.setattr(model_module, "plan_reuse", off_by_seven)
    _, behind = head_dropped(gemma, gemma_fresh, 1100)
    monkeypatch.undo()
    gemma.complete(greedy("x", max_tokens=1))  # nothing of the wrong cells left
    print(f"wrong cells: behind the best by {behind[0]:.3f} from the first token")
    assert behind[0] > 2 * NEAR_TIE, behind


def test_gemma_typing_after_a_slide_keeps_the_moved_cache(gemma: LoadedModel) -> None:
    lines = SOURCE.read_text().splitlines(keepends=True)
    prompt = window(lines, 1400)
    gemma.complete(greedy(prompt))
    moved = gemma.complete(greedy(window(lines, 1400 + STEP)))
    typed = gemma.complete(greedy(window(lines, 1400 + STEP) + "    "))
    assert moved.prompt_cached > 0
    # Only the re-tokenised end is evaluated again.
    assert typed.prompt_evaluated <= 4
    assert typed.prompt_cached == typed.prompt_tokens - typed.prompt_evaluated


def test_tiny_fim_suffix_moves_with_the_cursor_and_output_is_unchanged(
    tiny: LoadedModel,
) -> None:
    assert tiny.can_shift
    prefix = "def alpha(beta):\n    gamma = beta * 2\n    return g"
    suffix = "amma\n\n" + "".join(f"print(alpha({i}))\n" for i in range(12))
    tiny.complete(greedy(prefix, suffix))
    for typed in ("a", "am", "amm"):
        req = greedy(prefix + typed, suffix)
        r = tiny.complete(req)
        assert r.fim
        # The suffix (over 100 byte tokens) came from the cache, moved one place on.
        assert r.prompt_cached > len(prefix) + 100
        assert r.prompt_evaluated <= 3
        # The decode after the move works; which cells moved, the tiny model can't tell (its
        # text is the same with cells moved from the wrong place): the Gemma tests above can.
        assert r.text == fresh(tiny, req).text
        tiny.complete(req)  # back to this prompt's cache for the next key


def test_cancel_during_the_prompt_stops_inside_a_batch_and_leaves_a_sound_cache(
    gemma: LoadedModel, gemma_fresh: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    lines = SOURCE.read_text().splitlines(keepends=True)
    req = greedy("".join(lines[1800:1990]), max_tokens=8)
    assert len(gemma.build_prompt(req).tokens) > 1500  # several 512-token batches
    gemma.complete(greedy("y", max_tokens=1))
    cancel = threading.Event()
    set_at: list[float] = []

    def stop_soon() -> None:
        time.sleep(0.3)
        set_at.append(time.perf_counter())
        cancel.set()

    t = threading.Thread(target=stop_soon)
    t.start()
    with caplog.at_level(logging.DEBUG, logger="vibrant_rpc.llama_cpp"):
        r = gemma.complete(req, cancel=cancel)
    returned = time.perf_counter()
    t.join()
    assert r.finish_reason == "cancelled" and r.text == ""
    # llama.cpp's "failed to decode" is the stop asked for: not an error in the editor's log.
    assert any("failed to decode" in rec.message for rec in caplog.records)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    # Generous for a loaded machine; the benchmark measures the figure. Without the
    # abort callback it is a whole 512-token batch (seconds here).
    assert returned - set_at[0] < 1.0
    again = gemma.complete(req)
    assert again.finish_reason == "length"
    # The cache kept the batches decoded before the cancel, and only the rest is new.
    assert again.prompt_cached % 512 == 1 and again.prompt_cached < again.prompt_tokens
    assert again.prompt_evaluated + again.prompt_cached == again.prompt_tokens
    # Every token is a fresh evaluation's choice, but at a near-tie. Flash attention
    # (inference.model.FLASH_ATTENTION) sums over the cache's cells in their order, which
    # the earlier tests' shifts have permuted, so the last bits differ and a near tie can go
    # the other way: measured, "for option_string in option_" fresh and "for action_string
    # in action_" here. (A lost batch is caught by the counts above: this 270M model's next
    # tokens hardly move when far cells are wrong, as the window-slide test found.)
    chosen = held_tokens(gemma)
    base = fresh(gemma_fresh, req)
    behind = behind_best(gemma_fresh, chosen, again.prompt_tokens)
    print(f"{again.text!r} vs fresh {base.text!r}; behind the best by at most {max(behind):.3f}")
    assert len(behind) == len(chosen) - again.prompt_tokens > 0
    assert max(behind) < NEAR_TIE, behind
