"""Each way an engine can fail, against real HTTP servers on loopback (``stand_in``):
its own error kind, a message naming the engine and its host:port, the key in none of
it and sent nowhere but the engine. The real llama-server's cases (a wrong key, a kill
mid-stream, /infill) are in test_llama_server.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.llama_server import free_port
from tests.unit.engines.stand_in import (
    Handler,
    llama_models,
    llama_props,
    slow_pieces,
    stand_in,
)
from vibrant_rpc.config import EngineSettings
from vibrant_rpc.engines.engine import Engine
from vibrant_rpc.errors import (
    EngineError,
    EngineKeyRefusedError,
    EngineUnreachableError,
    ModelNotServedError,
)
from vibrant_rpc.inference.model import CompletionRequest

KEY = "team-key-0c4f9e1b7a2d"
REQ = CompletionRequest(prompt="def f(", suffix="):\n", max_tokens=8, temperature=0)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEAM_KEY", KEY)
    return "TEAM_KEY"


def engine(url: str, key_env: str | None = None, **kw: object) -> Engine:
    settings = EngineSettings(url=url, api_key_env=key_env, **kw)  # type: ignore[arg-type]
    return Engine("team", settings)


def test_nothing_listening_is_unreachable_naming_host_and_port() -> None:
    port = free_port()
    e = engine(f"http://127.0.0.1:{port}")
    with pytest.raises(EngineUnreachableError) as err:
        e.complete(REQ)
    assert err.value.message == (
        f"The engine 'team' at 127.0.0.1:{port} can't be reached (connection refused)."
    )
    assert err.value.data()["kind"] == "EngineUnreachable"
    status = e.status()
    assert status.healthy is False and status.error == err.value.message


def test_a_refused_key_says_where_the_key_comes_from(key_env: str) -> None:
    with stand_in() as server:

        def refuse(h: Handler) -> None:
            h.send_json(401, {"error": {"message": "Invalid API Key", "code": 401}})

        server.routes["/props"] = refuse
        with pytest.raises(EngineKeyRefusedError) as err:
            engine(server.url, key_env).complete(REQ)
    assert err.value.message.endswith("refused the key (401: Invalid API Key).")
    assert err.value.hint == "Check the key in TEAM_KEY (the [engines.team] setting names it)."
    assert KEY not in str(err.value) and KEY not in json.dumps(err.value.data())
    # The key went to the engine, as a bearer token.
    assert server.seen[0][2]["Authorization"] == f"Bearer {KEY}"


def test_an_engine_that_echoes_the_key_has_it_hidden(key_env: str) -> None:
    with stand_in() as server:
        server.routes["/props"] = lambda h: h.send_json(500, {"error": f"bad token {KEY}"})
        with pytest.raises(EngineError) as err:
            engine(server.url, key_env).complete(REQ)
    assert "bad token ***" in err.value.message and KEY not in str(err.value)


def test_a_model_the_engine_does_not_serve() -> None:
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        e = engine(server.url, model="qwen2.5-coder-14b")
        with pytest.raises(ModelNotServedError) as err:
            e.complete(REQ)
    assert "does not serve 'qwen2.5-coder-14b'; it serves 'tiny.gguf'" in err.value.message
    assert err.value.data()["served"] == ["tiny.gguf"]


def test_vllm_refusing_a_model_at_completion_time() -> None:
    """vLLM answers an unknown model with 404 and its own words (kind openai)."""
    with stand_in() as server:
        server.routes["/v1/models"] = lambda h: h.send_json(
            200, {"data": [{"id": "Qwen/Qwen2.5-Coder-7B"}]}
        )
        server.routes["/v1/completions"] = lambda h: h.send_json(
            404, {"message": "The model `Qwen/Qwen2.5-Coder-7B` does not exist.", "code": 404}
        )
        with pytest.raises(ModelNotServedError, match="does not exist"):
            engine(server.url, kind="openai").complete(REQ)
        # What went out: the FIM prompt rendered for Qwen, never `suffix`, and its stops.
        body = json.loads(server.seen[-1][3])
    assert body["prompt"] == "<|fim_prefix|>def f(<|fim_suffix|>):\n<|fim_middle|>"
    assert "suffix" not in body and "<|file_sep|>" in body["stop"]
    assert body["model"] == "Qwen/Qwen2.5-Coder-7B" and body["stream"] is True


def test_an_engine_error_carries_its_message() -> None:
    with stand_in() as server:
        server.routes["/v1/models"] = lambda h: h.send_json(200, {"data": [{"id": "m"}]})
        server.routes["/v1/completions"] = lambda h: h.send_json(
            400, {"object": "error", "message": "suffix is not currently supported"}
        )
        with pytest.raises(EngineError) as err:
            engine(server.url, kind="openai").complete(REQ)
    assert type(err.value) is EngineError
    assert err.value.message == (
        f"The engine 'team' at {server.url[7:]} answered /v1/completions with 400: "
        "suffix is not currently supported"
    )


def test_a_redirect_is_not_followed_and_the_key_stays_home(key_env: str) -> None:
    with stand_in() as other, stand_in() as server:
        server.routes["/props"] = lambda h: h.send_json(
            307, {}, headers={"Location": f"{other.url}/props"}
        )
        with pytest.raises(EngineError, match="a redirect, not followed"):
            engine(server.url, key_env).complete(REQ)
    assert other.seen == []


def test_a_slow_first_token_and_a_stall_between_tokens() -> None:
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        server.routes["/infill"] = slow_pieces(["a"], every_s=1.0)
        e = engine(server.url, first_token_timeout_s=0.3, token_timeout_s=0.2)
        started = time.perf_counter()
        with pytest.raises(EngineUnreachableError, match=r"gave no first token within 0.3 s"):
            e.complete(REQ)
        assert time.perf_counter() - started < 0.9
        # A first token in time, then a stall: the between-tokens deadline applies.
        server.routes["/infill"] = slow_pieces(["a", "b"], every_s=0.25)
        e = engine(server.url, first_token_timeout_s=0.3, token_timeout_s=0.2)
        with pytest.raises(EngineUnreachableError, match=r"gave no next token within 0.2 s"):
            e.complete(REQ)


def test_a_slow_cold_start_is_waited_for() -> None:
    """The first token may take long (a cold load): only its own deadline applies."""
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        server.routes["/infill"] = slow_pieces(["a", "b", "c"], every_s=0.1)
        e = engine(server.url, first_token_timeout_s=5, token_timeout_s=0.5)
        answer = e.complete(REQ)
    assert (answer.result.text, answer.result.finish_reason, answer.model) == (
        "abc", "length", "tiny.gguf")  # fmt: skip


def test_cancel_while_waiting_for_the_first_token_closes_the_connection() -> None:
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        server.routes["/infill"] = slow_pieces(["a", "b"], every_s=0.5)
        e = engine(server.url)
        e.probe()
        cancel = threading.Event()
        threading.Timer(0.15, cancel.set).start()
        started = time.perf_counter()
        answer = e.complete(REQ, cancel=cancel)
        took = time.perf_counter() - started
        assert answer.result.finish_reason == "cancelled" and answer.result.text == ""
        assert took < 0.15 + 0.1, took
        # The engine's next write finds the connection closed.
        assert server.gone.wait(2)


def test_a_stream_cut_in_the_middle() -> None:
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        server.routes["/infill"] = slow_pieces(["a", "b"], every_s=0.01, final=False)
        pieces: list[str] = []
        with pytest.raises(EngineUnreachableError, match="stopped in the middle of an answer"):
            engine(server.url).complete(REQ, on_text=pieces.append)
    assert pieces == ["a", "b"]


def test_the_kind_is_probed() -> None:
    with stand_in() as server:
        server.routes["/v1/models"] = lambda h: h.send_json(
            200, {"data": [{"id": "Qwen/Qwen2.5-Coder-7B"}, {"id": "other"}]}
        )
        status = engine(server.url).probe()
    # No /props (404): an OpenAI-compatible server, serving its first model.
    assert (status.kind, status.model, status.healthy) == ("openai", "Qwen/Qwen2.5-Coder-7B", True)
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        status = engine(server.url).probe()
    assert (status.kind, status.model, status.slots) == ("llama-server", "tiny.gguf", 1)
    with stand_in() as server:
        server.routes["/v1/models"] = lambda h: h.send_json(200, {"hello": "world"})
        with pytest.raises(EngineError, match="no model list"):
            engine(server.url).probe()


def test_proxies_in_the_environment_never_see_the_key(
    key_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine is reached directly: HTTP(S)_PROXY and ALL_PROXY are not read."""
    with stand_in() as proxy, stand_in() as server:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(var, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        server.routes["/infill"] = slow_pieces(["a"], every_s=0)
        assert engine(server.url, key_env).complete(REQ).result.text == "a"
    assert proxy.seen == []
    assert {h["Authorization"] for _, _, h, _ in server.seen} == {f"Bearer {KEY}"}
