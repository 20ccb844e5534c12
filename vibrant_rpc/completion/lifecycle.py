"""The loaded model's life: lazy load, fallback, one completion at a time, idle unload.

Plain Python, blocking, thread-safe; it knows nothing of JSON-RPC. The server runs
its blocking calls on worker threads and turns ``on_change`` into notifications. What it
needs to know of sizes (a model's fit, the selection, the smaller models to fall back
to) is handed in as a ``fit.Sizing``, built by the facade.

One lock (``_lock``) serialises everything that touches the model: loading,
unloading and completions. ``snapshot()`` never takes it, so status answers at
once while a load or a completion runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec

from ..cache.locks import InUseMark
from ..cache.manifest import utcnow
from ..cache.store import Cache
from ..config import Settings
from ..errors import Cancelled, ModelLoadFailedError, NotCachedError, VibrantError
from ..fit.plan import Fit, LoadRequest, load_request
from ..fit.sizing import Sizing
from ..inference.model import CompletionRequest, CompletionResult, LoadedModel, LoadOptions
from ..states import ModelState
from ..units import format_bytes
from .load_plan import options_for

log = logging.getLogger(__name__)


class ModelHandle(Protocol):
    """What the lifecycle needs of a loaded model (``inference.LoadedModel``)."""

    model_id: str
    supports_fim: bool

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> CompletionResult: ...

    def close(self) -> None: ...


Loader = Callable[[str, Path, LoadOptions], ModelHandle]


class Timer(Protocol):
    def cancel(self) -> None: ...


TimerFactory = Callable[[float, Callable[[], None]], Timer]


def _thread_timer(delay: float, fn: Callable[[], None]) -> Timer:
    t = threading.Timer(delay, fn)
    t.daemon = True  # an armed idle timer must never keep the process alive
    t.start()
    return t


class StateChange(msgspec.Struct, frozen=True):
    model_id: str | None
    state: ModelState
    reason: str | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    state: ModelState
    model_id: str | None
    loaded_at: datetime | None
    last_used: datetime | None
    busy: bool
    error: str | None
    plan: Fit | None = None  # the loaded model's memory, context and GPU layers


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    loaded_at: datetime
    load_ms: float  # spent loading for this call; 0 when it was loaded already
    supports_fim: bool
    reason: str | None = None  # set when another model than the one asked for was loaded


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    result: CompletionResult
    model_id: str
    load_ms: float


class Lifecycle:
    def __init__(
        self,
        sizing: Sizing,
        cache: Cache,
        settings: Settings,
        *,
        loader: Loader | None = None,
        on_change: Callable[[StateChange], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: TimerFactory = _thread_timer,
    ) -> None:
        self.sizing = sizing
        self.cache = cache
        self._loader: Loader = loader or LoadedModel.load
        self._on_change = on_change
        self._clock = clock
        self._timer_factory = timer
        self.configured_model = settings.model
        self.default_request = load_request(settings)
        self.keep_alive_s = settings.keep_alive_s

        self._lock = threading.Lock()  # load, unload, complete: one at a time
        self._model: ModelHandle | None = None
        self._request: LoadRequest | None = None  # what the loaded model was asked with
        self._plan: Fit | None = None  # and what that came to for it
        self._mark: InUseMark | None = None
        self._timer: Timer | None = None
        self._last_activity = 0.0  # clock() of the last load or completion

        # What snapshot() reads; written under _state_lock only, never waited on for long.
        self._state_lock = threading.Lock()
        self._state: ModelState = "unloaded"
        self._state_model: str | None = None
        self._loaded_at: datetime | None = None
        self._last_used: datetime | None = None
        self._busy = False
        self._error: str | None = None
        # The state listener of the call holding _lock (e.g. one request's $/progress).
        self._call_listener: Callable[[StateChange], None] | None = None

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._state_lock:
            return Snapshot(
                state=self._state,
                model_id=self._state_model,
                loaded_at=self._loaded_at,
                last_used=self._last_used,
                busy=self._busy,
                error=self._error,
                plan=self._plan if self._model is not None else None,
            )

    @property
    def loaded_model_id(self) -> str | None:
        model = self._model
        return model.model_id if model is not None else None

    def _set_state(
        self, state: ModelState, model_id: str | None, reason: str | None = None
    ) -> None:
        with self._state_lock:
            self._state, self._state_model = state, model_id
            if state == "ready":
                self._loaded_at = self._last_used = utcnow()
                self._error = None
            elif state == "failed":
                self._error = reason
                self._loaded_at = None
            elif state != "loading":
                self._loaded_at = None
        change = StateChange(model_id, state, reason)
        for listener in (self._on_change, self._call_listener):
            if listener is None:
                continue
            try:
                listener(change)
            except Exception:  # a listener's bug must not break the model's lifecycle
                log.exception("state listener failed")

    # -- which model -------------------------------------------------------------------

    def choose(self, model_id: str | None) -> str:
        """The model a request gets: its own, else the loaded one, else the configured one,
        else the last one used, else the selection's choice among the cached ones."""
        cache, registry = self.cache, self.cache.registry
        if model_id:
            chosen = self.sizing.resolve_id(model_id)
            cache.require(chosen)  # NotCached, naming the model and its download size
            return chosen
        if (loaded := self.loaded_model_id) is not None:
            return loaded
        configured = self.configured_model
        entries = {e.id: e for e in cache.entries() if e.id in registry}
        if configured and configured in entries:
            return configured
        used = [e for e in entries.values() if e.last_used is not None]
        if used:
            return max(used, key=lambda e: e.last_used or e.downloaded_at).id
        if not entries:
            best = self.sizing.select(None)
            model = registry.get(best.model_id)
            raise NotCachedError(
                f"No model is downloaded; {best.model_id} suits this machine "
                f"({format_bytes(model.download_bytes)} to fetch).",
                hint=f"Download it with `vibrant model download {best.model_id}`.",
                modelId=best.model_id,
                downloadBytes=model.download_bytes,
            )
        cached = [registry.get(i) for i in entries]
        return self.sizing.select(cached).model_id

    # -- locking -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(
        self,
        cancel: threading.Event | None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> Iterator[None]:
        """Take the model lock. A queued call gets it as soon as it is let go (a timed
        acquire wakes on release); the timeout is only how soon a cancel is seen."""
        while not self._lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        self._call_listener = on_change
        try:
            yield
        finally:
            self._call_listener = None
            self._lock.release()

    # -- loading -----------------------------------------------------------------------

    def load(
        self,
        model_id: str | None = None,
        request: LoadRequest | None = None,
        cancel: threading.Event | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> Loaded:
        with self._locked(cancel, on_change):
            return self._ensure_loaded(model_id, request)

    def _ensure_loaded(self, model_id: str | None, request: LoadRequest | None) -> Loaded:
        target = self.choose(model_id)
        wanted = request or self._request or self.default_request
        model = self._model
        if model is not None and model.model_id == target and wanted == self._request:
            return Loaded(
                model_id=target,
                loaded_at=self._loaded_at or utcnow(),
                load_ms=0.0,
                supports_fim=model.supports_fim,
            )
        if model is not None:
            self._unload_locked(f"switching to {target}")
        try:
            return self._load_one(target, wanted, None)
        except ModelLoadFailedError as err:
            first_error = err
        # Only now look for smaller models: the common path reads the manifest less.
        candidates = [target, *self.sizing.smaller_cached(target)]
        for i, candidate in enumerate(candidates):
            if i > 0:
                reason = f"{target} failed to load ({first_error.message}); loading {candidate}"
                try:
                    return self._load_one(candidate, wanted, reason)
                except ModelLoadFailedError as err:
                    failure = err
            else:
                failure = first_error
            why = f"{candidate} failed to load: {failure.message}"
            if i + 1 < len(candidates):
                why += f"; trying the next smaller cached model, {candidates[i + 1]}"
            self._set_state("failed", candidate, why)
        details = {**first_error.details, "modelId": target, "tried": candidates}
        hint = first_error.hint
        if len(candidates) > 1:
            hint = f"No smaller cached model loaded either (tried {', '.join(candidates)})."
        raise ModelLoadFailedError(first_error.message, hint=hint, **details)

    def _load_one(self, model_id: str, request: LoadRequest, reason: str | None) -> Loaded:
        # The estimate first: a model that can't fit is refused before its files are hashed.
        options, plan = options_for(self.sizing.fit, model_id, request)
        # NotCached if it isn't there; re-hashes only files whose size or mtime changed
        # since they were recorded.
        entry = self.cache.verify(model_id, force=False)
        path = self.cache.file_paths(entry)[0]  # a split model loads from its first shard
        self._set_state("loading", model_id, reason)
        mark = InUseMark(self.cache.paths.locks, model_id)  # prune in any process skips it
        t0 = time.perf_counter()
        try:
            handle = self._loader(model_id, path, options)
        except ModelLoadFailedError:
            mark.release()
            raise
        except Exception as err:  # llama.cpp's failures come in several shapes
            mark.release()
            raise ModelLoadFailedError(str(err) or type(err).__name__, modelId=model_id) from err
        load_ms = (time.perf_counter() - t0) * 1000
        self._model, self._request, self._plan, self._mark = handle, request, plan, mark
        try:
            self.cache.touch(model_id)
        except (VibrantError, OSError) as err:  # bookkeeping (a full disk) never fails a load
            log.warning("could not record the use of %s: %s", model_id, err)
        self._last_activity = self._clock()
        self._set_state("ready", model_id, reason)
        self._arm_idle_timer(self.keep_alive_s)
        return Loaded(
            model_id=model_id,
            loaded_at=self._loaded_at or utcnow(),
            load_ms=load_ms,
            supports_fim=handle.supports_fim,
            reason=reason,
        )

    # -- completing --------------------------------------------------------------------

    def complete(
        self,
        req: CompletionRequest,
        model_id: str | None = None,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> Completion:
        """Load lazily, then complete; completions queue on the lock, one at a time."""
        with self._locked(cancel, on_change):
            loaded = self._ensure_loaded(model_id, None)
            model = self._model
            assert model is not None
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            with self._state_lock:
                self._busy = True
            try:
                result = model.complete(req, on_text=on_text, cancel=cancel)
            finally:
                self._last_activity = self._clock()
                with self._state_lock:
                    self._busy = False
                    self._last_used = utcnow()
            return Completion(result=result, model_id=loaded.model_id, load_ms=loaded.load_ms)

    # -- unloading ---------------------------------------------------------------------

    def unload(self, reason: str = "unloaded on request") -> str | None:
        """Unload the model (waiting for a running completion); its id, or None."""
        with self._locked(None):
            return self._unload_locked(reason)

    def _unload_locked(self, reason: str) -> str | None:
        model, mark = self._model, self._mark
        self._model, self._request, self._plan, self._mark = None, None, None, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if model is None:
            return None
        try:
            model.close()  # frees llama.cpp's memory; ``del`` alone does not reliably
        finally:
            if mark is not None:
                mark.release()
        self._set_state("unloaded", model.model_id, reason)
        return model.model_id

    def _arm_idle_timer(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.keep_alive_s > 0:
            self._timer = self._timer_factory(delay, self.check_idle)

    def check_idle(self) -> None:
        """The idle timer's callback: unload after keep-alive without use, else re-arm.

        One timer per keep-alive period, not one per completion: it re-arms itself for
        the time left since the last use.
        """
        if not self._lock.acquire(blocking=False):
            # Busy (a completion or load runs): look again a keep-alive later.
            self._timer = self._timer_factory(self.keep_alive_s, self.check_idle)
            return
        try:
            if self._model is None or self.keep_alive_s <= 0:
                return
            idle = self._clock() - self._last_activity
            if idle >= self.keep_alive_s:
                self._unload_locked(f"idle for {idle:.0f} s (keep-alive {self.keep_alive_s:g} s)")
            else:
                self._timer = self._timer_factory(self.keep_alive_s - idle, self.check_idle)
        finally:
            self._lock.release()

    def close(self) -> None:
        """At exit: unload without waiting long for a running completion."""
        if self._lock.acquire(timeout=5):
            try:
                self._unload_locked("server exiting")
            finally:
                self._lock.release()
