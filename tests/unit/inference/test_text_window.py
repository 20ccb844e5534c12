"""Only the text next to the cursor is tokenized (inference.text_window), with Gemma 3's
real tokenizer: the tokens kept are the whole text's own, and a 4 MB prompt costs what a
40 KB one does (llama.cpp's tokenizer took 7 s for 400 KB of code here)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from tests.support.gguf_fixtures import gemma_path
from vibrant_rpc.inference.text_window import Tokenize, head_tokens, tail_tokens

pytestmark = pytest.mark.llama

ROOM = 3968  # a 4096-token context less 128 for the answer


@pytest.fixture(scope="module")
def tokenize() -> Iterator[Tokenize]:
    import llama_cpp

    llm = llama_cpp.Llama(str(gemma_path()), vocab_only=True, verbose=False)
    yield lambda text: list(llm.tokenize(text.encode(), add_bos=False, special=False))
    llm.close()


def code(lines: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        indent = " " * 4 * rng.randrange(4)
        out.append(f"{indent}value_{i} = compute({rng.randrange(999)}, 'é{i % 7}')  # step\n")
    return "".join(out)


def test_the_tokens_kept_are_the_whole_texts_own(tokenize: Tokenize) -> None:
    text = code(1500)  # 76 KB: its whole tokenization is the reference
    whole = tokenize(text)
    rng = random.Random(7)
    for _ in range(12):
        cursor = rng.randrange(len(text))
        before, after = text[:cursor], text[cursor:]
        need = rng.choice([10, 500, ROOM])
        tail, head = tail_tokens(tokenize, before, need), head_tokens(tokenize, after, need)
        full_tail, full_head = tokenize(before), tokenize(after)
        assert tail[-need:] == full_tail[-need:], cursor
        assert head[:need] == full_head[:need], cursor
        # Few more than needed were tokenized (a text shorter than that: all of it).
        assert len(tail) >= min(need + 16, len(full_tail)) and len(tail) < 4 * need + 100
    assert len(whole) > 2 * ROOM


def test_a_4_mb_prompt_costs_what_a_40_kb_one_does(tokenize: Tokenize) -> None:
    base = code(80_000)  # about 4 MB
    spaces = " " * 4_000_000  # long whitespace tokens: the window doubles a few times
    times = {}
    for name, text in (("40 KB", base[-40_000:]), ("400 KB", base[-400_000:]),
                       ("4 MB", base[-4_000_000:]), ("4 MB of spaces", spaces)):  # fmt: skip
        start = time.perf_counter()
        tokens = tail_tokens(tokenize, text, ROOM)
        times[name] = time.perf_counter() - start
        assert len(tokens) >= ROOM
        print(f"tail tokens of a {name} prompt: {times[name] * 1e3:.0f} ms")
    start = time.perf_counter()
    tokenize(base[-400_000:])
    print(f"the whole 400 KB tokenized: {time.perf_counter() - start:.2f} s")
    # The same window each time: a bound of 10x leaves room for a busy machine.
    assert times["4 MB"] < 10 * times["40 KB"] + 0.05 and times["4 MB"] < 0.5
    assert times["4 MB of spaces"] < 1.0
