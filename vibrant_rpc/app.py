"""The facade (``Vibrant``): what the CLI and the service both call, in plain Python.

It knows nothing of argparse or JSON-RPC; each method takes and returns typed values.
The parts that reach the network (downloader, updates) are built on first use: httpx
costs a sixth of a second, and most CLI commands never touch the network.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from .cache.manifest import ManifestEntry, ModelVersion
from .cache.store import Cache, CacheStats, PartialDownload, RemovalResult
from .config import LOCAL_ENGINE, Settings, read_settings
from .download.progress import ProgressCallback
from .errors import VibrantError
from .fit.estimate import EstimateOptions, estimate
from .fit.gpu import GpuDevice, detect_gpus
from .fit.plan import Fit, LoadRequest, fit_model, load_request
from .fit.ram import MemoryInfo, read_memory
from .fit.selection import Need, NeedFn, Selection, label, order_key, registry_need, select_model
from .fit.sizing import Sizing
from .paths import Paths
from .registry import ModelInfo, Registry
from .states import Auto

if TYPE_CHECKING:
    from .cache.elsewhere import Found
    from .download.downloader import Downloader, DownloadResult
    from .download.sources import HeaderHub
    from .download.updates import UpdateCheck, Updates
    from .engines.engine import Engine, EngineStatus
    from .fit.headers import HeaderStore, KnownHeader


class ModelStatus(msgspec.Struct, kw_only=True):
    """A registry entry with its state in this machine's cache."""

    model: ModelInfo
    cached: bool
    size_bytes: int | None = None
    last_used: str | None = None
    use_count: int = 0
    revision: str | None = None
    partial: PartialDownload | None = None
    selected: bool = False  # the model this machine would get
    versions: list[ModelVersion] = []  # Hub commits seen for it, oldest first
    sources: dict[str, str] = {}  # Hub file name -> where it came from
    fit: Fit | None = None  # what it needs here (``model_info`` only), when known
    # Its memory estimate here (at the configured context), as selection and ``fit`` have
    # it; None: nothing is known of it but the registry's ram_required_mb.
    ram_needed_bytes: int | None = None


class ModelList(msgspec.Struct, kw_only=True):
    """The registry's models with their cache state, and the one this machine gets."""

    models: list[ModelStatus]
    selection: Selection | None  # None: no model fits here
    unselected: str | None = None  # why no model was selected


Scope = Literal["all", "cached", "default"]


