"""The server's operations as plain Python: protocol Structs in, protocol Structs out.

Nothing here knows of pygls or asyncio; the server decodes params, runs these
(blocking ones on its own worker threads) and encodes what they return. The facade
(``Vibrant``), the lifecycle and the download jobs do the work. The policy of a
long-running server lives here too: what runs at start-up (stale partials, the
llama.cpp warm-up, the weekly update check and ``autoUpdate``) and the one teardown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from . import protocol as p
from .app import ModelStatus, Vibrant
from .completion.completer import Answer, Completer
from .completion.lifecycle import Completion, Lifecycle, StateChange
from .completion.pipeline import Pipeline
from .config import LOCAL_ENGINE, Settings
from .download.jobs import DownloadJobs, Ticket
from .download.progress import Progress
from .inference.model import CompletionRequest
from .inference.prompt import ContextChunk
from .offline import is_offline
from .registry import ModelInfo

if TYPE_CHECKING:
    from .download.downloader import DownloadResult
    from .download.updates import UpdateInfo
    from .engines.routing import Answered

log = logging.getLogger(__name__)

UPDATE_POLL_S = 6 * 3600  # how often a long-running server asks whether a week has passed


class Events(Protocol):
    """What the service tells the editor unasked (the server sends them as notifications).
    Called from any thread."""

    def model_state_changed(self, change: p.ModelStateChanged) -> None: ...

    def download_progress(self, progress: p.DownloadProgress) -> None: ...

    def update_available(self, update: p.UpdateAvailable) -> None: ...


def model_entry(status: ModelStatus, loaded: str | None) -> p.ModelEntry:
    """A registry entry and its cache state as the wire's entry, field by field by name
    (``wire``); only what the names don't say is written here."""
    model = status.model
    fields = {
        **msgspec.structs.asdict(model),
        "download_bytes": model.download_bytes,  # a property, not a field
        **msgspec.structs.asdict(status),
        # Both have a revision: the wire's is the registry's pin, the cache's is renamed.
        "revision": model.revision,
        "cached_revision": status.revision,
        "loaded": model.id == loaded,
    }
    return wire(SimpleNamespace(**fields), p.ModelEntry)


W = TypeVar("W", bound=msgspec.Struct)


def wire(value: object, wire_type: type[W]) -> W:
    """A library value as its wire type: same field names (the wire adds camelCase and
    the schema); fields the wire type lacks are left out, and a missing one is an error."""
    return msgspec.convert(value, wire_type, from_attributes=True)


def download_progress(progress: Progress) -> p.DownloadProgress:
    return wire(progress, p.DownloadProgress)


def download_result(result: DownloadResult) -> p.DownloadModelResult:
    return wire(result, p.DownloadModelResult)


def model_state(change: StateChange) -> p.ModelStateChanged:
    return p.ModelStateChanged(
        model_id=change.model_id,
        state=change.state,
        reason=change.reason,
    )


def update_entry(u: UpdateInfo) -> p.UpdateEntry:
    return wire(u, p.UpdateEntry)


def stop_reason(pipeline: Pipeline | None, finish: p.FinishReason) -> p.StopReason:
    """Why the text ends, as the wire says: the pipeline's rule, else the model's reason."""
    if pipeline is not None:
        return pipeline.stop_reason(finish)
    return "end" if finish == "stop" else finish


def complete_result(answered: Answer[Any], stop: p.StopReason) -> p.CompleteResult:
    """A completer's answer as the wire's result (the usage goes by name, ``wire``)."""
    done, r = answered.completion, answered.completion.result
    typed = answered.typed_through
    # A typed-through answer takes microseconds: its figure keeps them.
    total_ms = round(r.total_ms, 3) if typed else round(done.load_ms + r.total_ms, 1)
    return p.CompleteResult(
        text=r.text,
        model_id=done.model_id,
        finish_reason=r.finish_reason,
        stop_reason=stop,
        usage=wire(r, p.Usage),
        timings=p.Timings(load_ms=round(done.load_ms, 1), total_ms=total_ms),
        fim=r.fim,
        cached=typed,
    )


class Note(msgspec.Struct, frozen=True):
    """What the wire says of a completion besides its text (kept with a suggestion)."""

    stop_reason: p.StopReason
    engine: str  # which engine wrote it
    fallback_reason: str | None  # why the local model did, when an engine was asked


