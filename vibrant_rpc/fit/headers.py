"""What a model's GGUF header says, downloaded or not: the input of the memory estimate.

Three sources, best first. A cached model's own file (``read_header``: milliseconds, no
weights touched). For a model not downloaded, the Hub's copy of its files' headers,
fetched with Range requests (a few MB of a file of GBs). Failing those, the registry
entry's architecture numbers (``header_for``): offline, the Hub
unreachable or refusing, or the caller asking for no network; the answer says why.

What was read or fetched is kept in ``models/.headers/<id>.json`` with what it came
from (the files' sizes and modification times, or the repository, revision and file
names), so a second look costs neither a re-read nor the network. A Hub header is
checked again after ``HUB_RECHECK_S`` when the caller allows the network: the same
commit keeps it, a moved branch fetches the new one, a failed check keeps it. A damaged
or stale record is ignored and replaced, never an error: it only saves work.

The Hub is reached through the downloader's own ``hub_factory`` (its sources, mirrors
and token), imported lazily so that a command that never fetches never loads httpx.
A Hub that could not be reached at all (refused, timed out, the network down) is not
asked again by the same store for ``HUB_RETRY_S``: the selection looks at every registry
model, and a black-holed network would otherwise cost each of them the timeout.

The whole look at the Hub (resolving the files, then the header's ranges) has one
deadline, ``HUB_DEADLINE_S``, not only a timeout per read: a Hub that sends a byte a
second never trips a read timeout, and held ``vibrant model fit`` past 75 s (and
``listModels``, waiting on the same model, with it). A Hub that slow counts as
unreachable. A header's bytes are untrusted: one whose numbers make a model bigger than
any is refused (``estimate.check_sizes``), and no record larger than its header is kept.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol

import msgspec

from ..cache.store import Cache
from ..errors import HubUnreachableError, VibrantError
from ..fsutil import atomic_write
from ..gguf.architectures import header_from_arch
from ..gguf.header import FILE_LIMIT_BYTES, ModelHeader, header_from_ranges, read_header
from ..offline import is_offline
from ..paths import Paths
from ..registry import ModelInfo
from ..states import HeaderSource
from .estimate import check_sizes

log = logging.getLogger(__name__)

# A look before a download should not hang on a host that never answers: a
# transfer's 30 s would stall `select` and `info` for that long.
HUB_TIMEOUT_S = 5.0
# The whole look at the Hub for one model: the revision's files resolved, then the
# header's ranges (Gemma's 6.5 MB takes 1-2 s on loopback and well under this on a link of
# a few MB/s); the caller answers from the registry's numbers after it.
HUB_DEADLINE_S = 15.0
# After the Hub could not be reached, how long this store answers without trying it.
HUB_RETRY_S = 300.0
# A record smaller than this is kept whatever its header's size: its field names alone
# are a kilobyte, more than a tiny test model's header.
_RECORD_FLOOR_BYTES = 64 * 1024
# A header fetched from the Hub is checked again after this long: a branch can move to
# new files under the same names (a model quantised again). A check that finds the
# same commit costs a HEAD per file and moves no header bytes.
HUB_RECHECK_S = 7 * 24 * 3600.0
_FROM_REGISTRY = "estimated from the registry's architecture numbers"


class KnownHeader(msgspec.Struct, frozen=True, kw_only=True):
    header: ModelHeader
    # "file": read from the cached file; "hub": fetched from the Hub's files by Range;
    # "registry": built from the registry entry's architecture numbers
    source: HeaderSource
    note: str | None = None  # why not a better source, in plain words
    commit: str | None = None  # the Hub commit a "hub" header was fetched from


class Located(Protocol):
    """Where a file of the Hub's is, as ``HubLike.resolve`` says."""

    @property
    def commit(self) -> str | None: ...
    @property
    def url(self) -> str: ...


class HubLike(Protocol):
    """What the store needs of the Hub (``download.sources.HeaderHub``): a failure to
    reach it is a ``HubUnreachableError``, with ``answered=False`` where nothing answered."""

    def set_timeout(self, seconds: float) -> None: ...
    def resolve(self, repo: str, revision: str, filename: str) -> Located: ...
    def read_range(self, url: str, start: int, end: int) -> bytes: ...
    def close(self) -> None: ...


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """One ``models/.headers/<id>.json``."""

    source: Literal["file", "hub"]  # a HeaderSource; the registry's numbers are never stored
    key: str  # what it was read from; a record whose key differs is stale
    header: ModelHeader
    commit: str | None = None
    fetched_at: float | None = None  # "hub": when fetched or last found current (epoch s)


