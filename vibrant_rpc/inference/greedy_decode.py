"""Greedy generation in llama.cpp, a drafted batch at a time.

At temperature 0 the next token is the argmax of the logits (as llama.cpp's greedy
sampler, in 0.1 ms where its sampler chain takes 0.8 ms over Gemma's 262k tokens).
Each step decodes the token just chosen together with a draft of the tokens likely
to follow it (``lookup_draft``: looked up in the prompt), with logits at every
position: the draft's first k tokens that equal the argmax before them are kept, and
the argmax after them is the next token, so a step gives k + 1 tokens for about the
cost of one where a wider decode costs little more than a 1-token one (``draft_policy``
measures that as it goes, and which drafts are kept, and checks only drafts that pay).
The rejected draft's cells leave the cache before anything is yielded, so a caller
may stop at any token and the cache holds exactly what ``input_ids`` says. A batch's
logits can differ from one-by-one decoding in the last bits (other kernels);
``tests/test_greedy_decode.py`` compares the two on real files.

Runs on llama.cpp's thread, inside ``LoadedModel``; knows nothing of requests.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from vibrant_rpc.inference.draft_policy import DraftPolicy
from vibrant_rpc.inference.lookup_draft import LookupDrafter

if TYPE_CHECKING:
    from llama_cpp import Llama

# Longest draft a step checks. Logits at every position cost a pass of the output
# layer each, and Gemma 3's is most of the model (262k tokens): on 2 cores of an AMX
# Xeon, with 2700 tokens cached, a decode of 1 token took 22-25 ms, of 2 with every
# logit 25, of 3 30, of 4 35, of 8 56 and of 16 84. On 36 of the typing benchmark's
# requests a 1-token draft took 0.82 of plain greedy's time, 2 tokens 0.84, 3 0.87,
# 4 1.07 (bench/RESULTS.md). Whether a step checks its draft at all is
# ``draft_policy``'s: on other CPUs a 2-token decode costs far more than one.
DRAFT_MAX = 1


class DraftStats(msgspec.Struct):
    """What the drafts did in one completion (filled in by ``greedy_tokens``)."""

    drafted: int = 0  # draft tokens checked
    accepted: int = 0  # of them, kept


def decode_at(
    llm: Llama, positions: Sequence[int], tokens: Sequence[int], *, every: bool = False
) -> None:
    """One llama_decode of tokens at the given positions (sequence 0), with logits for
    the last token only, or for ``every`` token."""
    handle: Any = llm._batch
    batch = handle.batch
    batch.n_tokens = len(tokens)
    for i, (pos, tok) in enumerate(zip(positions, tokens, strict=True)):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.seq_id[i][0] = 0
        batch.n_seq_id[i] = 1
        batch.logits[i] = every
    batch.logits[len(tokens) - 1] = True
    ctx: Any = llm._ctx
    ctx.decode(handle)


def greedy_tokens(
    llm: Llama,
    memory: Any,
    n_held: int,
    *,
    budget: int,
    limit: int,
    draft_max: int = DRAFT_MAX,
    stats: DraftStats | None = None,
    policy: DraftPolicy | None = None,
) -> Generator[int, None, None]:
    """The greedy continuation of the ``n_held`` tokens the KV cache holds, whose last
    logits are the last decode's. ``budget``: how many tokens the caller may take at
    most (drafts never run past it); ``limit``: the context's size (nor past that);
    ``policy``: which drafts to check, told what each step cost (None: every one)."""
    import llama_cpp
    import numpy as np

    stats = stats if stats is not None else DraftStats()
    policy = policy if policy is not None else DraftPolicy(adaptive=False)
    after_right = False  # the last step's draft, checked or not, had its next token right
    ctx: Any = llm._ctx
    n_vocab = llm.n_vocab()

    def argmax(i: int) -> int:
        logits = llama_cpp.llama_get_logits_ith(ctx.ctx, i)
        return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())

    drafter = LookupDrafter(llm.input_ids[:n_held].tolist()) if draft_max > 0 else None
    pos = n_held
    token = argmax(-1)
    given = 0
    while True:
        yield token
        given += 1
        room = min(budget - given - 1, limit - pos - 1, draft_max)
        looked: list[int] = []  # the draft found, checked or not
        match = 0
        if drafter is not None:
            drafter.append(token)
            if room > 0:
                looked, match = drafter.lookup(room)
        draft = looked if looked and policy.wants(match, after_right) else []
        batch = [token, *draft]
        started = time.perf_counter()
        decode_at(llm, range(pos, pos + len(batch)), batch, every=bool(draft))
        stats.drafted += len(draft)
        kept = 0
        if draft:
            following = [argmax(i) for i in range(len(batch))]
            while kept < len(draft) and following[kept] == draft[kept]:
                kept += 1
            if kept < len(draft):
                llama_cpp.llama_memory_seq_rm(memory, 0, pos + kept + 1, -1)
            nxt = following[kept]
        else:
            nxt = argmax(-1)
        # Reading the logits waits for the decode, on a GPU too: the step's whole cost.
        policy.step_took(bool(draft), (time.perf_counter() - started) * 1000)
        if looked:
            # Whether its first token was right is known checked or not: the next token
            # is the argmax after this one either way.
            right = looked[0] == (following[0] if draft else nxt)
            policy.draft_was(match, after_right, right)
            after_right = right
        else:
            after_right = False
        stats.accepted += kept
        accepted = batch[: kept + 1]
        llm.input_ids[pos : pos + len(accepted)] = accepted
        pos += len(accepted)
        llm.n_tokens = pos
        for t in accepted[1:]:
            yield t
            given += 1
            if drafter is not None:
                drafter.append(t)
        token = nxt
