"""The Hugging Face Hub, spoken as ``docs/hub-protocol.md`` describes it.

Resolve with a HEAD that doesn't follow redirects; read the commit, the LFS
SHA-256 and the real size from the ``X-*`` headers; fetch from the CDN host the
redirect names. The token goes to the endpoint's host only.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx
import msgspec

from ..errors import DownloadFailedError, GatedRepoError, NotHubAnswer, OfflineError
from ..fsutil import is_sha256
from ..offline import is_offline

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
GITATTRIBUTES = ".gitattributes"
_MISSING_CODES = ("RepoNotFound", "RevisionNotFound", "EntryNotFound")


def web_page(response: httpx.Response) -> bool:
    """An HTML page where the Hub answers with a file, a redirect or JSON (and none of the
    Hub's own headers): what a captive portal or a proxy's login page sends."""
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    hub_said = any(h in response.headers for h in ("x-repo-commit", "x-error-code"))
    return kind in ("text/html", "application/xhtml+xml") and not hub_said


def not_the_hub(source: str, what: str, response: httpx.Response) -> NotHubAnswer:
    kind = response.headers.get("content-type") or "no content type"
    page = web_page(response)
    said = "a web page" if page else "something that is not the Hub's answer"
    return NotHubAnswer(
        f"{source} answered {what} with {said} ({response.status_code}, {kind}): "
        + ("a captive portal or a proxy's login page?" if page else "not a Hub or a mirror?"),
        hint="Sign in to the network (or fix the proxy settings), or remove that source "
        "from `sources` in config.toml.",
        source=source,
        status=response.status_code,
    )


class TransientError(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx); ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Resolved(msgspec.Struct, kw_only=True, frozen=True):
    repo: str
    filename: str
    commit: str | None
    sha256: str | None  # the Hub's own SHA-256 of the file, when it says
    size: int | None
    etag: str | None
    url: str  # where the bytes are (the CDN's signed URL, or the resolve URL itself)


class RepoRef(msgspec.Struct, frozen=True):
    name: str
    target_commit: str = msgspec.field(name="targetCommit")


class Refs(msgspec.Struct, frozen=True):
    branches: list[RepoRef] = []
    tags: list[RepoRef] = []


class _Lfs(msgspec.Struct, frozen=True):
    sha256: str | None = None
    size: int | None = None


class _Sibling(msgspec.Struct, frozen=True):
    rfilename: str
    size: int | None = None
    lfs: _Lfs | None = None


class RevisionInfo(msgspec.Struct, frozen=True):
    sha: str | None = None
    siblings: list[_Sibling] = []

    def file_sha256(self, filename: str) -> tuple[str | None, int | None]:
        for s in self.siblings:
            if s.rfilename == filename:
                if s.lfs is not None:
                    return s.lfs.sha256, s.lfs.size or s.size
                return None, s.size
        return None, None


def find_token() -> str | None:
    """``HF_TOKEN``, else the file huggingface_hub's ``login`` writes."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip()
    candidates = []
    if path := os.environ.get("HF_TOKEN_PATH"):
        candidates.append(Path(path))
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        candidates.append(Path(hf_home) / "token")
    xdg = os.environ.get("XDG_CACHE_HOME")
    candidates.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "token")
    for c in candidates:
        try:
            text = c.expanduser().read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _ca_bundle() -> ssl.SSLContext | bool:
    # httpx reads SSL_CERT_FILE/SSL_CERT_DIR itself; these two are what requests users set.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if path := os.environ.get(var):
            return ssl.create_default_context(cafile=path)
    return True


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    if (rl := headers.get("ratelimit")) and (m := re.search(r"\bt=(\d+)", rl)):
        return float(m.group(1))
    return None


