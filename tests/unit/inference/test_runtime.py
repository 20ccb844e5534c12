"""The llama.cpp runtime on real files: Gemma 3 270M, Gemma split in shards, a tiny FIM model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.gguf_fixtures import (
    GEMMA_SIZE,
    gemma_path,
    gemma_split_paths,
    tiny_fim_path,
    tiny_fim_token_id,
)
from vibrant_rpc.errors import ModelClosedError, ModelLoadFailedError
from vibrant_rpc.inference.model import (
    CompletionRequest,
    LoadedModel,
    LoadOptions,
)
from vibrant_rpc.inference.prompt import FimTokens
from vibrant_rpc.inference.text_stream import TextStream

pytestmark = pytest.mark.llama

OPTS = LoadOptions(context_size=512, threads=2)
CODE = "def fibonacci(n):\n"
# Gemma's SentencePiece tokens for CODE, after <bos> (2).
CODE_TOKENS = [2, 2063, 10779, 78113, 236769, 236749, 1473, 107]
CALL = "\nprint(fibonacci(10))\n"
CALL_TOKENS = [107, 1995, 236769, 73368, 78113, 236769, 236770, 236771, 1223, 107]


@pytest.fixture(scope="module")
def gemma() -> Iterator[LoadedModel]:
    model = LoadedModel.load("gemma", gemma_path(), OPTS)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny() -> Iterator[LoadedModel]:
    model = LoadedModel.load("tiny", tiny_fim_path(), OPTS)
    yield model
    model.close()


def greedy(max_tokens: int = 24, stop: list[str] | None = None) -> CompletionRequest:
    return CompletionRequest(prompt=CODE, max_tokens=max_tokens, temperature=0.0, stop=stop or [])


def test_importing_runtime_does_not_import_llama_cpp() -> None:
    code = "import sys, vibrant_rpc.inference.model; sys.exit('llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_gemma_loads_and_streams_a_real_completion(gemma: LoadedModel) -> None:
    assert gemma.model_id == "gemma" and gemma.path == gemma_path()
    assert gemma.path.stat().st_size == GEMMA_SIZE
    assert gemma.load_ms > 0 and gemma.loaded_at > 0
    assert gemma.context_size == 512
    assert not gemma.supports_fim and gemma.fim_tokens is None

    pieces: list[str] = []
    result = gemma.complete(greedy(24), on_text=pieces.append)

    assert result.finish_reason == "length"
    assert result.prompt_tokens == len(CODE_TOKENS)
    assert result.completion_tokens == 24
    assert not result.fim
    assert len(pieces) > 1 and "".join(pieces) == result.text
    # Real text from the model: an indented function body.
    assert result.text.startswith("    ") and len(result.text.split()) >= 4
    assert result.total_ms > 0


def test_stop_string_ends_the_completion_and_is_not_returned(gemma: LoadedModel) -> None:
    pieces: list[str] = []
    result = gemma.complete(greedy(48, stop=["\n"]), on_text=pieces.append)

    assert result.finish_reason == "stop"
    assert "\n" not in result.text and result.text.strip()
    assert result.completion_tokens < 48
    assert "".join(pieces) == result.text


def test_cancel_after_the_first_piece_stops_within_a_few_tokens(gemma: LoadedModel) -> None:
    cancel = threading.Event()
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        cancel.set()

    result = gemma.complete(greedy(64), on_text=on_text, cancel=cancel)

    assert result.finish_reason == "cancelled"
    assert 1 <= result.completion_tokens <= 3
    assert result.text == "".join(pieces) and result.text


def test_cancel_before_the_start_generates_nothing(gemma: LoadedModel) -> None:
    cancel = threading.Event()
    cancel.set()
    result = gemma.complete(greedy(16), cancel=cancel)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens == 0 and result.text == ""
    assert result.prompt_tokens == len(CODE_TOKENS)


def test_gemma_with_a_suffix_completes_the_prefix_alone(gemma: LoadedModel) -> None:
    with_suffix = CompletionRequest(prompt=CODE, suffix=CALL, max_tokens=16, temperature=0.0)

    assert gemma.build_prompt(with_suffix).tokens == CODE_TOKENS
    result = gemma.complete(with_suffix)
    assert not result.fim
    assert result.prompt_tokens == len(CODE_TOKENS)
    assert result.completion_tokens == 16 and result.text.strip()


def test_llama_cpp_python_suffix_puts_pad_tokens_into_gemma_prompt() -> None:
    """Why we never pass suffix=: llama-cpp-python 0.3.36 uses token 0 (<pad>) as FIM tokens."""
    from llama_cpp import Llama

    llm = Llama(str(gemma_path()), n_ctx=512, n_threads=2, verbose=False)
    try:
        theirs = llm.create_completion(CODE, suffix=CALL, max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    # <bos> <pad> prefix <pad> suffix <pad>: the suffix becomes text to continue.
    assert theirs["usage"]["prompt_tokens"] == len(CODE_TOKENS) + 3 + len(CALL_TOKENS)  # type: ignore[index]


def test_split_gemma_loads_from_first_shard_and_matches_the_single_file() -> None:
    shards = gemma_split_paths()
    assert [p.name for p in shards] == [
        "gemma-3-270m-q4_k_m-00001-of-00002.gguf",
        "gemma-3-270m-q4_k_m-00002-of-00002.gguf",
    ]
    assert all(p.stat().st_size > 1_000_000 for p in shards)

    outputs = []
    for path in (gemma_path(), shards[0]):
        model = LoadedModel.load("gemma", path, OPTS)
        try:
            outputs.append(model.complete(greedy(24)))
        finally:
            model.close()

    single, split = outputs
    assert split.text == single.text and single.text.strip()
    assert split.completion_tokens == single.completion_tokens == 24


def test_tiny_model_fim_prompt_uses_its_fim_token_ids(tiny: LoadedModel) -> None:
    pre = tiny_fim_token_id("<|fim_prefix|>")
    suf = tiny_fim_token_id("<|fim_suffix|>")
    mid = tiny_fim_token_id("<|fim_middle|>")
    assert tiny.supports_fim
    assert tiny.fim_tokens == FimTokens(prefix=pre, suffix=suf, middle=mid)

    req = CompletionRequest(prompt="x = ", suffix="\ny", max_tokens=5)
    prompt = tiny.build_prompt(req)
    # The tiny vocabulary is bytes: each character is its own token.
    assert prompt.tokens == [pre, *b"x = ", suf, *b"\ny", mid]
    assert prompt.fim and not prompt.truncated

    result = tiny.complete(req)
    assert result.fim
    assert result.prompt_tokens == len(prompt.tokens)
    # By construction the tiny model answers a special token with "a", a letter with the next.
    assert result.text == "abcde" and result.finish_reason == "length"


def test_fim_strings_in_the_code_are_text_not_control_tokens(tiny: LoadedModel) -> None:
    prompt = tiny.build_prompt(CompletionRequest(prompt="<|fim_suffix|>", suffix=""))
    assert prompt.tokens.count(tiny_fim_token_id("<|fim_suffix|>")) == 1
    assert prompt.tokens[1:-2] == list(b"<|fim_suffix|>")


def test_without_suffix_the_fim_model_continues_the_prompt(tiny: LoadedModel) -> None:
    result = tiny.complete(CompletionRequest(prompt="abc", max_tokens=4))
    assert not result.fim and result.prompt_tokens == 3
    assert result.text == "defg"


def test_stop_string_split_over_tokens_is_held_back_from_the_stream(tiny: LoadedModel) -> None:
    pieces: list[str] = []
    result = tiny.complete(
        CompletionRequest(prompt="z", max_tokens=20, stop=["xyz", "fg"]), on_text=pieces.append
    )
    assert result.text == "abcde" and result.finish_reason == "stop"
    assert pieces == ["a", "b", "c", "d", "e"]
    assert result.completion_tokens == 7  # "f" and "g" were generated, then cut


def test_long_prompts_keep_the_text_nearest_the_cursor(tiny: LoadedModel) -> None:
    prefix, suffix = "p" * 300 + "END", "START" + "s" * 300
    fim = tiny.build_prompt(CompletionRequest(prompt=prefix, suffix=suffix, max_tokens=100))
    assert fim.truncated and len(fim.tokens) == 512 - 100
    body = bytes(t for t in fim.tokens if t < 256)
    assert body.startswith(b"p") and b"ENDSTART" in body and body.endswith(b"s")

    plain = tiny.build_prompt(CompletionRequest(prompt=prefix * 2, max_tokens=1000))
    assert plain.truncated and len(plain.tokens) == 256  # the answer gets half the context
    assert bytes(plain.tokens).endswith(b"pppEND")


def test_generation_stops_at_the_end_of_the_context(tiny: LoadedModel) -> None:
    result = tiny.complete(CompletionRequest(prompt="a" * 400, max_tokens=1000))
    assert result.finish_reason == "length"
    assert result.prompt_tokens + result.completion_tokens == 512


def test_close_stops_a_running_completion_and_later_calls_fail() -> None:
    model = LoadedModel.load("tiny", tiny_fim_path(), OPTS)
    started = threading.Event()
    results = []

    def on_text(_piece: str) -> None:
        if not started.is_set():
            started.set()
            threading.Event().wait(0.2)  # close() is called meanwhile

    worker = threading.Thread(
        target=lambda: results.append(
            model.complete(CompletionRequest(prompt="a", max_tokens=400), on_text=on_text)
        )
    )
    worker.start()
    assert started.wait(10)
    model.close()
    worker.join(10)

    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens == 1
    model.close()  # idempotent
    with pytest.raises(ModelClosedError):
        model.complete(CompletionRequest(prompt="a"))


def test_truncated_file_fails_with_llama_cpp_words(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    with open(gemma_path(), "rb") as f:
        broken.write_bytes(f.read(50_000_000))

    with pytest.raises(ModelLoadFailedError) as info:
        LoadedModel.load("broken", broken, OPTS)

    err = info.value
    assert "'broken'" in err.message
    assert "data is not within the file bounds, model is corrupted or incomplete" in err.message
    assert err.details["path"] == str(broken)
    assert any("error loading model" in line for line in err.details["llamaErrors"])
    assert "vibrant model verify broken" in (err.hint or "")


def test_not_a_gguf_file_and_missing_file_fail_to_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(ModelLoadFailedError, match="invalid magic characters: 'hell'"):
        LoadedModel.load("junk", junk, OPTS)
    with pytest.raises(ModelLoadFailedError, match="does not exist"):
        LoadedModel.load("gone", tmp_path / "gone.gguf", OPTS)


def test_close_returns_the_memory() -> None:
    proc = psutil.Process()
    before = proc.memory_info().rss
    model = LoadedModel.load("gemma", gemma_path(), OPTS)
    model.complete(greedy(4))
    loaded = proc.memory_info().rss
    model.close()
    closed = proc.memory_info().rss

    assert loaded - before > 200_000_000
    assert loaded - closed > 200_000_000


def test_pieces_of_a_split_utf8_character_wait_for_the_rest() -> None:
    pieces: list[str] = []
    stream = TextStream([], pieces.append)
    assert not stream.feed(b"caf\xc3")
    assert not stream.feed(b"\xa9!")
    assert stream.finish(stopped=False) == "café!"
    assert pieces == ["caf", "é!"]


def test_tokens_longer_than_32_bytes_are_not_lost(gemma: LoadedModel) -> None:
    # llama-cpp-python's detokenize returns b"" for them; 14443 is a 34-byte Bengali word.
    piece = gemma._piece(14443)
    assert len(piece) == 34 and piece.decode("utf-8").startswith(" ")


def test_completions_from_any_thread_run_on_llama_cpps_one_thread(gemma: LoadedModel) -> None:
    # Each thread that decodes gets an OpenMP team of its own, and more OpenMP threads
    # than CPUs slow every decode down (llama_setup.ComputeThread): callers on several
    # threads, alive at once, must not add teams.
    ran_on: set[int] = set()
    done = threading.Barrier(4)
    leave = threading.Event()

    def caller() -> None:
        gemma.complete(greedy(2), on_text=lambda _: ran_on.add(threading.get_ident()))
        done.wait(30)
        leave.wait(30)

    gemma.complete(greedy(2))  # the compute thread's team exists before counting
    before = len(os.listdir("/proc/self/task"))
    callers = [threading.Thread(target=caller) for _ in range(3)]
    for t in callers:
        t.start()
    done.wait(60)
    during = len(os.listdir("/proc/self/task"))
    leave.set()
    for t in callers:
        t.join(30)
    assert len(ran_on) == 1 and not ran_on & {t.ident for t in callers}
    assert during == before + 3, (before, during)  # the callers themselves, no more


def test_the_compute_thread_returns_results_and_errors_and_may_be_reentered() -> None:
    from vibrant_rpc.inference.llama_setup import COMPUTE

    caller = threading.get_ident()
    assert COMPUTE.run(threading.get_ident) != caller
    # A callback that runs on the compute thread and calls back into it must not wait
    # on itself.
    assert COMPUTE.run(lambda: COMPUTE.run(lambda: 42)) == 42

    def fail() -> None:
        raise ModelLoadFailedError("boom")

    with pytest.raises(ModelLoadFailedError, match="boom"):
        COMPUTE.run(fail)
    assert COMPUTE.run(lambda: "still serving") == "still serving"
