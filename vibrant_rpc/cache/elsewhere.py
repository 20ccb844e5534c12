"""GGUF files that other tools already downloaded, and adopting one instead of downloading it.

Where each tool keeps its files (checked against their sources):

- huggingface_hub: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``:
  ``models--<org>--<name>/blobs/<etag>`` (the SHA-256 for LFS files),
  ``snapshots/<commit>/<path>`` relative symlinks into ``blobs``, ``refs/<branch>``.
- llama.cpp ``-hf``: recent versions (``common/hf-cache.cpp``) use that same layout in
  ``$LLAMA_CACHE`` (the hub folder itself), else in huggingface_hub's folder. Older ones
  wrote flat files to ``$LLAMA_CACHE``, else ``~/.cache/llama.cpp``: first the file's
  basename, later ``<org>_<name>_<path>`` with every ``/`` made ``_``.
- LM Studio: ``~/.lmstudio/models/<publisher>/<repo>/<file>``; older versions
  ``~/.cache/lm-studio/models/...``.
- Ollama: ``$OLLAMA_MODELS``, else ``~/.ollama/models``: ``manifests/<registry>/<ns>/<model>/<tag>``
  (JSON; the layer of type ``application/vnd.ollama.image.model`` is the GGUF), bytes at
  ``blobs/sha256-<hex>``; ``ollama pull hf.co/<org>/<name>:<quant>`` files it under
  ``manifests/hf.co/<org>/<name>/<quant>``.

The other tool's files are only ever read. A hard link shares their inode, so vibrant must
never open an adopted file for writing: updates and repairs write a new file and rename it
over the old name (as the downloader does), which leaves the other tool's inode as it was.
Nor is the linked file's mode or owner changed, since those belong to the inode too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import msgspec

from ..errors import ChecksumMismatchError
from ..fsutil import HASH_CHUNK, fsync_dir, is_sha256
from ..registry import ModelInfo, Registry

# "file": a path the user named (`vibrant model import <path>`), adopted the same way.
Tool = Literal["huggingface_hub", "llama.cpp", "lmstudio", "ollama", "file"]
Method = Literal["reflink", "hardlink", "copy"]
# Told (bytes hashed so far, bytes in all) as an adopted file is hashed (and copied).
OnHashed = Callable[[int, int], None]

# linux/fs.h: _IOW(0x94, 9, int). A reflink is a copy-on-write clone: no bytes move and
# a write to either file never reaches the other.
FICLONE = 0x40049409
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
# Errors that mean "this way of sharing the file doesn't work here", not a broken file.
_CANNOT_SHARE = {
    errno.EXDEV,
    errno.EPERM,
    errno.EACCES,
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EINVAL,
    errno.EMLINK,
    errno.ENOSYS,
    errno.EBADF,
}


class Roots(msgspec.Struct, frozen=True, kw_only=True):
    """The folders to look in, one list per tool; missing folders are simply empty."""

    hf_hub: list[str] = []
    llama_cpp_hub: list[str] = []  # llama.cpp's $LLAMA_CACHE in the huggingface_hub layout
    llama_cpp_flat: list[str] = []
    lmstudio: list[str] = []
    ollama: list[str] = []


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # the real file (symlinks resolved)
    tool: Tool
    size: int
    sha256: str | None  # when the tool's layout names the file by it
    matched_by: Literal["sha256", "name"]


class AdoptResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    method: Method
    sha256: str
    size: int
    copied_bytes: int  # 0 for a link or a reflink: the bytes saved


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """A model file that `vibrant model import --scan` could take from another tool."""

    model_id: str
    filename: str
    candidate: Candidate
    verified_by_name: bool  # the tool's layout already names it by the reference SHA-256
    saves_bytes: int


def default_roots(home: Path | None = None, env: Mapping[str, str] | None = None) -> Roots:
    """Where the tools keep files for this user, honouring the tools' own variables."""
    env = os.environ if env is None else env
    home = home if home is not None else Path.home()

    def var(name: str) -> Path | None:
        value = env.get(name)
        return Path(value).expanduser() if value else None

    xdg = var("XDG_CACHE_HOME") or home / ".cache"
    hf_home = var("HF_HOME") or xdg / "huggingface"
    hub = var("HF_HUB_CACHE") or var("HUGGINGFACE_HUB_CACHE") or hf_home / "hub"
    llama = var("LLAMA_CACHE")
    llama_flat = [llama] if llama else [xdg / "llama.cpp", home / "Library/Caches/llama.cpp"]
    ollama = var("OLLAMA_MODELS") or home / ".ollama" / "models"
    lmstudio = [home / ".lmstudio" / "models", xdg / "lm-studio" / "models"]
    return Roots(
        hf_hub=_unique([hub]),
        llama_cpp_hub=_unique([llama] if llama else []),
        llama_cpp_flat=_unique(llama_flat),
        lmstudio=_unique(lmstudio),
        ollama=_unique([ollama]),
    )