def check_status(
    response: httpx.Response,
    *,
    what: str,
    repo: str,
    revision: str,
    source: str = "",
    code: str | None = None,
) -> None:
    """Turn a Hub error answer into the error type the user can act on. ``source`` (the
    endpoint's host:port) is named in every "missing" message: with several mirrors, the
    user must know which one lacks the file. ``code`` overrides the ``X-Error-Code``."""
    status = response.status_code
    if status < 400:
        return
    if code is None:
        code = response.headers.get("x-error-code", "")
    hub_words = response.headers.get("x-error-message") or ""
    if not hub_words:
        try:
            hub_words = str(response.json().get("error", ""))
        except Exception:
            hub_words = response.reason_phrase
    said = f' The Hub said: "{hub_words}"' if hub_words else ""
    if status == 429 or status >= 500:
        raise TransientError(
            f"the Hub answered {status} for {what}.{said}", retry_after_seconds(response.headers)
        )
    if code == "GatedRepo" or (status in (401, 403) and code not in _MISSING_CODES):
        raise GatedRepoError(
            f"Access to {repo} was refused ({status}).{said}",
            hint="This model is gated or private: accept its terms on the Hub, then set "
            "HF_TOKEN to an access token (or run `huggingface-cli login`).",
            repo=repo,
            status=status,
            hubErrorCode=code or None,
        )
    on = f" on {source}" if source else ""
    missing = {
        "RepoNotFound": f"The repository {repo} does not exist{on} (or is private).",
        "RevisionNotFound": f"The revision {revision!r} does not exist in {repo}{on}.",
        "EntryNotFound": f"{what} does not exist in {repo} at revision {revision!r}{on}.",
    }
    if status in (401, 404) and code in missing:
        raise DownloadFailedError(
            missing[code] + said,
            hint="Check the model's hf_repo, revision and file names in the registry.",
            repo=repo,
            revision=revision,
            status=status,
            hubErrorCode=code,
        )
    raise DownloadFailedError(
        f"The Hub answered {status} for {what} in {repo}{on}.{said}",
        repo=repo,
        revision=revision,
        status=status,
        hubErrorCode=code or None,
    )