class Service:
    def __init__(
        self,
        app: Vibrant,
        lifecycle: Lifecycle,
        downloads: DownloadJobs,
        *,
        pool: Executor | None = None,
        events: Events | None = None,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.downloads = downloads
        self._pool = pool
        self._events = events
        self._timer: threading.Timer | None = None
        self._closed = threading.Event()
        # One editor per server: its completions supersede each other, and type through.
        self.completer: Completer[Any] = Completer(lifecycle, app.registry.canonical_id)

    @classmethod
    def build(cls, settings: Settings, pool: Executor, events: Events) -> Service:
        """Registry, cache, lifecycle and download jobs for a server (blocking: a worker)."""
        app = Vibrant(settings=settings)

        def state_changed(change: StateChange) -> None:
            events.model_state_changed(model_state(change))
            reason = f" ({change.reason})" if change.reason else ""
            log.info("model %s: %s%s", change.model_id, change.state, reason)

        downloads = DownloadJobs(
            app.downloader,
            app.updates,
            pool,
            on_progress=lambda progress: events.download_progress(download_progress(progress)),
        )
        lifecycle = Lifecycle(app.sizing(), app.cache, app.settings, on_change=state_changed)
        for warning in app.warnings:
            log.warning("%s", warning)
        return cls(app, lifecycle, downloads, pool=pool, events=events)

    # -- a server's background work and teardown ---------------------------------------

    def start_background(self) -> None:
        """Clean stale partials and warm llama.cpp up now; the update check later."""
        assert self._pool is not None
        self._pool.submit(self._clean_stale_partials)  # requests need not wait for it
        self._pool.submit(self._warm_up_runtime)
        if self.app.settings.engine != LOCAL_ENGINE:
            self._pool.submit(self.engine_info, True)  # the status knows its health early
        self._check_updates_in(self.app.settings.update_check_delay_s)

    def _clean_stale_partials(self) -> None:
        # Partial downloads nobody touched for a day go, as the README promises.
        try:
            removed = self.app.cache.clean_stale_partials()
        except Exception:
            log.exception("cleaning stale partial downloads failed")
            return
        if removed.removed:
            log.info("removed stale partial downloads: %s", ", ".join(removed.removed))

    def _warm_up_runtime(self) -> None:
        """With a model downloaded, a completion may come soon: import llama.cpp now."""
        from .inference.model import warm_up

        try:
            if self.app.cache.entries():
                warm_up()
        except Exception:  # the first load will say what is wrong, with its own error
            log.exception("warming up llama.cpp failed")

    def _check_updates_in(self, delay_s: float) -> None:
        if self._closed.is_set():
            return
        pool = self._pool
        assert pool is not None

        def submit() -> None:
            with contextlib.suppress(RuntimeError):  # the pool shut down meanwhile
                pool.submit(self.weekly_update_check)

        self._timer = threading.Timer(delay_s, submit)
        self._timer.daemon = True  # a pending check never keeps the process alive
        self._timer.start()

    def weekly_update_check(self) -> None:
        """At most once a week and never offline: look for updates, tell the editor, and with
        the autoUpdate setting download them in the background."""
        if is_offline():  # no network at all, and not even the import of the HTTP client
            return
        from .download.updates import UpdateSchedule

        try:
            check = UpdateSchedule(self.app.updates).run_if_due()
        except Exception as err:  # the editor has nothing to do about a failed background check
            log.info("background update check failed: %s", getattr(err, "message", err))
            check = None
        auto = self.app.settings.auto_update
        for update in check.updates if check else []:
            if self._events is not None:
                self._events.update_available(self.update_available(update, auto))
            if auto:
                log.info("auto-update: downloading %s in the background", update.model_id)
                self.downloads.start(self._job_model(update.model_id, True), update=True)
        self._check_updates_in(UPDATE_POLL_S)

    def close(self) -> None:
        """Stop downloads and the update timer, unload the model. Idempotent."""
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
        self.downloads.cancel_all()
        self.completer.cancel_running()  # a completion streaming from an engine ends with it
        self.lifecycle.close()

    # -- models ------------------------------------------------------------------------

    def list_models(self, params: p.ListModelsParams) -> p.ListModelsResult:
        listing = self.app.list_models(params.scope or "default")
        loaded = self.lifecycle.loaded_model_id
        return p.ListModelsResult(
            models=[model_entry(s, loaded) for s in listing.models],
            recommended=listing.selection.model_id if listing.selection else None,
            engine=self.engine_info(ask=True),
        )

    def model_info(self, params: p.ModelInfoParams) -> p.ModelEntry:
        return model_entry(self.app.model_info(params.model_id), self.lifecycle.loaded_model_id)

    def select_model(self, params: p.SelectModelParams) -> p.SelectModelResult:
        return wire(self.app.select(params.ram_bytes, fetch=True), p.SelectModelResult)

    def fit_model(self, params: p.FitModelParams) -> p.FitResult:
        request = self.app.load_request(
            context_size=params.context_size, gpu_layers=params.gpu_layers
        )
        return wire(self.app.fit(params.model_id or "auto", request), p.FitResult)

    # -- downloads ---------------------------------------------------------------------

    def start_download(
        self, params: p.DownloadModelParams, listener: Callable[[Progress], None] | None = None
    ) -> Ticket:
        return self.downloads.join(self._job_model(params.model_id, False), listener)

    def start_update(
        self, params: p.UpdateModelParams, listener: Callable[[Progress], None] | None = None
    ) -> Ticket:
        model = self._job_model(params.model_id, True)
        return self.downloads.join(model, listener, update=True)

    def _job_model(self, model_id: str, update: bool) -> ModelInfo:
        """The model a download job runs for ("auto" is chosen now, an alias is the model
        it names); an update's must be cached. Both raise before any job exists."""
        model = self.app.registry.get(self.app.resolve_id(model_id))
        if update:
            self.app.cache.require(model.id)
        return model

    def check_updates(self, params: p.CheckUpdatesParams) -> p.CheckUpdatesResult:
        check = self.app.check_updates(params.model_ids)
        return p.CheckUpdatesResult(
            updates=[update_entry(u) for u in check.updates], checked_at=check.checked_at
        )

    def update_available(self, u: UpdateInfo, auto_update: bool) -> p.UpdateAvailable:
        entry = msgspec.structs.asdict(update_entry(u))
        return p.UpdateAvailable(**entry, auto_update=auto_update)

    def cancel_download(self, params: p.CancelDownloadParams) -> p.CancelDownloadResult:
        given = params.model_id  # "auto", an id, or an old id (an alias)
        app = self.app
        model_id = app.resolve_id(given) if given == "auto" else app.registry.canonical_id(given)
        return p.CancelDownloadResult(model_id=model_id, cancelled=self.downloads.cancel(model_id))

    # -- cache -------------------------------------------------------------------------

    def remove_model(self, params: p.RemoveModelParams) -> p.RemoveModelResult:
        model_id = self.app.registry.canonical_id(params.model_id)
        if self.lifecycle.loaded_model_id == model_id:
            # This server's own in-use mark would refuse the removal: the editor asked, so
            # unload first.
            self.lifecycle.unload(f"{model_id} is being removed")
        freed = self.app.remove(model_id)
        return p.RemoveModelResult(model_id=model_id, freed_bytes=freed)

    def cache_stats(self, params: p.NoParams) -> p.CacheStatsResult:
        return wire(self.app.cache_stats(), p.CacheStatsResult)

    def clean_cache(self, params: p.CleanCacheParams) -> p.RemovalResult:
        days = params.older_than_days
        return wire(
            self.app.clean(timedelta(days=days) if days is not None else None), p.RemovalResult
        )

    def prune_cache(self, params: p.PruneCacheParams) -> p.RemovalResult:
        return wire(self.app.prune(params.max_bytes), p.RemovalResult)

    # -- the loaded model --------------------------------------------------------------

    def load_model(
        self,
        params: p.LoadModelParams,
        cancel: threading.Event | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> p.LoadModelResult:
        # No overrides: the lifecycle's own request (the loaded model's, else the settings).
        request = None
        if params.options is not None:
            request = self.app.load_request(**msgspec.structs.asdict(params.options))
        loaded = self.lifecycle.load(params.model_id, request, cancel, on_change)
        return p.LoadModelResult(
            model_id=loaded.model_id,
            loaded_at=loaded.loaded_at,
            load_ms=round(loaded.load_ms, 1),
            supports_fim=loaded.supports_fim,
            reason=loaded.reason,
        )

    def unload_model(self, params: p.NoParams) -> p.UnloadModelResult:
        before = self.lifecycle.loaded_model_id
        unloaded = self.lifecycle.unload()
        return p.UnloadModelResult(model_id=unloaded or before, unloaded=unloaded is not None)

    def status(self, params: p.NoParams) -> p.StatusResult:
        """Memory only: never waits on the model lock, the manifest or the network."""
        snap = self.lifecycle.snapshot()
        return p.StatusResult(
            state=snap.state,
            model_id=snap.model_id,
            loaded_at=snap.loaded_at,
            last_used=snap.last_used,
            busy=snap.busy,
            error=snap.error,
            downloads=[download_progress(d) for d in self.downloads.active()],
            plan=wire(snap.plan, p.FitResult) if snap.plan else None,
            engine=self.engine_info(ask=False),
        )

    def complete(
        self,
        params: p.CompleteParams,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> p.CompleteResult:
        """``params`` for the completer (``completion.completer``: a completion still
        running is superseded and raises Cancelled; typing through the last suggestion is
        answered from it), and its answer as the wire's result."""
        # The completion pipeline ends the text where the code does (it owns the stop
        # strings then); ``raw`` keeps the model's text as it came, for benchmarks.
        pipeline = None if params.raw else self._pipeline(params)
        req = CompletionRequest(
            prompt=params.prompt,
            suffix=params.suffix,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop) if pipeline is None else [],
            context=[ContextChunk(c.filename, c.text) for c in params.context],
            filename=params.filename,
            comment=(pipeline and pipeline.line_comment) or "#",
            text_filter=pipeline,
        )

        def answer(
            req: CompletionRequest,
            on_text: Callable[[str], None] | None,
            cancel: threading.Event,
            on_change: Callable[[StateChange], None] | None,
        ) -> tuple[Completion, Note]:
            done, engine, fallback_reason = self._answer(req, params, on_text, cancel, on_change)
            said = Note(stop_reason(pipeline, done.result.finish_reason), engine, fallback_reason)
            return Completion(
                result=done.result, model_id=done.model_id, load_ms=done.load_ms
            ), said

        engine = self.engine_info(ask=False)
        answered = self.completer.complete(
            req,
            answer,
            model_id=params.model_id,
            # Only where the model would give the same again (greedy, nothing to stop on).
            repeatable=params.temperature == 0 and not params.stop and not params.raw,
            on_text=on_text,
            cancel=cancel,
            on_change=on_change,
            typed_model=engine.model if engine else None,  # an engine's suggestion is its model's
        )
        note = answered.note
        return msgspec.structs.replace(
            complete_result(answered, note.stop_reason),
            engine=note.engine,
            fallback_reason=None if answered.typed_through else note.fallback_reason,
        )

    def _pipeline(self, params: p.CompleteParams) -> Pipeline:
        return Pipeline.for_request(
            params.prompt,
            params.suffix,
            language_id=params.language_id,
            filename=params.filename,
            multiline=params.multiline,
            stops=list(params.stop),
            time_budget_ms=self.app.settings.completion_time_budget_ms,
        )

    def _answer(
        self,
        req: CompletionRequest,
        params: p.CompleteParams,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
        on_change: Callable[[StateChange], None] | None,
    ) -> tuple[Answered, str, str | None]:
        """The completion, which engine wrote it, and why the local model did when the
        settings name an engine (``engines.routing``: it could not be reached)."""

        def local(begun: str = "", to: Callable[[str], None] | None = on_text) -> Completion:
            asked = req
            if begun:  # continue what the engine sent, through a pipeline of its own
                more = msgspec.structs.replace(params, prompt=params.prompt + begun)
                pipeline = None if params.raw else self._pipeline(more)
                asked = msgspec.structs.replace(req, prompt=more.prompt, text_filter=pipeline)
            return self.lifecycle.complete(asked, params.model_id, to, cancel, on_change)

        engine = self.app.engine
        if engine is None:
            return local(), LOCAL_ENGINE, None
        from .engines.routing import route

        routed = route(engine, req, on_text, cancel, local)
        return routed, routed.engine, routed.fallback_reason

    def engine_info(self, ask: bool) -> p.EngineInfo | None:
        status = self.app.engine_status(ask)
        return wire(status, p.EngineInfo) if status is not None else None
