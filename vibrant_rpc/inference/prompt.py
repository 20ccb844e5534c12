"""The tokens a completion feeds the model: the window around the cursor, in
fill-in-the-middle form where the model has FIM tokens, after chunks of other files.

Chunks come first and in the client's order, so the start of the prompt stays the same
from keystroke to keystroke and the KV cache keeps it (``kv_reuse``): a keystroke
evaluates a token or two, a new chunk about its own tokens (the window after it is
shifted into place, not evaluated again). A model with Qwen 2.5 Coder's repo-level
tokens gets them (``<|repo_name|>``, ``<|file_sep|>``: the format Qwen documents and
llama-server's ``/infill`` builds); any other model gets each chunk as commented lines
under its path (as Tabby and Copilot do), in the file's line comment.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .text_window import head_tokens, tail_tokens

# The most tokens chunks of other files take, and at most this share of the prompt's
# room: the window around the cursor matters more (Continue gives its whole context
# 1024 tokens).
CONTEXT_TOKENS = 1024
CONTEXT_SHARE = 4  # a quarter
REPO_NAME = "project"  # Qwen's format names the repository; the client doesn't


class FimTokens(msgspec.Struct, frozen=True):
    prefix: int
    suffix: int
    middle: int


class RepoTokens(msgspec.Struct, frozen=True):
    """Qwen 2.5 Coder's repo-level tokens."""

    repo_name: int
    file_sep: int


class ContextChunk(msgspec.Struct, frozen=True):
    filename: str
    text: str


class Prompt(msgspec.Struct, frozen=True):
    """The tokens a completion feeds the model, and how they were made."""

    tokens: list[int]
    fim: bool
    # Text was cut to fit the context: the start of the prefix, the end of the suffix.
    truncated: bool
    context_tokens: int = 0  # of tokens: chunks of other files (their markers included)


class PromptModel(msgspec.Struct, frozen=True):
    """What of a model a prompt is built for."""

    tokenize: Callable[[str], list[int]]
    head: list[int]  # BOS, where the model wants one
    fim: FimTokens | None
    repo: RepoTokens | None
    context_size: int
    empty: list[int]  # the prompt for no text at all: BOS, else EOS


def _chunk_tokens(
    m: PromptModel, chunks: list[ContextChunk], comment: str, budget: int
) -> list[list[int]]:
    """Each chunk's tokens, the last chunks first to fit the budget, in the given order."""
    kept: list[list[int]] = []
    used = 0
    for chunk in reversed(chunks):
        text = chunk.text if chunk.text.endswith("\n") else chunk.text + "\n"
        if m.repo is not None:
            tokens = [m.repo.file_sep, *m.tokenize(f"{chunk.filename}\n{text}")]
        else:
            lines = "".join(f"{comment} {line}\n" for line in text.splitlines())
            tokens = m.tokenize(f"{comment} Path: {chunk.filename}\n{lines}")
        if used + len(tokens) > budget:
            continue  # too big for what is left; a smaller earlier one may fit
        kept.append(tokens)
        used += len(tokens)
    kept.reverse()
    return kept


def build_prompt(
    m: PromptModel,
    prompt: str,
    suffix: str | None,
    max_tokens: int,
    context: list[ContextChunk],
    filename: str | None,
    comment: str,
) -> Prompt:
    # Room for the prompt: the context less the answer, but never less than half.
    room = m.context_size - min(max_tokens, m.context_size // 2)
    fim = m.fim if suffix is not None else None
    repo = m.repo if fim is not None and context else None
    model = msgspec.structs.replace(m, repo=repo)
    chunks = _chunk_tokens(model, context, comment, min(CONTEXT_TOKENS, room // CONTEXT_SHARE))
    extra: list[int] = []
    if repo is not None:
        extra = [repo.repo_name, *m.tokenize(f"{REPO_NAME}\n")]
        for tokens in chunks:
            extra += tokens
        extra += [repo.file_sep, *m.tokenize(f"{filename or 'file'}\n")]
    else:
        for tokens in chunks:
            extra += tokens
    head = m.head
    room -= len(head) + len(extra)
    if suffix is not None and fim is not None:
        # Only the text next to the cursor is tokenized: at most ``room`` tokens of it stay.
        before, after = tail_tokens(m.tokenize, prompt, room), head_tokens(m.tokenize, suffix, room)
        room -= 3
        truncated = len(before) + len(after) > room
        if truncated:
            # Text near the cursor matters most; the prefix gets the larger share.
            keep_suffix = min(len(after), max(room // 4, room - len(before)))
            keep_prefix = max(room - keep_suffix, 0)
            before = before[len(before) - keep_prefix :]
            after = after[:keep_suffix]
        if repo is not None:
            tokens = [*head, *extra, fim.prefix, *before, fim.suffix, *after, fim.middle]
        else:
            # The chunks' comments go inside the prefix, which starts the same each time.
            tokens = [*head, fim.prefix, *extra, *before, fim.suffix, *after, fim.middle]
        return Prompt(tokens, fim=True, truncated=truncated, context_tokens=len(extra))
    # Without FIM tokens the suffix is dropped: the model continues the prefix.
    body = tail_tokens(m.tokenize, prompt, room)
    truncated = len(body) > room
    if truncated:
        body = body[len(body) - max(room, 0) :]
    tokens = [*head, *extra, *body] or m.empty
    return Prompt(tokens, fim=False, truncated=truncated, context_tokens=len(extra))
