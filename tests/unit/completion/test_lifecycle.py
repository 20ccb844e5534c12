"""The model lifecycle with a fake loader: which model, fallback, locking, idle unload.

The real llama.cpp path is exercised by the server tests; here the loader is a
stand-in so that every branch runs in milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from tests.support.helpers import put_cached, tiny_model, write_registry
from vibrant_rpc.app import Vibrant
from vibrant_rpc.cache.locks import is_in_use
from vibrant_rpc.cache.manifest import utcnow
from vibrant_rpc.completion.lifecycle import Lifecycle, StateChange
from vibrant_rpc.config import Settings
from vibrant_rpc.errors import Cancelled, ModelLoadFailedError, NotCachedError
from vibrant_rpc.fit.headers import header_for
from vibrant_rpc.fit.plan import Fit, LoadRequest, fit_model
from vibrant_rpc.fit.ram import MemoryInfo
from vibrant_rpc.fit.sizing import Sizing
from vibrant_rpc.inference.model import CompletionRequest, CompletionResult, LoadOptions
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry


class FakeModel:
    def __init__(self, model_id: str, events: list[str], gate: threading.Event | None) -> None:
        self.model_id = model_id
        self.supports_fim = False
        self.events = events
        self.gate = gate
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> CompletionResult:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                while not self.gate.wait(0.01):
                    if cancel is not None and cancel.is_set():
                        return CompletionResult(
                            text="", finish_reason="cancelled", prompt_tokens=1,
                            completion_tokens=0, fim=False, total_ms=1.0,
                        )  # fmt: skip
            if on_text:
                on_text("hello")
            self.events.append(f"complete {self.model_id}")
            return CompletionResult(
                text="hello", finish_reason="length", prompt_tokens=3,
                completion_tokens=1, fim=False, total_ms=2.0,
            )  # fmt: skip
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        self.events.append(f"close {self.model_id}")


class FakeLoader:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail: dict[str, str] = {}
        self.gate: threading.Event | None = None
        self.models: list[FakeModel] = []
        self.options: list[LoadOptions] = []

    def __call__(self, model_id: str, path: Path, options: LoadOptions) -> FakeModel:
        assert path.is_file()
        self.events.append(f"load {model_id}")
        self.options.append(options)
        if model_id in self.fail:
            raise ModelLoadFailedError(self.fail[model_id], modelId=model_id)
        model = FakeModel(model_id, self.events, self.gate)
        self.models.append(model)
        return model


class FakeTimers:
    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, fn: Callable[[], None]) -> FakeTimers:
        self.armed.append((delay, fn))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        _, fn = self.armed.pop()
        fn()


@pytest.fixture
def app(paths: Paths) -> Vibrant:
    write_registry(
        paths,
        [tiny_model("small", 100), tiny_model("medium", 200), tiny_model("big", 300)],
    )
    return Vibrant(paths, Settings(keep_alive_s=60))


def make(
    app: Vibrant, loader: FakeLoader, **kw: object
) -> tuple[Lifecycle, list[StateChange], FakeTimers, list[float]]:
    changes: list[StateChange] = []
    timers = FakeTimers()
    now = [1000.0]
    lc = Lifecycle(
        app.sizing(),
        app.cache,
        app.settings,
        loader=loader,
        on_change=changes.append,
        clock=lambda: now[0],
        timer=timers,
        **kw,  # type: ignore[arg-type]
    )
    return lc, changes, timers, now


REQ = CompletionRequest(prompt="def f():", max_tokens=4)


def test_nothing_loads_until_the_first_completion(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    loader = FakeLoader()
    lc, changes, _, _ = make(app, loader)
    assert lc.snapshot().state == "unloaded" and loader.events == []
    pieces: list[str] = []
    done = lc.complete(REQ, on_text=pieces.append)
    assert done.model_id == "small" and done.result.text == "hello" and pieces == ["hello"]
    assert done.load_ms >= 0
    assert loader.events == ["load small", "complete small"]
    assert [c.state for c in changes] == ["loading", "ready"]
    snap = lc.snapshot()
    assert snap.state == "ready" and snap.model_id == "small" and snap.loaded_at is not None
    entry = app.cache.get("small")
    assert entry is not None and entry.use_count == 1 and entry.last_used is not None
    # The second completion reuses the loaded model.
    assert lc.complete(REQ).load_ms == 0.0
    assert loader.events.count("load small") == 1


def test_options_come_from_the_settings(paths: Paths) -> None:
    write_registry(paths, [tiny_model("small", 100)])
    app = Vibrant(paths, Settings(context_size=1024, threads=3, batch_size=64, mmap=False))
    put_cached(app.cache, "small")
    loader = FakeLoader()
    lc, _, _, _ = make(app, loader)
    lc.load()
    assert loader.options == [
        LoadOptions(context_size=1024, threads=3, batch_size=64, mmap=False, mlock=False)
    ]
    # Other options for the same model reload it.
    lc.load("small", app.load_request(context_size=512))
    assert loader.events == ["load small", "close small", "load small"]


def test_which_model_request_then_last_used_then_selection(app: Vibrant) -> None:
    put_cached(app.cache, "small", last_used=utcnow() - timedelta(days=1))
    put_cached(app.cache, "medium")
    put_cached(app.cache, "big", last_used=utcnow() - timedelta(days=2))
    lc, _, _, _ = make(app, FakeLoader())
    assert lc.choose("big") == "big"
    assert lc.choose(None) == "small"  # the most recently used
    lc.load("medium")
    assert lc.choose(None) == "medium"  # the loaded one


def test_selection_among_cached_when_none_was_used(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    put_cached(app.cache, "medium")
    lc, _, _, _ = make(app, FakeLoader())
    # Never used: the selection's choice among the cached ones (the largest that fits).
    assert lc.choose(None) == "medium"


def test_not_cached_names_the_model_and_its_size(app: Vibrant) -> None:
    loader = FakeLoader()
    lc, _, _, _ = make(app, loader)
    with pytest.raises(NotCachedError) as info:
        lc.complete(REQ)  # nothing downloaded at all: the selection's choice is named
    assert info.value.details["modelId"] == app.select().model_id
    assert info.value.details["downloadBytes"] > 0
    put_cached(app.cache, "small")
    with pytest.raises(NotCachedError) as info:
        lc.load("medium")
    assert info.value.details["modelId"] == "medium"
    assert loader.events == []  # nothing was loaded, nothing downloaded


def test_switching_unloads_the_old_model_first(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    put_cached(app.cache, "medium")
    loader = FakeLoader()
    lc, changes, _, _ = make(app, loader)
    lc.load("small")
    assert is_in_use(app.paths.locks, "small")
    lc.load("medium")
    assert loader.events == ["load small", "close small", "load medium"]
    assert not is_in_use(app.paths.locks, "small")
    assert is_in_use(app.paths.locks, "medium")
    assert ("unloaded", "small") in [(c.state, c.model_id) for c in changes]
    assert lc.unload() == "medium"
    assert not is_in_use(app.paths.locks, "medium")
    assert lc.unload() is None
    assert lc.snapshot().state == "unloaded"


def test_a_failed_load_falls_back_to_the_next_smaller(app: Vibrant) -> None:
    for model_id in ("small", "medium", "big"):
        put_cached(app.cache, model_id)
    loader = FakeLoader()
    loader.fail["big"] = "tensor 'blk.0' has wrong shape"
    lc, changes, _, _ = make(app, loader)
    loaded = lc.load("big")
    assert loaded.model_id == "medium"
    assert loaded.reason is not None and "big failed to load" in loaded.reason
    assert loader.events == ["load big", "load medium"]
    failed = [c for c in changes if c.state == "failed"]
    assert failed[0].model_id == "big" and "trying the next smaller" in (failed[0].reason or "")
    assert changes[-1].state == "ready" and changes[-1].model_id == "medium"
    assert not is_in_use(app.paths.locks, "big")


def test_fallback_follows_the_memory_estimate_not_the_registry_ram(paths: Paths) -> None:
    # A user's entries whose ram_required_mb says the opposite of their architectures:
    # selection orders by the estimate, and the fallback after a failed load must agree.
    embedded = Registry.embedded()
    arch_7b = msgspec.to_builtins(embedded.get("qwen2.5-coder-7b-q5").architecture)
    arch_3b = msgspec.to_builtins(embedded.get("qwen2.5-coder-3b-q4").architecture)
    write_registry(
        paths,
        [
            tiny_model("says-small", 100, architecture=arch_7b, file_size_mb=5400),
            tiny_model("says-big", 900, architecture=arch_3b, file_size_mb=2100),
        ],
    )
    app = Vibrant(paths, Settings(keep_alive_s=60))
    put_cached(app.cache, "says-small")
    put_cached(app.cache, "says-big")
    chosen = app.select(
        ram_bytes=64 * 2**30, models=[app.registry.get("says-big"), app.registry.get("says-small")]
    )
    assert chosen.model_id == "says-small", chosen.reason  # the 7B: the larger estimate
    assert app.smaller_cached("says-small") == ["says-big"]
    assert app.smaller_cached("says-big") == []
    loader = FakeLoader()
    loader.fail["says-small"] = "tensor 'blk.0' has wrong shape"
    lc, _, _, _ = make(app, loader)
    assert lc.load("says-small").model_id == "says-big"
    assert loader.events == ["load says-small", "load says-big"]


def test_the_lifecycle_sizes_models_with_what_it_is_handed(app: Vibrant) -> None:
    # No facade: a Sizing whose fit says "medium" (a 7B's numbers in 4 GiB) doesn't fit
    # and whose fallback names "small"; the lifecycle loads small, and llama.cpp is never
    # asked for medium.
    put_cached(app.cache, "small")
    put_cached(app.cache, "medium")
    header = header_for(Registry.embedded().get("qwen2.5-coder-7b-q5"))
    assert header is not None
    asked: list[str] = []

    def fit(model_id: str, request: LoadRequest) -> Fit:
        asked.append(model_id)
        gib = 64 if model_id == "small" else 4
        return fit_model(model_id, header, request, MemoryInfo(gib * 2**30, gib * 2**30), [])

    sizing = Sizing(
        fit=fit,
        select=lambda models: app.select(models=models),
        resolve_id=lambda model_id: model_id,
        smaller_cached=lambda model_id: ["small"] if model_id == "medium" else [],
    )
    loader = FakeLoader()
    lc = Lifecycle(sizing, app.cache, app.settings, loader=loader)
    loaded = lc.load("medium")
    assert loaded.model_id == "small"
    assert loaded.reason is not None and "medium needs more memory" in loaded.reason
    assert asked == ["medium", "small"] and loader.events == ["load small"]
    assert loader.options[0].context_size == 4096  # the handed fit's plan


def test_with_no_model_left_the_error_carries_llama_cpps_message(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    put_cached(app.cache, "medium")
    loader = FakeLoader()
    loader.fail = {"medium": "bad magic", "small": "also bad"}
    lc, _, _, _ = make(app, loader)
    with pytest.raises(ModelLoadFailedError) as info:
        lc.load("medium")
    assert info.value.message == "bad magic"
    assert info.value.details["tried"] == ["medium", "small"]
    snap = lc.snapshot()
    assert snap.state == "failed" and snap.error and "also bad" in snap.error
    assert not is_in_use(app.paths.locks, "medium") and not is_in_use(app.paths.locks, "small")


def test_idle_unload_after_keep_alive(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    loader = FakeLoader()
    lc, changes, timers, now = make(app, loader)
    lc.complete(REQ)
    assert timers.armed[-1][0] == 60
    now[0] += 40
    lc.complete(REQ)  # used again: the timer that fires at 60 s re-arms for the rest
    now[0] += 20
    timers.fire()
    assert lc.snapshot().state == "ready"
    assert timers.armed[-1][0] == pytest.approx(40)
    now[0] += 40
    timers.fire()
    assert lc.snapshot().state == "unloaded"
    assert loader.events[-1] == "close small"
    assert "idle" in (changes[-1].reason or "")
    assert not is_in_use(app.paths.locks, "small")


def test_keep_alive_zero_never_unloads(paths: Paths) -> None:
    write_registry(paths, [tiny_model("small", 100)])
    app = Vibrant(paths, Settings(keep_alive_s=0))
    put_cached(app.cache, "small")
    lc, _, timers, _ = make(app, FakeLoader())
    lc.complete(REQ)
    assert timers.armed == []


def test_one_completion_at_a_time_and_a_queued_one_can_be_cancelled(app: Vibrant) -> None:
    put_cached(app.cache, "small")
    loader = FakeLoader()
    lc, _, _, _ = make(app, loader)
    lc.load()
    loader.gate = gate = threading.Event()
    loader.models[0].gate = gate
    results: list[object] = []

    def run(cancel: threading.Event | None = None) -> None:
        try:
            results.append(lc.complete(REQ, cancel=cancel))
        except Cancelled as err:
            results.append(err)

    first = threading.Thread(target=run)
    first.start()
    deadline = time.monotonic() + 5
    while not lc.snapshot().busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lc.snapshot().busy
    second = threading.Thread(target=run)
    second.start()
    cancel = threading.Event()
    third = threading.Thread(target=run, args=(cancel,))
    third.start()
    cancel.set()  # the queued third gives up without running
    third.join(5)
    assert isinstance(results[0], Cancelled)
    gate.set()
    first.join(5)
    second.join(5)
    assert loader.models[0].max_running == 1
    assert [type(r).__name__ for r in results] == ["Cancelled", "Completion", "Completion"]
    assert not lc.snapshot().busy
