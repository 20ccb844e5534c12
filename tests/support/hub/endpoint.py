"""The endpoint: resolve URLs (a redirect to the CDN, or a non-LFS file itself) and the JSON
API (model info, tree listings with paging, refs), with the Hub's auth and error answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.support.hub.cdn import Cdn
from tests.support.hub.content import FileEntry, Repo, resolve_rev
from tests.support.hub.replies import StubError

__all__ = ["Endpoint"]


class Endpoint(Cdn):
    """Answers the endpoint's paths (the control API under /_stub is the Handler's)."""

    def _repo_or_error(self, repo_id: str) -> Repo:
        stub = self.stub
        url = f"{stub.endpoint}{urlsplit(self.path).path}"
        with stub._lock:
            repo = stub._repos.get(repo_id)
        if repo is None:
            raise StubError(404, "RepoNotFound", f"Repository Not Found for url: {url}.")
        if repo.gated or repo.private:
            auth = self.headers.get("Authorization") or ""
            m = re.match(r"^\s*Bearer\s+(\S+)\s*$", auth, re.IGNORECASE)
            given = m.group(1) if m else None
            ok = given is not None and (
                repo.token is None or hmac.compare_digest(given, repo.token)
            )
            if not ok:
                if repo.private:
                    raise StubError(
                        401,
                        "RepoNotFound",
                        f"Repository Not Found for url: {url}. Please make sure you specified "
                        "the correct `repo_id` and `repo_type`. If you are trying to access a "
                        "private or gated repo, make sure you are authenticated.",
                    )
                raise StubError(
                    401 if given is None else 403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
        return repo

    def _commit_or_error(self, repo: Repo, rev: str) -> tuple[str, dict[str, FileEntry]]:
        with self.stub._lock:
            commit = resolve_rev(repo, rev)
            if commit is None:
                raise StubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return commit, repo.commits[commit]

    def _endpoint(self, path: str, query: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise StubError(405, None, "Method Not Allowed")
        segs = path.split("/")[1:]  # raw (still quoted) segments
        if len(segs) >= 3 and segs[0] == "api" and segs[1] == "models":
            self._api(segs[2:], query)
            return
        if len(segs) >= 5 and segs[2] == "resolve":
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            rev = unquote(segs[3])
            filename = unquote("/".join(segs[4:]))
            self._resolve(repo_id, rev, filename)
            return
        raise StubError(404, None, "Not Found")

    def _resolve(self, repo_id: str, rev: str, filename: str) -> None:
        repo = self._repo_or_error(repo_id)
        commit, tree = self._commit_or_error(repo, rev)
        entry = tree.get(filename)
        if entry is None:
            raise StubError(404, "EntryNotFound", "Entry not found")
        blob = entry.blob
        if not entry.lfs:
            self._serve_blob(
                blob,
                extra=[("X-Repo-Commit", commit), ("ETag", f'"{entry.git_oid}"')],
                faults=False,
            )
            return
        location = self.stub.signed_url(blob.sha256)
        body = f"Found. Redirecting to {location}".encode()
        self._send_simple(
            302,
            body,
            "text/plain; charset=utf-8",
            [
                ("Location", location),
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", f'"{blob.sha256}"'),
                ("X-Linked-Size", str(blob.size)),
                ("ETag", f'"{entry.git_oid}"'),
                ("Accept-Ranges", "bytes"),
                ("Vary", "Origin, Accept"),
            ],
        )

    def _api(self, segs: list[str], query: str) -> None:
        # segs: OWNER, NAME, [revision, REV | tree, REV, PATH... | refs]
        if len(segs) < 2:
            raise StubError(404, None, "Not Found")
        repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
        rest = segs[2:]
        params = parse_qs(query)
        repo = self._repo_or_error(repo_id)
        if not rest or (len(rest) == 2 and rest[0] == "revision"):
            rev = unquote(rest[1]) if rest else "main"
            commit, tree = self._commit_or_error(repo, rev)
            self._send_json(self._model_info(repo, commit, tree, _flag(params, "blobs")))
        elif len(rest) >= 2 and rest[0] == "tree":
            rev = unquote(rest[1])
            sub = unquote("/".join(rest[2:])).strip("/")
            commit, tree = self._commit_or_error(repo, rev)
            self._tree(repo_id, rest[1], sub, tree, params)
        elif rest == ["refs"]:
            with self.stub._lock:
                branches = [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                    for b, c in sorted(repo.branches.items())
                ]
            self._send_json({"branches": branches, "tags": [], "converts": []})
        else:
            raise StubError(404, None, "Not Found")

    def _model_info(
        self, repo: Repo, commit: str, tree: Mapping[str, FileEntry], blobs: bool
    ) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for name in sorted(tree):
            entry = tree[name]
            sib: dict[str, Any] = {"rfilename": name}
            if blobs:
                sib["blobId"] = entry.git_oid
                sib["size"] = entry.blob.size
                if entry.lfs:
                    sib["lfs"] = {
                        "sha256": entry.blob.sha256,
                        "size": entry.blob.size,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(sib)
        ts = repo.commit_times.get(commit, time.time())
        owner = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": owner,
            "sha": commit,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts)),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": siblings,
        }

    def _tree(
        self,
        repo_id: str,
        raw_rev: str,
        sub: str,
        tree: Mapping[str, FileEntry],
        params: dict[str, list[str]],
    ) -> None:
        recursive = _flag(params, "recursive")
        prefix = f"{sub}/" if sub else ""
        items: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for name in sorted(tree):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            parts = rel.split("/")
            # directories on the way to this file
            depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, depth + 1):
                d = prefix + "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    items.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(f"tree:{d}".encode()).hexdigest(),
                            "size": 0,
                            "path": d,
                        }
                    )
            if len(parts) > 1 and not recursive:
                continue
            entry = tree[name]
            item: dict[str, Any] = {
                "type": "file",
                "oid": entry.git_oid,
                "size": entry.blob.size,
                "path": name,
            }
            if entry.lfs:
                item["lfs"] = {
                    "oid": entry.blob.sha256,
                    "size": entry.blob.size,
                    "pointerSize": len(entry.pointer),
                }
            items.append(item)
        if sub and not items:
            raise StubError(404, "EntryNotFound", f"Entry not found: {sub}")
        try:
            limit = int(params.get("limit", [str(self.stub.tree_page_size)])[0])
            offset = 0
            if "cursor" in params:
                offset = int(base64.urlsafe_b64decode(params["cursor"][0]).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StubError(400, None, f"bad cursor or limit: {exc}") from exc
        limit = max(1, limit)
        page = items[offset : offset + limit]
        headers: list[tuple[str, str]] = []
        if offset + limit < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            q = {k: v[0] for k, v in params.items() if k != "cursor"}
            q["cursor"] = cursor
            qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in q.items())
            sub_part = f"/{quote(sub, safe='/')}" if sub else ""
            url = f"{self.stub.endpoint}/api/models/{repo_id}/tree/{raw_rev}{sub_part}?{qs}"
            headers.append(("Link", f'<{url}>; rel="next"'))
        self._send_json(page, headers=headers)


def _flag(params: Mapping[str, list[str]], name: str) -> bool:
    v = params.get(name)
    if not v:
        return False
    return v[0].lower() in ("1", "true", "yes", "")