def _unique(paths: Iterable[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if str(p) not in out:
            out.append(str(p))
    return out


# -- finding ---------------------------------------------------------------------------------


def find_candidates(
    repo: str,
    filename: str,
    sha256: str | None,
    roots: Roots,
    *,
    size: int | None = None,
) -> list[Candidate]:
    """Files that may be ``repo``'s ``filename``: by SHA-256 where a layout names files by it,
    else by repo and name. Best first: a SHA-256 match, then the same repo's file.

    Nothing is hashed here: a name match is only a candidate until ``adopt`` hashes it.
    """
    found: dict[str, Candidate] = {}

    def add(path: Path, tool: Tool, known_sha: str | None) -> None:
        try:
            real = path.resolve(strict=True)
            st = real.stat()
        except (OSError, RuntimeError):
            return
        if not real.is_file() or (size is not None and st.st_size != size):
            return
        if sha256 is not None and known_sha is not None and known_sha != sha256:
            return  # the layout says it is another file
        by: Literal["sha256", "name"] = (
            "sha256" if sha256 is not None and known_sha == sha256 else "name"
        )
        key = str(real)
        if key not in found or (by == "sha256" and found[key].matched_by == "name"):
            found[key] = Candidate(
                path=key, tool=tool, size=st.st_size, sha256=known_sha, matched_by=by
            )

    hub_roots: list[tuple[str, Tool]] = [(r, "huggingface_hub") for r in roots.hf_hub]
    hub_roots += [(r, "llama.cpp") for r in roots.llama_cpp_hub]
    for root, tool in hub_roots:
        for path, known in _hf_cache(Path(root), repo, filename, sha256):
            add(path, tool, known)
    for flat in map(Path, roots.llama_cpp_flat):
        for path in _llama_flat(flat, repo, filename):
            add(path, "llama.cpp", _etag_sha(path))
    for lms in map(Path, roots.lmstudio):
        for path in _lmstudio(lms, repo, filename):
            add(path, "lmstudio", None)
    for olm in map(Path, roots.ollama):
        for path, known in _ollama(olm, repo, filename, sha256):
            add(path, "ollama", known)
    return sorted(found.values(), key=lambda c: (c.matched_by != "sha256", c.tool, c.path))


def _hf_cache(
    root: Path, repo: str, filename: str, sha256: str | None
) -> Iterator[tuple[Path, str | None]]:
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshots = folder / "snapshots"
    with contextlib.suppress(OSError):
        for snap in sorted(snapshots.iterdir(), key=lambda p: p.name != _ref(folder)):
            link = snap / filename
            if link.exists():
                name = link.resolve().name
                yield link, name if is_sha256(name) else None
    if sha256 is None:
        return
    # The same bytes under another repo's name (a re-upload, a fork): blobs are named by
    # their SHA-256, so a look is one stat per repo folder.
    with contextlib.suppress(OSError):
        for other in root.iterdir():
            blob = other / "blobs" / sha256
            if other.name.startswith("models--") and blob.is_file():
                yield blob, sha256


def _ref(folder: Path) -> str:
    with contextlib.suppress(OSError):
        return (folder / "refs" / "main").read_text().strip()
    return ""


def _llama_flat(root: Path, repo: str, filename: str) -> Iterator[Path]:
    yield root / f"{repo}_{filename}".replace("/", "_")
    yield root / Path(filename).name


def _etag_sha(path: Path) -> str | None:
    # Flat llama.cpp files keep the server's ETag beside them (``<file>.etag``, or an
    # ``"etag"`` in ``<file>.json`` in older versions); for an LFS file it is the SHA-256.
    for side in (path.with_name(path.name + ".etag"), path.with_name(path.name + ".json")):
        with contextlib.suppress(OSError, ValueError, msgspec.DecodeError):
            text = side.read_text()
            if side.suffix == ".json":
                text = str(msgspec.json.decode(text.encode()).get("etag", ""))
            tag = text.strip().removeprefix("W/").strip('"')
            if is_sha256(tag):
                return tag
    return None


def _lmstudio(root: Path, repo: str, filename: str) -> Iterator[Path]:
    yield root / repo / filename
    # LM Studio's own re-uploads (lmstudio-community/...) keep the upstream file name:
    # the same name under another publisher is a candidate that adopt() will hash.
    base = Path(filename).name.lower()
    with contextlib.suppress(OSError):
        for publisher in root.iterdir():
            for model in _dirs(publisher):
                for f in _files(model):
                    if f.name.lower() == base:
                        yield f


def _dirs(path: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return [p for p in path.iterdir() if p.is_dir()]
    return []


def _files(path: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return [p for p in path.iterdir() if p.is_file()]
    return []


class _OllamaLayer(msgspec.Struct):
    media_type: str = msgspec.field(default="", name="mediaType")
    digest: str = ""


class _OllamaManifest(msgspec.Struct):
    layers: list[_OllamaLayer] = []


_QUANT = re.compile(r"(?i)(?:^|[-_.])((?:i?q\d[a-z0-9_]*)|f16|bf16|f32)(?=[-_.]|$)")


def _ollama(
    root: Path, repo: str, filename: str, sha256: str | None
) -> Iterator[tuple[Path, str | None]]:
    if sha256 is not None:
        yield root / "blobs" / f"sha256-{sha256}", sha256
    # `ollama pull hf.co/<org>/<name>:<quant>`: the tag names the quantization, and the
    # file is the one whose name carries it.
    tags = root / "manifests" / "hf.co" / repo
    want = {m.group(1).lower() for m in _QUANT.finditer(Path(filename).stem)}
    for tag in _files(tags):
        if tag.name.lower() not in want:
            continue
        for digest in _ollama_model_digests(tag):
            yield root / "blobs" / f"sha256-{digest}", digest


def _ollama_model_digests(manifest: Path) -> list[str]:
    try:
        data = msgspec.json.decode(manifest.read_bytes(), type=_OllamaManifest)
    except (OSError, msgspec.DecodeError):
        return []
    out = []
    for layer in data.layers:
        digest = layer.digest.removeprefix("sha256:")
        if layer.media_type == OLLAMA_MODEL_LAYER and is_sha256(digest):
            out.append(digest)
    return out


# -- adopting --------------------------------------------------------------------------------


def adopt(
    candidate: Candidate,
    target_path: Path,
    expected_sha256: str,
    on_hashed: OnHashed | None = None,
    *,
    allow_link: bool = True,
) -> AdoptResult:
    """Put ``candidate``'s bytes at ``target_path`` if, and only if, they hash to
    ``expected_sha256``: a reflink, else a hard link on the same filesystem, else a copy.

    The target appears whole or not at all (a temporary name, then a rename). A mismatch
    raises ``ChecksumMismatchError`` and leaves the other tool's file untouched.
    """
    source = Path(candidate.path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = target_path.with_name(f".{target_path.name}.adopt-{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        method, copied, digest, size = _place(source, tmp, on_hashed, allow_link)
        if digest != expected_sha256:
            raise ChecksumMismatchError(
                f"{source} ({candidate.tool}) is not the file vibrant needs: its SHA-256 is "
                f"{digest}, the reference is {expected_sha256}. It was left as it is.",
                hint="Another tool's copy is damaged or a different file; vibrant will "
                "download this file instead.",
                path=str(source),
                tool=candidate.tool,
                expected=expected_sha256,
                actual=digest,
            )
        os.replace(tmp, target_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(target_path.parent)
    return AdoptResult(
        path=str(target_path), method=method, sha256=digest, size=size, copied_bytes=copied
    )


def _place(
    source: Path, tmp: Path, on_hashed: OnHashed | None, allow_link: bool
) -> tuple[Method, int, str, int]:
    total = source.stat().st_size
    if allow_link:
        if _reflink(source, tmp):
            return "reflink", 0, _hash(tmp, total, on_hashed), total
        try:
            os.link(source, tmp)
        except OSError as err:
            if err.errno not in _CANNOT_SHARE:
                raise
        else:
            # The link is the other tool's inode: hashing it is hashing what we keep.
            return "hardlink", 0, _hash(tmp, total, on_hashed), total
    digest, copied = _copy(source, tmp, total, on_hashed)
    return "copy", copied, digest, copied


def _reflink(source: Path, tmp: Path) -> bool:
    try:
        with open(source, "rb") as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fcntl.ioctl(fd, FICLONE, src.fileno())
            finally:
                os.close(fd)
        return True
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if err.errno in _CANNOT_SHARE:
            return False
        raise


def _hash(path: Path, total: int, on_hashed: OnHashed | None) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if on_hashed:
                on_hashed(done, total)
    return h.hexdigest()


def _copy(source: Path, tmp: Path, total: int, on_hashed: OnHashed | None) -> tuple[str, int]:
    h = hashlib.sha256()
    done = 0
    with open(source, "rb", buffering=0) as src, open(tmp, "xb") as dst:
        while chunk := src.read(HASH_CHUNK):
            h.update(chunk)
            dst.write(chunk)
            done += len(chunk)
            if on_hashed:
                on_hashed(done, total)
        dst.flush()
        os.fsync(dst.fileno())
    return h.hexdigest(), done


# -- scanning --------------------------------------------------------------------------------


def scan(
    registry: Registry | Iterable[ModelInfo],
    roots: Roots,
    *,
    skip: Callable[[ModelInfo], bool] | None = None,
) -> list[Found]:
    """For each registry model file, the best file another tool has (nothing is hashed).

    ``skip`` leaves out models the caller needn't look for (e.g. those already cached).
    ``saves_bytes`` is what an import would not download; a name-only match is confirmed
    only by ``adopt``.
    """
    out: list[Found] = []
    for model in registry:
        if skip is not None and skip(model):
            continue
        for f in model.files:
            best = find_candidates(model.hf_repo, f.filename, f.sha256, roots, size=f.size_bytes)
            if not best:
                continue
            c = best[0]
            out.append(
                Found(
                    model_id=model.id,
                    filename=f.filename,
                    candidate=c,
                    verified_by_name=c.matched_by == "sha256",
                    saves_bytes=c.size,
                )
            )
    return out
