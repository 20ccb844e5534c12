"""Several endpoints tried in order: a team mirror first, the Hub last.

A source that can't be reached, times out or answers 5xx passes the request to the next
one; so does one that lacks the repository, revision or file (a 404, or olah's 401
RepoNotFound, told apart by ``HubClient``). The bytes are checked against the reference
fixed when the download began, whichever source serves them, so a fallback never lowers
the bar. The token goes only to the Hub's own host and to sources the user marked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from ..cache.partials import FileProgress
from ..errors import DownloadFailedError, HubUnreachableError, VibrantError
from .hub import DEFAULT_ENDPOINT, HubClient, Refs, Resolved, RevisionInfo, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

HUB_HOST = urlsplit(DEFAULT_ENDPOINT).netloc


def netloc(endpoint: str) -> str:
    """``host:port`` of an endpoint, as a source is named (``huggingface.co`` bare too)."""
    return urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").netloc.rpartition("@")[2]


class Sources(HubClient):
    """A ``HubClient`` over an ordered list of endpoints, failing over from one to the next."""

    def __init__(
        self,
        endpoints: Sequence[str],
        token: str | None,
        token_sources: Sequence[str] = (),
        *,
        timeout: float = 30.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no sources")
        marked = {netloc(t) for t in token_sources} | {HUB_HOST}
        self.clients = [
            # "" and not None: None makes a client look for the token itself
            HubClient(e, token if netloc(e) in marked else "", timeout=timeout)
            for e in endpoints
        ]
        self.current = 0  # the source that answered last: streams go through it
        self.endpoint = self.clients[0].endpoint
        self.timeout = timeout

    @property
    def source(self) -> str:
        return self.clients[self.current].source

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds
        for c in self.clients:
            c.set_timeout(seconds)

    def _owner(self, url: str) -> HubClient:
        host = netloc(url)
        return next((c for c in self.clients if c.source == host), self.clients[self.current])

    def auth_headers(self, url: str) -> dict[str, str]:
        return self._owner(url).auth_headers(url)

    def resolve_url(self, repo: str, revision: str, filename: str) -> str:
        return self.clients[self.current].resolve_url(repo, revision, filename)

    def _each(self, what: Callable[[HubClient], T], start: int = 0, wrap: bool = True) -> T:
        """``what`` on each source from ``start`` until one answers; the last refusal (the
        Hub's, when it is last) is raised, naming what the others said."""
        said: list[str] = []
        refused: VibrantError | None = None
        last: TransientError | None = None
        order = [*range(start, len(self.clients)), *(range(start) if wrap else ())]
        for i in order:
            client = self.clients[i]
            try:
                answer = what(client)
            except TransientError as err:
                said.append(f"{client.source}: {err}")
                last = err
            except DownloadFailedError as err:
                said.append(f"{client.source}: {err.message}")
                refused = err
            else:
                if said:
                    log.warning("%s answered after %s", client.source, "; ".join(said))
                self.current = i
                return answer
        if refused is None:
            # chained: whether the last source answered at all (fit.headers asks)
            raise TransientError("no source answered: " + "; ".join(said)) from last
        others = [s for s in said if not s.endswith(refused.message)]
        also = f" (and {'; '.join(others)})" if others else ""
        raise type(refused)(refused.message + also, hint=refused.hint, **refused.details)

    def resolve(self, repo: str, revision: str, filename: str) -> Resolved:
        return self._each(lambda c: c.resolve(repo, revision, filename))

    def revision_info(self, repo: str, revision: str) -> RevisionInfo:
        # the source that resolved the files first: its list is of the same commit
        return self._each(lambda c: c.revision_info(repo, revision), self.current)

    def refs(self, repo: str) -> Refs:
        return self._each(lambda c: c.refs(repo))

    def stream(self, url: str, start: int, end: int | None, *, idle_timeout: float) -> Any:
        return self._owner(url).stream(url, start, end, idle_timeout=idle_timeout)

    def fail_over(self, repo: str, revisions: Sequence[str], filename: str) -> Resolved | None:
        """The file from a source after the current one (whose stream stopped making
        progress), at the first of ``revisions`` it has (mirrors of one repository can
        differ in commits; the caller checks it is the same file), else None."""
        later = self.current + 1
        for revision in revisions:
            try:
                return self._each(partial(_resolve, repo, revision, filename), later, False)
            except (TransientError, DownloadFailedError) as err:
                log.info("no later source has %s at %s: %s", filename, revision, err)
        return None


def _resolve(repo: str, revision: str, filename: str, client: HubClient) -> Resolved:
    return client.resolve(repo, revision, filename)


def fail_over(
    hub: HubClient, repo: str, revisions: Sequence[str], fp: FileProgress
) -> Resolved | None:
    """The same file (size, and SHA-256 where said) from the next source, or None; the
    bytes already on disk stay and the transfer goes on from them."""
    if not isinstance(hub, Sources):
        return None
    res = hub.fail_over(repo, [r for r in revisions if r], fp.remote_filename)
    if res is None or res.size != fp.size_bytes or res.sha256 not in (None, fp.sha256):
        return None
    log.warning("%s: going on from %s at byte %d", fp.remote_filename, res.url, fp.done_bytes)
    return res


def open_hub(sources: Sequence[str], token_sources: Sequence[str]) -> HubClient:
    """The client downloads use: ``sources`` when set, else one endpoint (``HF_ENDPOINT``,
    else the Hub) with the token as before."""
    if not sources:
        return HubClient()
    from .hub import find_token

    return Sources(sources, find_token(), token_sources)


class HeaderHub:
    """A hub (``HubClient`` or ``Sources``) as ``fit.headers.HeaderStore`` asks for it: its
    failures in the error tree's words, so that the store needs neither httpx nor this
    package. A failure to get any answer (refused, reset, timed out) is a
    ``HubUnreachableError`` with ``answered=False``; a 5xx or a connection the server
    closed early is one with ``answered=True``; anything else passes as it is."""

    def __init__(self, hub: HubClient | Sources) -> None:
        self._hub = hub

    def set_timeout(self, seconds: float) -> None:
        self._hub.set_timeout(seconds)

    def resolve(self, repo: str, revision: str, filename: str) -> Resolved:
        try:
            return self._hub.resolve(repo, revision, filename)
        except TransientError as err:
            raise _unreachable(err) from err

    def read_range(self, url: str, start: int, end: int) -> bytes:
        try:
            return self._hub.read_range(url, start, end)
        except TransientError as err:
            raise _unreachable(err) from err

    def close(self) -> None:
        self._hub.close()


def _unreachable(err: TransientError) -> HubUnreachableError:
    seen: BaseException | None = err
    answered = True
    while seen is not None:
        if isinstance(seen, httpx.NetworkError | httpx.TimeoutException):
            answered = False
            break
        seen = seen.__cause__
    return HubUnreachableError(str(err) or type(err).__name__, answered=answered)
