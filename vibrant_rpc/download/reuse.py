"""A file another tool already downloaded, taken instead of downloading it again.

Before a file's transfer, the caches of huggingface_hub, llama.cpp, LM Studio and Ollama
(``cache.elsewhere``) are looked in; a file whose bytes hash to the reference is linked (or
copied) into the partial's place and marked complete, so install renames it like any
download. Only against a reference known in advance: a name match without one would be
recorded unchecked, and another tool's file is not worth that risk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..cache.elsewhere import (
    Candidate,
    Method,
    Roots,
    Tool,
    adopt,
    find_candidates,
)
from ..cache.partials import FileProgress, PartialState
from ..errors import ChecksumMismatchError, DownloadFailedError
from ..units import format_bytes

log = logging.getLogger(__name__)


class Adopted(msgspec.Struct, frozen=True, kw_only=True):
    """A model file that came from another tool's cache, not from the network."""

    filename: str  # the Hub file name
    tool: Tool
    path: str  # the other tool's file (only ever read)
    method: Method
    copied_bytes: int  # 0 for a link: the bytes neither downloaded nor copied


class Reuse(msgspec.Struct, frozen=True, kw_only=True):
    """Where to look: ``roots`` (None: other tools' caches are not looked in) and the
    files a user named (``vibrant model import``). ``only``: never download; a file no
    candidate matches is left for a later download."""

    roots: Roots | None = None
    files: list[Candidate] = []
    only: bool = False

    def candidates(self, repo: str, fp: FileProgress) -> list[Candidate]:
        found = [c for c in self.files if fp.size_bytes is None or c.size == fp.size_bytes]
        if self.roots is not None:
            found += find_candidates(
                repo, fp.remote_filename, fp.sha256, self.roots, size=fp.size_bytes
            )
        return found


def named_file(path: Path) -> Candidate:
    """A file the user named, as a candidate for every file of the model."""
    hint = "Name the model file itself: `vibrant model import PATH --model ID`."
    try:
        real = path.expanduser().resolve(strict=True)
        size = real.stat().st_size
    except RuntimeError:  # pathlib's word for a loop of links (ELOOP)
        raise DownloadFailedError(
            f"{path} can't be imported: its symbolic links form a loop.", hint=hint, path=str(path)
        ) from None
    except OSError as err:
        raise DownloadFailedError(
            f"{path} can't be imported: {err.strerror or err}.", hint=hint, path=str(path)
        ) from None
    if not real.is_file():
        raise DownloadFailedError(f"{path} is not a file.", hint=hint, path=str(path))
    return Candidate(path=str(real), tool="file", size=size, sha256=None, matched_by="name")


def take(
    reuse: Reuse, repo: str, fp: FileProgress, part: Path, on_bytes: Callable[[int], None]
) -> Adopted | None:
    """Put the first candidate that hashes to ``fp.sha256`` at ``part`` and mark ``fp``
    complete and verified; None when none does. A mismatch is refused (logged) and the
    next candidate tried; the other tool's file is left as it was."""
    expected = fp.sha256
    if expected is None:
        return None
    for c in reuse.candidates(repo, fp):
        seen = 0

        def hashed(done: int, total: int) -> None:
            nonlocal seen
            on_bytes(done - seen)
            seen = done

        try:
            got = adopt(c, part, expected, hashed)
        except ChecksumMismatchError as err:
            on_bytes(-seen)
            log.warning("%s", err.message)
            continue
        except OSError as err:
            on_bytes(-seen)
            log.warning("could not take %s from %s: %s", c.path, c.tool, err)
            continue
        fp.done, fp.complete, fp.verified, fp.sha256 = [(0, got.size)], True, True, got.sha256
        log.info(
            "%s: taken from %s (%s, %s copied), not downloaded",
            fp.remote_filename,
            c.path,
            got.method,
            format_bytes(got.copied_bytes),
        )
        return Adopted(
            filename=fp.remote_filename,
            tool=c.tool,
            path=c.path,
            method=got.method,
            copied_bytes=got.copied_bytes,
        )
    return None


def check_imported(
    model_id: str, state: PartialState, reuse: Reuse, taken: int, folder: Path
) -> None:
    """After an import (``reuse.only``): the named file matched nothing, or the model has
    files still to download (they stay in the partial, which a download resumes)."""
    named = ", ".join(c.path for c in reuse.files)
    if taken == 0:
        if state.downloaded_bytes == 0:  # no partial of its own: none is left behind
            shutil.rmtree(folder, ignore_errors=True)
        raise ChecksumMismatchError(
            f"{named} is not a file of {model_id}: no file of it has that size and SHA-256.",
            hint="Check the path and --model; nothing was changed.",
            modelId=model_id,
            path=named,
        )
    left = [f.remote_filename for f in state.files if not f.complete]
    if left:
        raise DownloadFailedError(
            f"Imported {named} into {model_id}; {len(left)} of its files are still to "
            f"download ({', '.join(left)}).",
            hint=f"Run `vibrant model download {model_id}`: it keeps what was imported.",
            modelId=model_id,
            missing=left,
        )
