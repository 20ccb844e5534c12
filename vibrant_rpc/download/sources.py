"""Several endpoints tried in order: a team mirror first, the Hub last.

A source that can't be reached, times out or answers 5xx passes the request to the next
one; so does one that lacks the repository, revision or file (a 404, or olah's 401
RepoNotFound, told apart by ``HubClient``), and one that answers a web page (a captive
portal). The bytes are checked against one reference fixed when the download began,
whichever source serves them, so a fallback never lowers the bar; bytes that fail it
pass the file to the next source, the Hub last.

The reference is no mirror's to set (``reference``): it is the registry's pinned SHA-256,
else the Hub's own (a HEAD to the Hub: ``HF_ENDPOINT``, else huggingface.co, asked even
when a mirror sends the bytes). Only where the Hub can't say may a mirror's word stand,
and only a mirror the user marked in ``trusted_sources``. The token goes only to the Hub's
own host and to sources the user marked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from ..cache.partials import FileProgress
from ..errors import DownloadFailedError, HubUnreachableError, VibrantError
from .hub import DEFAULT_ENDPOINT, HubClient, Refs, Resolved, RevisionInfo, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

HUB_HOST = urlsplit(DEFAULT_ENDPOINT).netloc


def netloc(endpoint: str) -> str:
    """``host:port`` of an endpoint, as a source is named (``huggingface.co`` bare too)."""
    return urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").netloc.rpartition("@")[2]


# The Hub's word on a file is one HEAD: it must not hold a download up for long when the
# Hub can't be reached (an air-gapped network, where a trusted mirror's word stands).
REFERENCE_TIMEOUT_S = 10.0


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    """What a file's bytes must be, and who says so."""

    sha256: str | None
    size: int | None = None
    by: str | None = None  # "registry", or the source (host:port) that vouched for it
    commit: str | None = None  # the commit the Hub vouched at, when the Hub did
    why_none: str | None = None  # no reference: why (said when a mirror's word is refused)


def hub_endpoint() -> str:
    """The Hub whose word is the reference: ``HF_ENDPOINT``, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


class Sources(HubClient):
    """A ``HubClient`` over an ordered list of endpoints, failing over from one to the next."""

    def __init__(
        self,
        endpoints: Sequence[str],
        token: str | None,
        token_sources: Sequence[str] = (),
        *,
        trusted: Sequence[str] = (),
        hub: str | None = None,
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
        self.trusted = {netloc(t) for t in trusted}
        hub = hub or hub_endpoint()
        listed = next((c for c in self.clients if c.source == netloc(hub)), None)
        # the Hub asked for references, listed among the sources or not
        self.hub = listed or HubClient(
            hub, token if netloc(hub) in marked else "", timeout=REFERENCE_TIMEOUT_S
        )
        self._own_hub = listed is None

    @property
    def source(self) -> str:
        return self.clients[self.current].source

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self._own_hub:
            self.hub.close()

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

    def fail_over(
        self,
        repo: str,
        revisions: Sequence[str],
        filename: str,
        accept: Callable[[Resolved], bool],
    ) -> Resolved | None:
        """The file from the first source after the current one (whose stream stopped making
        progress, or whose bytes failed the reference) that has it as ``accept`` wants it,
        at the first of ``revisions`` it has (mirrors of one repository can differ in
        commits), else None. That source becomes the current one."""
        for i in range(self.current + 1, len(self.clients)):
            client = self.clients[i]
            for revision in revisions:
                try:
                    res = client.resolve(repo, revision, filename)
                except (TransientError, DownloadFailedError) as err:
                    log.info("%s has no %s at %s: %s", client.source, filename, revision, err)
                    continue
                if accept(res):
                    self.current = i
                    return res
                log.info("%s has another %s (%s bytes, %s)", client.source, filename,
                         res.size, res.sha256)  # fmt: skip
                break
        return None

    def reference(
        self, repo: str, revisions: Sequence[str], filename: str, claimed: Resolved
    ) -> Reference:
        """The Hub's SHA-256 and size of the file (at the first of ``revisions`` it knows),
        whichever source resolved it (``claimed``, from the current source); where the Hub
        can't say, the current source's own claim if the user trusts that source."""
        said = []
        for revision in revisions:
            try:
                # the Hub resolved it itself: its answer is at hand
                at_hand = self.clients[self.current] is self.hub and claimed.commit == revision
                res = claimed if at_hand else self.hub.resolve(repo, revision, filename)
                sha = res.sha256 or self.hub.revision_info(repo, revision).file_sha256(filename)[0]
            except TransientError as err:  # the Hub can't be reached: no other revision either
                said.append(str(err))
                break
            except DownloadFailedError as err:
                said.append(err.message)
                continue
            if sha is not None:
                return Reference(sha256=sha, size=res.size, by=self.hub.source, commit=res.commit)
            said.append(f"the Hub lists no SHA-256 of {filename} at {revision}")
        source = self.source
        if claimed.sha256 is not None and source in self.trusted:
            return Reference(sha256=claimed.sha256, size=claimed.size, by=source)
        why = f"the Hub ({self.hub.source}) was asked: {'; '.join(said) or 'no answer'}"
        return Reference(sha256=None, why_none=why)


def reference(
    hub: HubClient,
    repo: str,
    revisions: Sequence[str],
    claimed: Resolved,
    listed: Callable[[], RevisionInfo],
) -> Reference:
    """Who vouches for a file's bytes, the registry aside: the Hub (``Sources.reference``);
    with one endpoint, that endpoint is the Hub, and its word (the resolve's LFS hash, else
    ``listed``: its revision API's file list) is the reference."""
    if isinstance(hub, Sources):
        return hub.reference(repo, [r for r in revisions if r], claimed.filename, claimed)
    sha = claimed.sha256 or listed().file_sha256(claimed.filename)[0]
    return Reference(sha256=sha, size=claimed.size, by=hub.source if sha else None)


def fail_over(
    hub: HubClient, repo: str, revisions: Sequence[str], fp: FileProgress, *, anew: bool = False
) -> Resolved | None:
    """The same file (size, and SHA-256 where said) from the next source, or None. The
    bytes already on disk stay and the transfer goes on from them; ``anew``: none are kept
    (they failed the reference), so only the SHA-256 must agree."""
    if not isinstance(hub, Sources):
        return None

    def same(res: Resolved) -> bool:
        return res.sha256 in (None, fp.sha256) and (anew or res.size == fp.size_bytes)

    res = hub.fail_over(repo, [r for r in revisions if r], fp.remote_filename, same)
    if res is not None:
        log.warning("%s: going on from %s at byte %d", fp.remote_filename, res.url, fp.done_bytes)
    return res


def open_hub(
    sources: Sequence[str], token_sources: Sequence[str], trusted: Sequence[str] = ()
) -> HubClient:
    """The client downloads use: ``sources`` when set, else one endpoint (``HF_ENDPOINT``,
    else the Hub) with the token as before."""
    if not sources:
        return HubClient()
    from .hub import find_token

    return Sources(sources, find_token(), token_sources, trusted=trusted)


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