class HeaderStore:
    """The headers of the registry's models; thread-safe."""

    def __init__(
        self,
        paths: Paths,
        cache: Cache,
        hub_factory: Callable[[], HubLike] | None,
        *,
        timeout: float = HUB_TIMEOUT_S,
        retry_after: float = HUB_RETRY_S,
        deadline: float = HUB_DEADLINE_S,
    ) -> None:
        self.folder = paths.models / ".headers"
        self.cache = cache
        self.hub_factory = hub_factory
        self.timeout = timeout
        self.retry_after = retry_after
        self.deadline = deadline
        self._guard = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}
        # (monotonic time, why) of the last failure to reach the Hub; None: reachable
        self._unreachable: tuple[float, str] | None = None

    def known(self, model: ModelInfo, *, fetch: bool) -> KnownHeader | None:
        """The best header at hand for ``model``; ``fetch``: the Hub may be asked for it.
        None only when the model is not cached, no header was fetched and its registry
        entry has no architecture numbers (or no file size)."""
        known = self.known_or_why(model, fetch=fetch)
        return known if isinstance(known, KnownHeader) else None

    def known_or_why(self, model: ModelInfo, *, fetch: bool) -> KnownHeader | str:
        """``known``, or in words why nothing is known (the cached file's header damaged,
        the Hub's refused, offline, ...): what "can't estimate" then says."""
        lock = self._lock_for(model.id)
        # A look without the network doesn't wait on another's fetch of the same model
        # (a slow Hub held `listModels` behind `fitModel`): it answers from what is here.
        # (A look from the file or a record holds it for milliseconds.)
        if not lock.acquire(timeout=self.deadline + 1 if fetch else 0.5):
            return self._known(model, fetch=False, busy=True)
        try:
            return self._known(model, fetch=fetch, busy=False)
        finally:
            lock.release()

    def _known(self, model: ModelInfo, *, fetch: bool, busy: bool) -> KnownHeader | str:
        why_not_file = None
        if self.cache.get(model.id) is not None:
            try:
                return self._from_file(model)
            except (VibrantError, OSError) as err:
                why_not_file = f"the cached file's header could not be read ({err})"
                log.warning("%s: %s", model.id, why_not_file)
        record = self._load(model.id, _hub_key(model))
        if record is not None and not (fetch and _due(record)):
            return KnownHeader(header=record.header, source="hub", commit=record.commit)
        if is_offline():
            why = "offline (HF_HUB_OFFLINE is set)"
        elif busy:
            why = "not downloaded, and its header is being fetched from the Hub"
        elif not fetch or self.hub_factory is None:
            why = "not downloaded and not fetched from the Hub"
        elif (down := self._still_unreachable()) is not None:
            why = down
        else:
            try:
                known = self._from_hub(model, record)
            except Exception as err:  # any failure of the Hub: the registry answers
                why = _hub_failure(err)
                log.info("%s: header not fetched: %s", model.id, why)
                if _unreachable(err):
                    with self._guard:
                        self._unreachable = (time.monotonic(), why)
            else:
                with self._guard:
                    self._unreachable = None
                return known
        if record is not None:  # due for a check that could not be made: still the best
            return KnownHeader(header=record.header, source="hub", commit=record.commit)
        return _from_registry(model, why_not_file or why) or why_not_file or why

    def _still_unreachable(self) -> str | None:
        """Why the Hub is not asked now (it could not be reached a moment ago), or None."""
        with self._guard:
            if self._unreachable is None:
                return None
            when, why = self._unreachable
        ago = time.monotonic() - when
        if ago >= self.retry_after:
            return None
        return f"{why}, {ago:.0f} s ago; not asked again for {self.retry_after - ago:.0f} s"

    def _lock_for(self, model_id: str) -> threading.Lock:
        # one look per model at a time: two callers never fetch the same header twice
        with self._guard:
            return self._model_locks.setdefault(model_id, threading.Lock())

    def _load(self, model_id: str, key: str) -> _Record | None:
        path = self.folder / f"{model_id}.json"
        try:
            # Larger than any header's record: written from a hostile header before
            # records were bounded (one was 537 MB), and not read into memory again.
            if path.stat().st_size > FILE_LIMIT_BYTES:
                raise OSError(f"{path.stat().st_size} bytes, more than any header's record")
            record = msgspec.json.decode(path.read_bytes(), type=_Record)
            check_sizes(record.header)
        except FileNotFoundError:
            return None
        except (OSError, VibrantError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.info("%s: ignoring a damaged header record (%s)", path, err)
            return None
        return record if record.key == key else None

    def _save(self, model_id: str, record: _Record) -> None:
        data = msgspec.json.encode(record)
        # What a header is derived into is never larger on disk than the header itself.
        if len(data) > max(record.header.header_bytes, _RECORD_FLOOR_BYTES):
            log.warning("%s: header not kept (%d bytes of record)", model_id, len(data))
            return
        try:
            atomic_write(self.folder / f"{model_id}.json", data)
        except (VibrantError, OSError) as err:  # a full disk: known now, fetched again later
            log.warning("%s: header not kept (%s)", model_id, err)

    def _from_file(self, model: ModelInfo) -> KnownHeader:
        entry = self.cache.get(model.id)
        if entry is None:
            raise FileNotFoundError(f"{model.id} is no longer cached")
        files = self.cache.file_paths(entry)
        stats = [f.stat() for f in files]
        key = ";".join(
            f"{f.name}:{st.st_size}:{st.st_mtime_ns}" for f, st in zip(files, stats, strict=True)
        )
        record = self._load(model.id, key)
        if record is None or record.source != "file":
            # read_header finds a split model's other shards beside the first
            record = _Record(source="file", key=key, header=check_sizes(read_header(files[0])))
            self._save(model.id, record)
        return KnownHeader(header=record.header, source="file")

    def _from_hub(self, model: ModelInfo, kept: _Record | None) -> KnownHeader:
        """The header of the Hub's files now; ``kept``: the one fetched before, kept
        (and its check time moved on) if the files are still at its commit. Within
        ``deadline`` seconds, or a ``HubUnreachableError``."""
        assert self.hub_factory is not None
        hub = self.hub_factory()
        hub.set_timeout(self.timeout)
        done: concurrent.futures.Future[tuple[ModelHeader, str | None]] = (
            concurrent.futures.Future()
        )

        def look() -> None:
            try:
                done.set_result(_look(hub, model, kept))
            except BaseException as err:  # handed to the waiting caller
                done.set_exception(err)
            finally:
                hub.close()

        # Its own thread, so that the caller can stop waiting: httpx has no deadline for a
        # whole request, and a response trickling in never trips its read timeout.
        threading.Thread(target=look, name=f"header {model.id}", daemon=True).start()
        try:
            header, commit = done.result(timeout=self.deadline)
        except concurrent.futures.TimeoutError:
            hub.close()  # the look's next read fails, and its thread ends
            raise HubUnreachableError(
                f"no header within {self.deadline:g} s", answered=False, slow=True
            ) from None
        record = _Record(
            source="hub", key=_hub_key(model), header=header, commit=commit, fetched_at=time.time()
        )
        self._save(model.id, record)
        return KnownHeader(header=header, source="hub", commit=commit)


def _look(hub: HubLike, model: ModelInfo, kept: _Record | None) -> tuple[ModelHeader, str | None]:
    """(header, commit) of the model's files on the Hub now."""
    revision = model.revision or "main"
    resolved = [hub.resolve(model.hf_repo, revision, f.filename) for f in model.files]
    commit = resolved[0].commit
    if kept is not None and commit is not None and kept.commit == commit:
        return kept.header, commit
    # every file's header: a split model's later shards hold their own tensor infos
    header = header_from_ranges(*(partial(hub.read_range, r.url) for r in resolved))
    return check_sizes(header), commit


def _due(record: _Record) -> bool:
    """A Hub header not checked for ``HUB_RECHECK_S`` (or kept before checks were timed)."""
    if record.source != "hub":
        return False
    return record.fetched_at is None or time.time() - record.fetched_at >= HUB_RECHECK_S


def _hub_key(model: ModelInfo) -> str:
    names = "|".join(f.filename for f in model.files)
    return f"{model.hf_repo}@{model.revision or 'main'}:{names}"


def _unreachable(err: BaseException) -> bool:
    """Whether the failure was the Hub not answering at all (refused, reset, timed out,
    no route), as opposed to an answer: a 404, a 5xx, a connection closed early by the server."""
    return isinstance(err, HubUnreachableError) and err.details.get("answered") is False


def _hub_failure(err: Exception) -> str:
    text = err.message if isinstance(err, VibrantError) else str(err) or type(err).__name__
    if isinstance(err, HubUnreachableError) and err.details.get("slow"):
        return f"the Hub was too slow ({text})"
    if isinstance(err, HubUnreachableError):
        return f"the Hub was unreachable ({text})"
    return f"the Hub gave no header ({text})"


def _from_registry(model: ModelInfo, why: str) -> KnownHeader | None:
    header = header_for(model)
    if header is None:
        return None
    return KnownHeader(header=header, source="registry", note=f"{why}: {_FROM_REGISTRY}")


def header_for(model: ModelInfo) -> ModelHeader | None:
    """The header the registry entry's facts give, sized to its download; None without
    facts, or without a size (the weights would count as nothing)."""
    if model.architecture is None or not model.download_bytes:
        return None
    return header_from_arch(model.architecture, model.download_bytes, name=model.name)
