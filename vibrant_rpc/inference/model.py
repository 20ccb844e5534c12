"""One GGUF model loaded in llama.cpp, and completions from it.

Plain blocking Python, meant for a worker thread; it knows nothing of JSON-RPC.
``llama_cpp`` is imported inside functions only, through ``llama_setup`` (which says
what the import costs).

Three things work around llama-cpp-python 0.3.36 (the first in ``llama_setup``, with
the AMX repacking that crashes in VMs):

- ``Llama(verbose=False)`` silences llama.cpp by pointing file descriptors 1
  and 2 at /dev/null during the load. That is process-wide, and fd 1 is the
  JSON-RPC channel: anything another thread writes meanwhile is lost. So the
  model is built with ``verbose=True``, llama.cpp's log goes through our own
  callback (to Python logging, and captured for load errors), and the few
  lines Python prints during the load are caught from ``sys.stderr``.
- ``create_completion(suffix=...)`` builds its infill prompt from token 0 in
  place of the FIM tokens (a TODO in its source), which is ``<pad>`` for
  Gemma: garbage. FIM prompts are built here from the vocabulary's own ids.
- ``Llama.detokenize`` drops tokens longer than 32 bytes (Gemma has hundreds);
  pieces are read here with a buffer that grows.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from vibrant_rpc.errors import ModelClosedError, ModelLoadFailedError
from vibrant_rpc.inference.draft_policy import DraftPolicy
from vibrant_rpc.inference.greedy_decode import DRAFT_MAX, DraftStats, decode_at, greedy_tokens
from vibrant_rpc.inference.kv_reuse import (
    ReusePlan,
    plan_prefix,
    plan_reuse,
    removed_ranges,
    shift_order,
)
from vibrant_rpc.inference.llama_setup import (
    COMPUTE,
    LLAMA_LOG,
    LOAD_LOCK,
    llama_cpp_module,
    load_error,
    warm_up,
)
from vibrant_rpc.inference.prompt import (
    ContextChunk,
    FimTokens,
    Prompt,
    PromptModel,
    RepoTokens,
    build_prompt,
)
from vibrant_rpc.inference.text_stream import TextFilter, TextStream
from vibrant_rpc.states import FinishReason

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)
llama_log = logging.getLogger("vibrant_rpc.llama_cpp")
__all__ = ["warm_up"]  # re-exported: the service warms llama.cpp up through this module


# Shortest run of cached tokens moved into place rather than evaluated again. Shorter
# runs are mostly re-tokenised text near the cursor, and the shorter a chunk, the more
# likely it matches code elsewhere whose keys were computed in another context.
REUSE_MIN_CHUNK = 32


# How the runtime loads every model (``LoadedModel.load`` passes it to llama.cpp), and so what a
# load's estimate assumes (``fit.estimate``); ``EstimateOptions`` keeps llama.cpp's own default.
# Flash attention, on in llama-server (off in llama-cpp-python): deep in a file (2500 tokens
# in Gemma 3's full-size SWA cache, kept so that it can shift) 16 tokens took 453 ms without
# it, 391 ms with it (2 cores); it also drops the attention scores from the compute buffers.
FLASH_ATTENTION = True


class LoadOptions(msgspec.Struct, kw_only=True, frozen=True):
    # 0 means the model's training context (a 32k KV cache for Qwen 2.5 Coder).
    context_size: Annotated[int, msgspec.Meta(ge=0)] = 4096
    # None lets llama.cpp choose (half the logical CPUs).
    threads: Annotated[int, msgspec.Meta(ge=1)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 512
    mmap: bool = True
    mlock: bool = False
    # -1 offloads every layer.
    gpu_layers: Annotated[int, msgspec.Meta(ge=-1)] = 0


class CompletionRequest(msgspec.Struct, kw_only=True, frozen=True):
    prompt: str
    # The text after the cursor: a fill-in-the-middle request when the model can.
    suffix: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 128
    temperature: Annotated[float, msgspec.Meta(ge=0.0)] = 0.2
    stop: list[str] = []
    # Chunks of other files, before the window (``prompt``); the file's name, and its
    # language's line comment for chunks as commented snippets.
    context: list[ContextChunk] = []
    filename: str | None = None
    comment: str = "#"
    # Judges the text as it streams: a cut ends generation (completion/pipeline).
    text_filter: TextFilter | None = None


class CompletionResult(msgspec.Struct, kw_only=True, frozen=True):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    fim: bool
    total_ms: float
    # Of prompt_tokens: how many were run through the model, and how many the KV
    # cache already held (at their place, or shifted there). They add up to
    # prompt_tokens, except when a cancel stopped the prompt part way.
    prompt_evaluated: int = 0
    prompt_cached: int = 0
    # Greedy completions: tokens drafted from the prompt and checked, and of them how
    # many the model agreed with (``greedy_decode``).
    drafted: int = 0
    draft_accepted: int = 0


class LoadedModel:
    """A model in memory. ``complete`` runs one completion at a time; ``close`` frees it."""

    def __init__(self, model_id: str, path: Path, llm: Llama, load_ms: float) -> None:
        llama_cpp = llama_cpp_module()
        self.model_id = model_id
        self.path = path
        self.loaded_at = time.time()
        self.load_ms = load_ms
        self._llm: Llama | None = llm
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._piece_buf = ctypes.create_string_buffer(64)
        self.context_size: int = llm.n_ctx()
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._bos: int = llm.token_bos()
        fim = (
            llama_cpp.llama_vocab_fim_pre(self._vocab),
            llama_cpp.llama_vocab_fim_suf(self._vocab),
            llama_cpp.llama_vocab_fim_mid(self._vocab),
        )
        # llama.cpp knows them from tokenizer.ggml.fim_*_token_id, or by their text
        # (<|fim_prefix|>, <fim_prefix>, ...); -1 is "none".
        self.fim_tokens: FimTokens | None = FimTokens(*fim) if min(fim) >= 0 else None
        vocab = self._vocab
        repo = (llama_cpp.llama_vocab_fim_rep(vocab), llama_cpp.llama_vocab_fim_sep(vocab))
        self.repo_tokens = RepoTokens(*repo) if self.fim_tokens and min(repo) >= 0 else None
        # Qwen's file separator and padding end a completion as its end token does.
        self._end_tokens = {*repo, llama_cpp.llama_vocab_fim_pad(self._vocab)} - {-1}
        self.supports_fim = self.fim_tokens is not None
        # Keeping the KV cache of the shared start of consecutive prompts needs a
        # cache that can drop its tail; recurrent state cannot.
        self._reuse_kv = not (
            llama_cpp.llama_model_is_recurrent(llm.model)
            or llama_cpp.llama_model_is_hybrid(llm.model)
        )
        # Moving cached chunks needs memory that can shift positions (RoPE models in a
        # plain KV cache; Gemma 3's full-size SWA cache can here).
        ctx: Any = llm._ctx
        self._memory: Any = ctx.memory
        self.can_shift: bool = self._reuse_kv and bool(
            llama_cpp.llama_memory_can_shift(self._memory)
        )
        self.reuse_min_chunk = REUSE_MIN_CHUNK
        # Tokens a greedy step drafts from the prompt (greedy_decode); 0: one at a time.
        self.draft_max = DRAFT_MAX
        # Which drafts pay on this machine, learnt over this model's completions.
        self.draft_policy = DraftPolicy()
        # A cancel stops a prompt's llama_decode between graph nodes, not only between
        # batches: a 512-token batch takes a second or more on a small CPU. ggml calls it
        # for every graph node (a Python call each), so it is set for the prompt only;
        # in generation the check between tokens is soon enough (a token is ~25 ms here).
        # Both are kept on self (ctypes callbacks must outlive their use from C).
        self._ctx_handle: Any = ctx.ctx
        self._should_stop: Callable[[], bool] | None = None
        self._abort_cb = llama_cpp.ggml_abort_callback(self._abort_requested)
        self._no_abort_cb = llama_cpp.ggml_abort_callback()  # NULL: not called

    def _abort_requested(self, _data: Any) -> bool:
        should_stop = self._should_stop
        if should_stop is None or not should_stop():
            return False
        LLAMA_LOG.aborting = True  # until the prompt's end: what llama.cpp logs is expected
        return True

    @classmethod
    def load(cls, model_id: str, path: Path, options: LoadOptions) -> LoadedModel:
        """Load ``path`` (the first shard of a split model); ModelLoadFailedError on failure.
        On llama.cpp's own thread, as every completion (``llama_setup.ComputeThread``)."""
        return COMPUTE.run(lambda: cls._load(model_id, path, options))

    @classmethod
    def _load(cls, model_id: str, path: Path, options: LoadOptions) -> LoadedModel:
        llama_cpp = llama_cpp_module()
        started = time.perf_counter()
        if not path.is_file():
            raise ModelLoadFailedError(
                f"Could not load model {model_id!r}: {path} does not exist.",
                modelId=model_id,
                path=str(path),
            )
        printed = io.StringIO()
        with LOAD_LOCK, LLAMA_LOG.capture() as records:
            try:
                # verbose=True only keeps llama-cpp-python off fds 1 and 2 (module docstring).
                with contextlib.redirect_stderr(printed):
                    llm = llama_cpp.Llama(
                        model_path=str(path),
                        n_ctx=options.context_size,
                        n_threads=options.threads,
                        n_threads_batch=options.threads,
                        n_batch=options.batch_size,
                        n_ubatch=min(options.batch_size, 512),
                        use_mmap=options.mmap,
                        use_mlock=options.mlock,
                        n_gpu_layers=options.gpu_layers,
                        flash_attn=FLASH_ATTENTION,
                        verbose=True,
                    )
            except Exception as exc:
                raise load_error(model_id, path, exc, records) from exc
            finally:
                if printed.getvalue().strip():
                    llama_log.debug("%s", printed.getvalue().rstrip())
        llm.verbose = False  # from here on its prints are only noise in generate()
        model = cls(model_id, path, llm, (time.perf_counter() - started) * 1000)
        log.info(
            "loaded %s from %s in %.0f ms (context %d, fim %s)",
            model_id,
            path,
            model.load_ms,
            model.context_size,
            model.supports_fim,
        )
        return model

    def _open(self) -> Llama:
        if self._llm is None:
            raise ModelClosedError(f"model {self.model_id!r} was closed")
        return self._llm

    def _tokenize(self, llm: Llama, text: str) -> list[int]:
        # special=False: code that contains "<|endoftext|>" is text, not a control token.
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def build_prompt(self, req: CompletionRequest) -> Prompt:
        """The tokens ``complete`` would feed the model for ``req``."""
        with self._lock:
            return self._build_prompt(self._open(), req)

    def _build_prompt(self, llm: Llama, req: CompletionRequest) -> Prompt:
        head = [self._bos] if self._add_bos and self._bos >= 0 else []
        empty = [self._bos] if self._bos >= 0 else [llm.token_eos()]
        m = PromptModel(
            lambda text: self._tokenize(llm, text),
            head, self.fim_tokens, self.repo_tokens, self.context_size, empty,
        )  # fmt: skip
        return build_prompt(
            m, req.prompt, req.suffix, req.max_tokens, req.context, req.filename, req.comment
        )

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # too small: -n is the size needed
            buf = self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _plan(self, llm: Llama, tokens: list[int]) -> ReusePlan:
        # What the KV cache holds now (``kv_reuse``'s ``held``).
        held: list[int] = llm.input_ids[: llm.n_tokens].tolist() if self._reuse_kv else []
        if self.can_shift:
            return plan_reuse(held, tokens, self.reuse_min_chunk)
        return plan_prefix(held, tokens)

    def _rearrange(self, plan: ReusePlan) -> bool:
        """Drop the cells the plan doesn't keep and shift the moved chunks into place."""
        import llama_cpp

        for start, end in removed_ranges(plan.prefix, plan.moves):
            if not llama_cpp.llama_memory_seq_rm(self._memory, 0, start, end):
                return False
        for m in shift_order(plan.moves):
            llama_cpp.llama_memory_seq_add(self._memory, 0, m.src, m.src + m.length, m.dst - m.src)
        return True

    def _prefill(
        self, llm: Llama, tokens: list[int], stop: Callable[[], bool]
    ) -> tuple[bool, int, int]:
        """Bring the KV cache to ``tokens``, batch by batch (so that a cancel lands
        between batches), keeping what it can of the previous prompt (``kv_reuse``).

        Leaves ``llm.input_ids[:n_tokens]`` equal to the prompt, so that
        ``Llama.generate`` samples at once. Returns (finished, evaluated, cached).
        """
        import llama_cpp

        self._should_stop = stop
        llama_cpp.llama_set_abort_callback(self._ctx_handle, self._abort_cb, None)
        try:
            return self._prefill_plan(llm, tokens, stop)
        except RuntimeError:
            if not stop():
                raise
            # llama_decode aborted part way: the cache holds what input_ids says, no more.
            self._drop_after(llm, min(llm.n_tokens, len(tokens)))
            return False, 0, 0
        finally:
            llama_cpp.llama_set_abort_callback(self._ctx_handle, self._no_abort_cb, None)
            self._should_stop = None
            LLAMA_LOG.aborting = False

    def _prefill_plan(
        self, llm: Llama, tokens: list[int], stop: Callable[[], bool]
    ) -> tuple[bool, int, int]:
        import llama_cpp

        plan = self._plan(llm, tokens)
        if (plan.prefix > 0 or plan.moves) and not self._rearrange(plan):
            plan = plan_prefix([], tokens)
        if plan.prefix == 0 and not plan.moves:
            llm.reset()  # type: ignore[no-untyped-call]  # unannotated in llama_cpp
        if not plan.moves:
            # Only a tail to evaluate: llama-cpp-python's own path.
            llm.n_tokens = plan.prefix  # eval() drops the KV cells from n_tokens on
            done = 0
            for start in range(plan.prefix, len(tokens), llm.n_batch):
                if stop():
                    return False, done, plan.prefix
                llm.eval(tokens[start : start + llm.n_batch])
                done += len(tokens[start : start + llm.n_batch])
            return True, done, plan.prefix
        # Until all is decoded, n_tokens stays at the prefix, so that a cancel leaves a
        # state the next plan reads correctly.
        llm.n_tokens = plan.prefix
        # llama_decode takes a sequence's tokens only right after its last position
        # (llama-batch.cpp: "Y = X + 1"), so a gap between moved chunks is decoded after
        # the last chunk and then shifted into its hole. Its tokens see the chunks after
        # the hole as if they came first: one more approximation, for a few tokens.
        end = plan.moves[-1].dst + plan.moves[-1].length
        done = 0
        for start, stop_at in plan.evaluate:
            for b in range(start, stop_at, llm.n_batch):
                if stop():
                    # The moved chunks are in the cache, but not in input_ids: drop them.
                    self._drop_after(llm, plan.prefix)
                    return False, done, plan.prefix
                chunk = list(range(b, min(b + llm.n_batch, stop_at)))
                at = chunk[0] if chunk[0] >= end else end
                decode_at(llm, range(at, at + len(chunk)), [tokens[p] for p in chunk])
                if at != chunk[0]:
                    llama_cpp.llama_memory_seq_add(
                        self._memory, 0, at, at + len(chunk), chunk[0] - at
                    )
                done += len(chunk)
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        llm._requires_eval = False  # the last decode's logits are this prompt's
        return True, done, plan.cached

    def _drop_after(self, llm: Llama, keep: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1)
        llm.n_tokens = keep

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> CompletionResult:
        """Generate a completion, calling ``on_text`` with each new piece of text.

        The pieces concatenate to the result's text. Setting ``cancel`` (or closing
        the model) stops it within a token or a prompt batch, with the text so far.
        Blocking; one completion at a time per model (later calls wait). It runs on
        llama.cpp's own thread (``llama_setup.ComputeThread``), as the load did.
        """
        return COMPUTE.run(lambda: self._complete(req, on_text, cancel))

    def _complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> CompletionResult:
        import llama_cpp

        with self._lock:
            llm = self._open()
            started = time.perf_counter()

            def stopped() -> bool:
                return self._closing.is_set() or (cancel is not None and cancel.is_set())

            prompt = self._build_prompt(llm, req)
            n_prompt = len(prompt.tokens)
            stream = TextStream(req.stop, on_text, req.text_filter)
            finish: FinishReason = "length"
            hit_stop = False
            n_out = 0
            generator = None
            evaluated = cached = 0
            drafts = DraftStats()
            try:
                finished, evaluated, cached = self._prefill(llm, prompt.tokens, stopped)
                if not finished:
                    finish = "cancelled"
                else:
                    # The prompt is all in the cache now, so generate() samples at once.
                    generator = (
                        greedy_tokens(
                            llm,
                            self._memory,
                            n_prompt,
                            budget=req.max_tokens,
                            limit=self.context_size,
                            draft_max=self.draft_max,
                            stats=drafts,
                            policy=self.draft_policy,
                        )
                        if req.temperature == 0
                        else llm.generate(prompt.tokens, temp=req.temperature)
                    )
                    while True:
                        # The last token sampled is evaluated only to sample the next one.
                        if n_out >= req.max_tokens or n_prompt + n_out >= self.context_size:
                            finish = "length"
                            break
                        if stopped():
                            finish = "cancelled"
                            break
                        token = next(generator)
                        if token in self._end_tokens or llama_cpp.llama_vocab_is_eog(
                            self._vocab, token
                        ):
                            finish = "stop"
                            break
                        n_out += 1
                        if stream.feed(self._piece(token)):
                            finish, hit_stop = "stop", True
                            break
            finally:
                if generator is not None:
                    generator.close()
            text = stream.finish(hit_stop)
            return CompletionResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=n_prompt,
                completion_tokens=n_out,
                fim=prompt.fim,
                total_ms=(time.perf_counter() - started) * 1000,
                prompt_evaluated=evaluated,
                prompt_cached=cached,
                drafted=drafts.drafted,
                draft_accepted=drafts.accepted,
            )

    def close(self) -> None:
        """Free the model's memory (waits for a running completion, which stops early)."""
        self._closing.set()
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