class HubClient:
    """Resolve files and read repository metadata. Thread-safe; one per download."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        if is_offline():
            raise OfflineError(
                "HF_HUB_OFFLINE is set: vibrant makes no network requests. "
                "Downloaded models still work.",
                hint="Unset HF_HUB_OFFLINE to download or check for updates.",
            )
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else find_token()
        self._endpoint_host = urlsplit(self.endpoint).netloc
        self.timeout = timeout
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            verify=_ca_bundle(),
            trust_env=True,
            headers={"user-agent": "vibrant-rpc/0.1"},
        )

    @property
    def source(self) -> str:
        """The endpoint as errors name it: host:port, never the credentials in the URL."""
        return self._endpoint_host.rpartition("@")[2]

    def close(self) -> None:
        self.client.close()

    def auth_headers(self, url: str) -> dict[str, str]:
        """The bearer token, for the endpoint's host only: CDN URLs are already signed."""
        if self.token and urlsplit(url).netloc == self._endpoint_host:
            return {"authorization": f"Bearer {self.token}"}
        return {}

    def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **self.auth_headers(url)}
        try:
            return self.client.request(method, url, headers=headers, **kw)
        except (httpx.TransportError, httpx.TimeoutException) as err:
            raise TransientError(f"{type(err).__name__}: {err or 'no answer'} ({url})") from err

    def resolve_url(self, repo: str, revision: str, filename: str) -> str:
        return (
            f"{self.endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"
        )

    def resolve(self, repo: str, revision: str, filename: str) -> Resolved:
        url = self.resolve_url(repo, revision, filename)
        r = self._request("HEAD", url, headers={"accept-encoding": "identity"})
        if web_page(r):
            raise not_the_hub(self.source, filename, r)
        code = None
        if r.status_code in (401, 404) and r.headers.get("x-error-code") == "RepoNotFound":
            code = self._what_is_missing(repo, revision, filename)
        check_status(r, what=filename, repo=repo, revision=revision, source=self.source, code=code)
        linked = (r.headers.get("x-linked-etag") or r.headers.get("etag") or "").strip()
        linked = linked.removeprefix("W/").strip('"')
        size_text = r.headers.get("x-linked-size") or (
            r.headers.get("content-length") if r.status_code == 200 else None
        )
        location = r.headers.get("location")
        return Resolved(
            repo=repo,
            filename=filename,
            commit=r.headers.get("x-repo-commit"),
            sha256=linked if is_sha256(linked) else None,
            size=int(size_text) if size_text and size_text.isdigit() else None,
            etag=linked or None,
            url=urljoin(url, location) if r.is_redirect and location else url,
        )

    def _exists(self, repo: str, revision: str, filename: str) -> bool:
        url = self.resolve_url(repo, revision, filename)
        return self._request("HEAD", url, headers={"accept-encoding": "identity"}).status_code < 400

    def _what_is_missing(self, repo: str, revision: str, filename: str) -> str:
        """Some mirrors (olah) answer a missing file or revision with 401 RepoNotFound, where
        the Hub says 404 EntryNotFound or RevisionNotFound. Every Hub repository has a
        ``.gitattributes``: whether it resolves tells which of the three is missing."""
        if filename == GITATTRIBUTES:
            return "RepoNotFound"
        if self._exists(repo, revision, GITATTRIBUTES):
            return "EntryNotFound"
        if revision != "main" and self._exists(repo, "main", GITATTRIBUTES):
            return "RevisionNotFound"
        return "RepoNotFound"

    def revision_info(self, repo: str, revision: str) -> RevisionInfo:
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        r = self._request("GET", url, params={"blobs": "true"})
        if web_page(r):
            raise not_the_hub(self.source, f"the revision {revision} of {repo}", r)
        check_status(
            r, what=f"revision {revision}", repo=repo, revision=revision, source=self.source
        )
        return self._decode(r, RevisionInfo, f"the revision {revision} of {repo}")

    def refs(self, repo: str) -> Refs:
        r = self._request("GET", f"{self.endpoint}/api/models/{repo}/refs")
        if web_page(r):
            raise not_the_hub(self.source, f"the refs of {repo}", r)
        check_status(r, what="refs", repo=repo, revision="-", source=self.source)
        return self._decode(r, Refs, f"the refs of {repo}")

    def _decode(self, r: httpx.Response, type_: type[T], what: str) -> T:
        try:
            return msgspec.json.decode(r.content, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise not_the_hub(self.source, what, r) from None

    def set_timeout(self, seconds: float) -> None:
        """Shorter timeouts, for a quick look (a header before a download) that should give
        up soon on an unreachable host rather than wait as a transfer would."""
        self.timeout = seconds
        self.client.timeout = httpx.Timeout(seconds)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file at ``url`` (fewer at its end), in one GET and
        no retry: a look at a header, not a transfer. From a server that ignores the Range
        (200, the whole file) only the bytes asked for are read before the connection closes."""
        response = self.stream(url, start, end, idle_timeout=self.timeout)
        try:
            if response.status_code == 416:  # start is past the end
                return b""
            if response.status_code not in (200, 206):
                host = urlsplit(url).netloc.rpartition("@")[2]
                raise TransientError(
                    f"{host} answered {response.status_code} for bytes {start}-{end - 1}",
                    retry_after_seconds(response.headers),
                )
            _check_content_range(url, response, start, end)
            skip = start if response.status_code == 200 else 0
            want = end - start
            got = bytearray()
            for chunk in response.iter_bytes():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                got += chunk
                if len(got) >= want:
                    break
            return bytes(got[:want])
        except httpx.HTTPError as err:
            raise TransientError(f"{type(err).__name__}: {err or 'no answer'} ({url})") from err
        finally:
            response.close()

    def stream(self, url: str, start: int, end: int | None, *, idle_timeout: float) -> Any:
        """A streaming GET of ``[start, end)`` (``end`` None: to the end of the file)."""
        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        request = self.client.build_request(
            "GET",
            url,
            headers={"range": rng, "accept-encoding": "identity", **self.auth_headers(url)},
            timeout=timeout,
        )
        try:
            return self.client.send(request, stream=True)
        except (httpx.TransportError, httpx.TimeoutException) as err:
            raise TransientError(f"{type(err).__name__}: {err or 'no answer'}") from err


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


def _check_content_range(url: str, response: httpx.Response, start: int, end: int) -> None:
    """A 206 must hold the bytes asked for: one that says it starts elsewhere (a proxy or
    mirror answering every range from the file's start) would be parsed as the header's
    next bytes, and refused with some other, misleading cause."""
    if response.status_code != 206:
        return
    said = response.headers.get("content-range", "")
    m = _CONTENT_RANGE.fullmatch(said.strip())
    if m is None or int(m.group(1)) != start:
        host = urlsplit(url).netloc.rpartition("@")[2]
        raise DownloadFailedError(
            f"{host} answered bytes {start}-{end - 1} with Content-Range {said or '(none)'!r}"
        )