class Vibrant:
    """One handle on registry, settings, cache and memory for a process."""

    def __init__(self, paths: Paths | None = None, settings: Settings | None = None) -> None:
        self.paths = paths or Paths.from_env()
        self._setting_warnings: list[str] = []
        if settings is None:
            settings, self._setting_warnings = read_settings(self.paths.config)
        self.settings = settings
        self.registry = Registry.load(self.paths.user_registry)
        if self.settings.model:  # an old id (an alias) names the model it is now
            canonical = self.registry.canonical_id(self.settings.model)
            self.settings = msgspec.structs.replace(self.settings, model=canonical)
        self.cache = Cache(self.paths, self.registry, max_bytes=self.settings.cache_size_limit)

    @property
    def warnings(self) -> list[str]:
        return (
            self._setting_warnings
            + [p.message for p in self.registry.problems]
            + self.cache.warnings
        )

    def memory(self) -> MemoryInfo:
        return read_memory()

    def gpus(self, memory: MemoryInfo | None = None) -> list[GpuDevice]:
        return detect_gpus(memory or self.memory())

    def load_request(self, **given: int | bool | Auto | None) -> LoadRequest:
        """The load settings, with a request's own values where given (None: the setting's);
        ``fit.load_request``."""
        return load_request(self.settings, **given)

    def fit(
        self,
        model_id: str,
        request: LoadRequest | None = None,
        *,
        fetch: bool = True,
        memory: MemoryInfo | None = None,
    ) -> Fit:
        """What ``model_id`` needs here and whether it fits; its header is read from the
        cached file, else fetched from the Hub (``fetch``), else built from the registry's
        architecture numbers (the note says so)."""
        model = self.registry.get(self.resolve_id(model_id))
        known = self._known(model, fetch)
        if isinstance(known, str):  # why no header: the file's or the Hub's failure, named
            raise VibrantError(
                f"vibrant can't estimate {model.id}'s memory: {known}, and its registry "
                "entry has no architecture numbers.",
                hint=f"Its registry entry says {model.ram_required_mb} MB of RAM; add an "
                "`architecture` to the entry, or try again online.",
                modelId=model.id,
            )
        memory = memory or self.memory()
        return self._fit(model, known, request or self.load_request(), memory, self.gpus(memory))

    def _known(self, model: ModelInfo, fetch: bool) -> KnownHeader | str:
        """The model's header (named as the registry names it), or why none is known."""
        known = self.headers.known_or_why(model, fetch=fetch)
        if isinstance(known, str):
            return known
        # The registry's name ("7B Q5_K_M") in the words, not the file's general.name.
        header = msgspec.structs.replace(known.header, name=label(model))
        return msgspec.structs.replace(known, header=header)

    def _fit(
        self,
        model: ModelInfo,
        known: KnownHeader,
        request: LoadRequest,
        memory: MemoryInfo,
        devices: list[GpuDevice],
    ) -> Fit:
        return fit_model(
            model.id,
            known.header,
            request,
            memory,
            devices,
            header_source=known.source,
            note=known.note,
        )

    def _need_fn(self, mem: MemoryInfo, devices: list[GpuDevice], fetch: bool) -> NeedFn:
        request = self.load_request()

        def need(model: ModelInfo) -> Need:
            known = self._known(model, fetch)
            if isinstance(known, str):
                return registry_need(model)
            f = self._fit(model, known, request, mem, devices)
            # The CPU need at 4096 tokens orders the models: the same on every machine,
            # so the order doesn't move with the RAM.
            order = estimate(known.header, EstimateOptions(context=4096)).cpu_bytes
            return Need(
                bytes=f.ram_needed_bytes,
                order=order,
                breakdown=f.breakdown,
                context=f.context,
                note=known.note,
            )

        return need

    def select(
        self,
        ram_bytes: int | None = None,
        models: list[ModelInfo] | None = None,
        *,
        fetch: bool = False,
        need: NeedFn | None = None,
    ) -> Selection:
        """The model for this machine (or for ``ram_bytes`` of RAM), by each model's memory
        estimate at the configured context; ``models``: choose among these only; ``need``:
        this machine's needs, already asked (``list_models`` shows them too)."""
        mem = self.memory() if ram_bytes is None else MemoryInfo(ram_bytes, ram_bytes)
        # A machine of ``ram_bytes``: still this one's GPUs, with their free memory now.
        if need is None:
            need = self._need_fn(mem, self.gpus(mem if ram_bytes is None else None), fetch)
        available = None if ram_bytes is not None else mem.available_bytes
        return select_model(models or self.registry, mem.total_bytes, available, need)

    def smaller_cached(self, model_id: str) -> list[str]:
        """The cached models that come before ``model_id`` in selection's order (the
        memory they need at 4096 tokens), the next smaller first: where a failed load
        falls back to."""
        entries = {e.id: e for e in self.cache.entries() if e.id in self.registry}
        mem = self.memory()
        need = self._need_fn(mem, self.gpus(mem), fetch=False)

        def key(i: str) -> tuple[int, int]:
            model, entry = self.registry.get(i), entries.get(i)
            return order_key(model, need(model), entry.size_bytes if entry else None)

        keys = {i: key(i) for i in {model_id, *entries}}
        limit = keys[model_id]
        return sorted((i for i in entries if keys[i] < limit), key=keys.__getitem__, reverse=True)

    def sizing(self) -> Sizing:
        """What the lifecycle is handed: this facade's fit (of a downloaded model: a load
        never waits on the Hub), selection and fallback order."""
        return Sizing(
            fit=lambda model_id, request: self.fit(model_id, request, fetch=False),
            select=lambda models: self.select(models=models),
            resolve_id=self.resolve_id,
            smaller_cached=self.smaller_cached,
        )

    def _status(
        self,
        model: ModelInfo,
        entry: ManifestEntry | None,
        partial: PartialDownload | None,
        selected: str | None,
    ) -> ModelStatus:
        return ModelStatus(
            model=model,
            cached=entry is not None,
            size_bytes=entry.size_bytes if entry else None,
            last_used=entry.last_used.isoformat() if entry and entry.last_used else None,
            use_count=entry.use_count if entry else 0,
            revision=entry.revision if entry else None,
            partial=partial,
            selected=model.id == selected,
            versions=list(entry.versions) if entry else [],
            sources={f.remote_filename or f.path: f.source for f in entry.files if f.source}
            if entry
            else {},
        )

    def list_models(self, scope: Scope = "default") -> ModelList:
        """Each model's cache state and memory need here, and this machine's model: each
        need is asked once, for the selection and the list both."""
        manifest = self.cache.snapshot().models
        partials = {p.model_id: p for p in self.cache.partials()}
        mem = self.memory()
        asked = self._need_fn(mem, self.gpus(mem), fetch=False)
        needs: dict[str, Need] = {}

        def need(model: ModelInfo) -> Need:
            if (known := needs.get(model.id)) is None:
                known = needs[model.id] = asked(model)
            return known

        selection, unselected = self._try_select(need)
        selected = selection.model_id if selection else None
        out = []
        for model in self.registry:
            entry = manifest.get(model.id)
            if scope == "cached" and entry is None:
                continue
            if scope == "default" and model.deprecated and entry is None:
                continue
            status = self._status(model, entry, partials.get(model.id), selected)
            status.ram_needed_bytes = _estimated(need(model))
            out.append(status)
        return ModelList(models=out, selection=selection, unselected=unselected)

    def _try_select(
        self, need: NeedFn | None = None, models: list[ModelInfo] | None = None
    ) -> tuple[Selection | None, str | None]:
        """This machine's model, or None and why none fits."""
        try:
            return self.select(models=models, need=need), None
        except VibrantError as err:
            return None, err.message

    def _selected_id(self) -> str | None:
        """This machine's model, the recommended models asked first: whenever one of them
        fits, the selection picks among them alone, so one model's info costs the few
        recommended models' needs rather than the whole registry's."""
        recommended = [m for m in self.registry if m.recommended and not m.deprecated]
        selection = self._try_select(models=recommended)[0] if recommended else None
        if selection is None:  # none of them fits: the others may
            selection = self._try_select()[0]
        return selection.model_id if selection else None

    def model_info(self, model_id: str) -> ModelStatus:
        model = self.registry.get(model_id)
        partial = next((p for p in self.cache.partials() if p.model_id == model.id), None)
        status = self._status(model, self.cache.get(model.id), partial, self._selected_id())
        # Nothing known of its architecture: the entry alone.
        with contextlib.suppress(VibrantError):
            status.fit = self.fit(model.id)
            status.ram_needed_bytes = status.fit.ram_needed_bytes
        return status

    def remove(self, model_id: str) -> int:
        return self.cache.remove(model_id)

    def cache_stats(self) -> CacheStats:
        return self.cache.stats()

    def clean(self, older_than: timedelta | None = None) -> RemovalResult:
        return self.cache.clean(older_than)

    def prune(self, max_bytes: int | None = None) -> RemovalResult:
        return self.cache.prune(max_bytes)

    def verify(self, model_id: str) -> ManifestEntry:
        return self.cache.verify(model_id, force=True)

    # -- downloads and updates (vibrant_rpc.download, vibrant_rpc.download.updates) --------------

    @cached_property
    def downloader(self) -> Downloader:
        from .cache.elsewhere import default_roots
        from .download.downloader import Downloader, transfer_config
        from .download.reuse import Reuse
        from .download.sources import open_hub

        roots = default_roots() if self.settings.use_other_caches else None
        s = self.settings
        return Downloader(
            self.paths,
            self.cache,
            transfer_config(s),
            hub_factory=lambda: open_hub(s.sources, s.token_sources, s.trusted_sources),
            reuse=Reuse(roots=roots),
        )

    @cached_property
    def engine(self) -> Engine | None:
        """The engine completions go to (the ``engine`` setting); None: this machine's.
        Built on first use (httpx, and its key read from where the settings point); a
        key that can't be read raises its ConfigError at each use."""
        name = self.settings.engine
        if name == LOCAL_ENGINE:
            return None
        from .engines.engine import Engine

        return Engine(name, self.settings.engines[name])

    def engine_status(self, ask: bool) -> EngineStatus | None:
        """The engine completions go to, as last seen (memory only), or ``ask``ed now
        (the network); None: this machine's. Never raises: a key that can't be read is
        the status's error."""
        name = self.settings.engine
        if name == LOCAL_ENGINE:
            return None
        try:
            engine = self.engine
        except VibrantError as err:
            from .engines.engine import EngineStatus

            s = self.settings.engines[name]
            return EngineStatus(name=name, url=s.url, kind=s.kind, model=s.model,
                                healthy=False, error=err.message, error_kind=err.kind,
                                hint=err.hint, fallback=s.fallback)  # fmt: skip
        assert engine is not None
        return engine.health() if ask else engine.status()

    @cached_property
    def updates(self) -> Updates:
        from .download.updates import Updates

        return Updates(
            self.registry,
            self.cache,
            self.downloader,
            self.paths.state,
            hub_factory=self.downloader.hub_factory,
        )

    @cached_property
    def headers(self) -> HeaderStore:
        """GGUF headers, cached or not; the Hub client (and httpx) only once one is fetched."""
        from .fit.headers import HeaderStore

        def hub() -> HeaderHub:
            # imported here: download.sources brings httpx (0.3 s), which a look at the
            # registry's models (list, select) never needs
            from .download.sources import HeaderHub

            return HeaderHub(self.downloader.hub_factory())

        return HeaderStore(self.paths, self.cache, hub)

    def resolve_id(self, model_id: str) -> str:
        """``auto`` is the selection's choice for this machine."""
        return self.select().model_id if model_id == "auto" else self.registry.get(model_id).id

    def download(
        self,
        model_id: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Download (or resume) a model; blocking. ``cancel`` set stops it, keeping the partial."""
        model = self.registry.get(self.resolve_id(model_id))
        return self.downloader.download(model, progress=progress, cancel=cancel)

    def import_file(
        self, model_id: str, path: Path, progress: ProgressCallback | None = None
    ) -> DownloadResult:
        """Adopt a file the user has (``vibrant model import``) as one of ``model_id``'s files,
        if its SHA-256 is the reference (the registry's, else the Hub's); nothing downloads."""
        from .download.reuse import Reuse, named_file

        model = self.registry.get(self.resolve_id(model_id))
        reuse = Reuse(files=[named_file(path)], only=True)
        return self.downloader.download(model, progress=progress, reuse=reuse)

    def scan_other_caches(self) -> list[Found]:
        """What other tools downloaded that registry models not cached here could take."""
        from .cache.elsewhere import default_roots, scan

        return scan(self.registry, default_roots(), skip=lambda m: self.cache.get(m.id) is not None)

    def check_updates(self, model_ids: list[str] | None = None) -> UpdateCheck:
        return self.updates.check(model_ids)

    def update_model(
        self,
        model_id: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        return self.updates.update(model_id, progress, cancel)


def _estimated(need: Need) -> int | None:
    """A need's bytes where they come from a memory estimate (which has its breakdown),
    None where they are only the registry's ram_required_mb."""
    return need.bytes if need.breakdown is not None else None
