"""kind "ollama": vibrant's engine against a loopback stand-in that answers as Ollama does
(ollama_stand_in.py; no Ollama binary here). The probe tells Ollama from the others and
picks its model; a completion goes to /api/generate raw, with the FIM prompt vibrant
renders (the OpenAI adapter's prompt, byte for byte) and never `suffix`; Ollama's OpenAI
route, which has no raw, shows what the model would see instead; a cancel closes the
stream and the stand-in stops; each error has its kind; the key goes to that host only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.unit.engines.ollama_stand_in import CHAT_ANSWER, QWEN_SYSTEM, Ollama
from tests.unit.engines.stand_in import Handler, StandIn, stand_in
from vibrant_rpc.config import EngineSettings
from vibrant_rpc.engines.engine import Engine
from vibrant_rpc.errors import (
    EngineError,
    EngineKeyRefusedError,
    EngineUnreachableError,
    ModelNotServedError,
)
from vibrant_rpc.inference.model import CompletionRequest
from vibrant_rpc.inference.prompt import ContextChunk

KEY = "team-key-5e8d2c7b1f04"
BASE = "qwen2.5-coder:7b-base"
CONTEXT = [ContextChunk(filename="util.py", text="def add(a, b):\n    return a + b\n")]
REQ = CompletionRequest(
    prompt="def f(a, b):\n    return ",
    suffix="\n\nprint(f(1, 2))\n",
    max_tokens=16,
    temperature=0,
    context=CONTEXT,
    filename="main.py",
)
# The Qwen 2.5 Coder repo-level FIM prompt, as fim.render writes it.
FIM_PROMPT = (
    "<|repo_name|>project\n<|file_sep|>util.py\ndef add(a, b):\n    return a + b\n"
    "<|file_sep|>main.py\n<|fim_prefix|>def f(a, b):\n    return "
    "<|fim_suffix|>\n\nprint(f(1, 2))\n<|fim_middle|>"
)


@pytest.fixture
def ollama() -> Iterator[tuple[StandIn, Ollama]]:
    with stand_in() as server:
        yield server, Ollama(server, [BASE])


def engine(url: str, key_env: str | None = None, **kw: object) -> Engine:
    settings = EngineSettings(url=url, api_key_env=key_env, **kw)  # type: ignore[arg-type]
    return Engine("team", settings)


def sent(server: StandIn, path: str) -> dict[str, object]:
    bodies = [json.loads(body) for _, p, _, body in server.seen if p == path]
    return dict(bodies[-1])


def test_the_probe_recognises_ollama_and_its_one_model(ollama: tuple[StandIn, Ollama]) -> None:
    server, _ = ollama
    e = engine(server.url)
    status = e.probe()
    assert (status.kind, status.model, status.slots, status.healthy) == (
        "ollama", BASE, None, True)  # fmt: skip
    # /props is gin's 404; /api/tags answers before /v1/models (which Ollama has too) is asked.
    assert [p for _, p, _, _ in server.seen] == ["/props", "/api/tags"]
    assert e.health().healthy is True and server.seen[-1][1] == "/api/version"


def test_the_model_when_ollama_has_several() -> None:
    names = [BASE, "qwen2.5-coder:latest", "llama3.2:3b", "nomic-embed-text:latest",
             "codegemma:2b", "starcoder2:3b", "deepseek-coder:1.3b"]  # fmt: skip
    with stand_in() as server:
        Ollama(server, names)
        with pytest.raises(ModelNotServedError) as err:
            engine(server.url).probe()
        assert err.value.message == (
            f"The engine 'team' at {server.url[7:]} (Ollama) has 7 models: "
            "'qwen2.5-coder:7b-base', 'qwen2.5-coder:latest', 'llama3.2:3b', "
            "'nomic-embed-text:latest', 'codegemma:2b' and 2 more."
        )
        assert err.value.hint == 'Name the one to complete with: model = "..." in [engines.team].'
        assert err.value.data()["served"] == names
        # A name without a tag is Ollama's ":latest".
        assert engine(server.url, model="qwen2.5-coder").probe().model == "qwen2.5-coder:latest"
        assert engine(server.url, kind="ollama", model=BASE).probe().model == BASE
        with pytest.raises(ModelNotServedError, match=r"has no model 'qwen3:8b'; it has 'qwen2"):
            engine(server.url, model="qwen3:8b").probe()
    with stand_in() as server:
        Ollama(server, [])
        with pytest.raises(ModelNotServedError, match=r"\(Ollama\) has no model\.\nPull one"):
            engine(server.url).probe()


def test_a_completion_streams_from_api_generate_raw(ollama: tuple[StandIn, Ollama]) -> None:
    server, fake = ollama
    pieces: list[str] = []
    answer = engine(server.url).complete(REQ, on_text=pieces.append)
    body = sent(server, "/api/generate")
    assert body["prompt"] == FIM_PROMPT and "suffix" not in body
    assert (body["model"], body["raw"], body["stream"]) == (BASE, True, True)
    options = body["options"]
    assert isinstance(options, dict)
    assert (options["num_predict"], options["temperature"]) == (16, 0)
    assert {"<|endoftext|>", "<|file_sep|>", "<|fim_prefix|>", "<|im_start|>"} <= set(
        options["stop"]
    )
    # Raw: the model saw the prompt as it was sent, and its pieces arrived one by one.
    assert fake.runs[-1].seen == FIM_PROMPT
    assert pieces == ["a", " +", " b", "\n"]
    result = answer.result
    assert (result.text, result.finish_reason, result.fim, answer.model) == (
        "a + b\n", "stop", True, BASE)  # fmt: skip
    assert result.completion_tokens == 4 and result.prompt_tokens == len(FIM_PROMPT) // 4


def test_why_raw_ollamas_openai_route_wraps_the_prompt_in_a_chat_turn(
    ollama: tuple[StandIn, Ollama],
) -> None:
    """The OpenAI adapter renders the same prompt, but Ollama's /v1/completions has no raw
    (openai/openai.go, FromCompleteRequest): the instruct template makes it a chat turn."""
    server, fake = ollama
    answer = engine(server.url, kind="openai").complete(REQ)
    assert sent(server, "/v1/completions")["prompt"] == FIM_PROMPT  # the same prompt
    seen = fake.runs[-1].seen
    assert seen.startswith(f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert seen.endswith(f"{FIM_PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    # A chat answer, not the middle (the stops cut it at its code fence, at best).
    assert answer.result.text == "".join(CHAT_ANSWER)
    # /api/generate without raw does the same; with raw the prompt is left alone.
    with httpx.stream("POST", f"{server.url}/api/generate",
                      json={"model": BASE, "prompt": FIM_PROMPT}) as response:  # fmt: skip
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "".join(x["response"] for x in lines).startswith("Sure! Here is")
    assert fake.runs[-1].seen.startswith("<|im_start|>system") and not fake.runs[-1].raw


def test_num_predict_and_stop_strings(ollama: tuple[StandIn, Ollama]) -> None:
    server, fake = ollama
    e = engine(server.url)
    short = CompletionRequest(prompt="x = ", suffix="\n", max_tokens=2, temperature=0)
    result = e.complete(short).result
    assert (result.text, result.finish_reason, result.completion_tokens) == ("a +", "length", 2)
    assert fake.runs[-1].ended == "length"
    stopped = CompletionRequest(prompt="x = ", suffix="\n", stop=[" b"], temperature=0)
    result = e.complete(stopped).result
    assert (result.text, result.finish_reason) == ("a +", "stop")
    options = sent(server, "/api/generate")["options"]
    assert isinstance(options, dict) and options["stop"][0] == " b"
    # No FIM known for the model: the prefix, continued (as the OpenAI adapter does).
    fake.models.append("llama3.2:3b")
    other = engine(server.url, model="llama3.2:3b")
    assert other.complete(short).result.fim is False
    assert sent(server, "/api/generate")["prompt"] == "x = "


def test_cancel_closes_the_stream_and_ollama_stops(ollama: tuple[StandIn, Ollama]) -> None:
    server, fake = ollama
    fake.every_s = 0.05
    fake.middle = [f" t{i}" for i in range(40)]  # two seconds of tokens
    e = engine(server.url)
    e.probe()
    cancel = threading.Event()
    pieces: list[str] = []
    cancelled_at: list[float] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancelled_at.append(time.monotonic())
            cancel.set()

    answer = e.complete(REQ, on_text=on_text, cancel=cancel)
    assert answer.result.finish_reason == "cancelled" and answer.result.text == ""
    took = time.monotonic() - cancelled_at[0]
    assert took < 0.1, took  # the read ends at once
    run = fake.runs[-1]
    assert run.done.wait(2) and run.ended == "disconnect"
    # Ollama sees the disconnect before its next token (one every 50 ms).
    assert run.ended_at - cancelled_at[0] < 0.25, run.ended_at - cancelled_at[0]
    assert len(run.sent) <= 5 and server.gone.is_set()


def test_the_connection_outlives_an_answer_ollama_ends_not_one_vibrant_ends(
    ollama: tuple[StandIn, Ollama],
) -> None:
    """An answer the engine ends itself is read to its end, so the next keystroke reuses
    the connection: to a team box over a network a new one costs round trips (and TLS's
    behind a proxy) every keystroke. One vibrant ends early (a cancel, a cut) is closed,
    which is what stops the engine. (llama-server closes every streamed answer's
    connection itself: docs/engines.md.)"""
    server, fake = ollama
    port = server.server_address[1]

    def ours() -> set[int]:
        return {c.laddr.port for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == port
                and c.status == psutil.CONN_ESTABLISHED}  # fmt: skip

    e = engine(server.url)
    e.probe()
    assert e.complete(REQ).result.finish_reason == "stop"
    kept = ours()
    assert len(kept) == 1
    assert e.complete(REQ).result.text == "".join(fake.middle)
    assert ours() == kept and fake.runs[-1].ended == "stop"  # the same connection
    cancel = threading.Event()
    answer = e.complete(REQ, on_text=lambda _: cancel.set(), cancel=cancel)
    assert answer.result.finish_reason == "cancelled"
    assert fake.runs[-1].done.wait(2) and fake.runs[-1].ended == "disconnect"
    assert not ours()


def test_a_kept_connection_the_engine_closed_is_sent_again(
    ollama: tuple[StandIn, Ollama],
) -> None:
    """An engine may close a kept connection just as the next request goes out on it
    (an idle timeout): the request was never read, so it goes again on a new connection
    instead of failing the keystroke with "can't be reached"."""
    server, _ = ollama
    generate = server.routes["/api/generate"]

    def closes_kept(h: Handler) -> None:
        again = getattr(h, "answered", False)  # one Handler per connection
        h.answered = True  # type: ignore[attr-defined]
        if again:
            h.close_connection = True  # closed without a word, as a timeout does
            return
        generate(h)

    server.routes["/api/generate"] = closes_kept
    e = engine(server.url)
    e.probe()
    first = e.complete(REQ).result.text
    assert e.complete(REQ).result.text == first != ""
    asked = [p for _, p, _, _ in server.seen if p == "/api/generate"]
    assert len(asked) == 3  # the second went out twice: on the kept connection, then anew


def test_a_model_ollama_no_longer_has(ollama: tuple[StandIn, Ollama]) -> None:
    """404 'model "x" not found, try pulling it first' (`ollama rm` after the probe)."""
    server, fake = ollama
    e = engine(server.url)
    e.probe()
    fake.models.clear()
    with pytest.raises(ModelNotServedError) as err:
        e.complete(REQ)
    assert err.value.message == (
        f"The engine 'team' at {server.url[7:]} does not serve that model "
        f'(model "{BASE}" not found, try pulling it first).'
    )
    assert err.value.hint == (
        f"Pull it on the engine's machine (`ollama pull {BASE}`), or set model in "
        "[engines.team] to one `ollama list` shows there."
    )
    assert err.value.data()["kind"] == "ModelNotServed"
    # The next completion probes again (Ollama pulls and removes models while it runs).
    fake.models.append("qwen2.5-coder:14b-base")
    assert e.complete(REQ).model == "qwen2.5-coder:14b-base"


def test_errors_before_and_during_the_stream(ollama: tuple[StandIn, Ollama]) -> None:
    server, _ = ollama
    server.routes["/api/generate"] = lambda h: h.send_json(
        500, {"error": "llama runner process has terminated: signal: killed"}
    )
    e = engine(server.url, kind="ollama", model=BASE)
    with pytest.raises(EngineError) as err:
        e.complete(REQ)
    assert type(err.value) is EngineError
    assert err.value.message == (
        f"The engine 'team' at {server.url[7:]} answered /api/generate with 500: "
        "llama runner process has terminated: signal: killed"
    )

    def mid_stream(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for line in (b'{"response": "a", "done": false}\n', b'{"error": "out of memory"}\n'):
            h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    server.routes["/api/generate"] = mid_stream
    with pytest.raises(EngineError, match="stopped its answer to /api/generate: out of memory"):
        e.complete(REQ)

    def cut(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        h.wfile.write(b'{"response": "a", "done": false}\n')
        h.close_connection = True

    server.routes["/api/generate"] = cut
    with pytest.raises(EngineUnreachableError, match="stopped in the middle of an answer"):
        e.complete(REQ)
    # kind "ollama" against a server that is not: said, not guessed.
    with stand_in() as other, pytest.raises(EngineError, match=r"answered /api/tags with 404"):
        engine(other.url, kind="ollama").probe()


def test_the_key_goes_to_the_proxy_in_front_and_nowhere_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ollama checks no key; a team's reverse proxy does. vibrant sends it as a bearer
    token to the engine's URL only: no proxy from the environment, no redirect."""
    monkeypatch.setenv("TEAM_KEY", KEY)
    with stand_in() as env_proxy, stand_in() as server:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(var, env_proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        Ollama(server, [BASE])
        assert engine(server.url, "TEAM_KEY").complete(REQ).result.text == "a + b\n"
        assert env_proxy.seen == []
        assert {h["Authorization"] for _, _, h, _ in server.seen} == {f"Bearer {KEY}"}
        # The proxy refusing the key: EngineKeyRefused, the key in no message.
        server.routes["/api/tags"] = lambda h: h.send_json(401, {"error": "unauthorized"})
        with pytest.raises(EngineKeyRefusedError) as err:
            engine(server.url, "TEAM_KEY").probe()
    assert err.value.message.endswith("refused the key (401: unauthorized).")
    assert KEY not in str(err.value) and KEY not in json.dumps(err.value.data())
