"""One file fetched until its bytes match the reference, source after source.

``FileTransfer`` moves the bytes; this loop decides what a failure means. A source that
stops making progress, or answers a web page instead of the file, hands the file to the
next source, which goes on from the bytes on disk. Bytes that fail the reference are
dropped and the file starts over from the next source (the Hub last): a mirror serving
another file, or a damaged copy, never ends the download while a later source may have
the right bytes. The last source gets a second try (a copy damaged in flight) before the
mismatch is the user's error, naming every source whose bytes failed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..cache.manifest import utcnow
from ..cache.partials import FileProgress, PartialState, write_state
from ..errors import ChecksumMismatchError, DownloadFailedError, HubUnreachableError, NotHubAnswer
from ..registry import ModelInfo
from .hub import HubClient, Resolved
from .progress import Reporter
from .sources import fail_over
from .transfer import FileTransfer, RangeIgnored, RemoteChanged, TransferConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass
class Fetch:
    """What a file's fetch works with: the download's hub, state and settings."""

    hub: HubClient
    model: ModelInfo
    folder: Path
    state: PartialState
    config: TransferConfig
    cancel: threading.Event
    reporter: Reporter
    retry: Callable[[Callable[[], Resolved]], Resolved]  # a metadata call, retried

    def run(self, fp: FileProgress, res: Resolved) -> None:
        """Fetch ``fp`` (resolved as ``res``) until its SHA-256 is the reference's, or raise."""
        model, folder, reporter, state = self.model, self.folder, self.reporter, self.state
        part = folder / f"{fp.name}.part"
        revisions = [state.commit or "", model.revision or "main"]
        failed: list[tuple[str, str]] = []  # (source, SHA-256) of each whose bytes failed
        mismatches = 0
        config = self.config

        def url(refresh: bool) -> str:
            if not refresh:
                return res.url
            fresh = self.retry(
                lambda: self.hub.resolve(model.hf_repo, state.commit or "main", fp.remote_filename)
            )
            if fresh.etag != res.etag or fresh.size != res.size:
                raise RemoteChanged("the file changed upstream")
            return fresh.url

        def checkpoint() -> None:
            state.updated_at = utcnow()
            write_state(folder, state)

        while True:
            size = fp.size_bytes or 0
            transfer = FileTransfer(
                self.hub, url, part, fp, size, config, self.cancel, reporter.add, checkpoint
            )
            try:
                digest = transfer.run()
            except RangeIgnored:
                log.warning("the server ignored Range for %s; starting it over", fp.name)
                reporter.done -= fp.done_bytes
                fp.done = []
                config = dataclasses.replace(config, connections=1)
                continue
            except (HubUnreachableError, NotHubAnswer) as err:
                if (fresh := fail_over(self.hub, model.hf_repo, revisions, fp)) is None:
                    raise
                log.warning("%s: %s; the next source goes on", fp.remote_filename, err.message)
                res = fresh  # url() reads it: the rest comes from the next source
                continue
            except RemoteChanged as err:
                raise DownloadFailedError(
                    f"{fp.remote_filename} changed on the Hub during the download ({err}).",
                    hint="Run the download again: it starts that file over.",
                    modelId=model.id,
                ) from None
            if fp.sha256 is None or digest == fp.sha256:
                fp.verified = fp.sha256 is not None  # None: recorded, nothing to check it by
                fp.sha256 = digest
                fp.complete = True
                checkpoint()
                return
            source = self.hub.source
            failed.append((source, digest))
            reporter.done -= fp.done_bytes
            fp.done = []
            part.unlink(missing_ok=True)
            checkpoint()
            fresh = fail_over(self.hub, model.hf_repo, revisions, fp, anew=True)
            if fresh is not None:
                log.warning(
                    "%s from %s failed its checksum (SHA-256 %s, the reference is %s); "
                    "fetching it from %s",
                    fp.remote_filename, source, digest, fp.sha256, self.hub.source,
                )  # fmt: skip
                res = fresh
                fp.size_bytes = fresh.size or fp.size_bytes
                continue
            mismatches += 1
            if mismatches >= 2:
                raise ChecksumMismatchError(
                    f"{model.id}: {fp.remote_filename} arrived damaged from every source: "
                    f"its SHA-256 is not the reference {fp.sha256} (from {fp.reference_by}): "
                    + "; ".join(f"{host} sent {sha}" for host, sha in dict.fromkeys(failed))
                    + ".",
                    hint="The download servers may be serving a bad copy; try again later.",
                    modelId=model.id,
                    file=fp.remote_filename,
                    expected=fp.sha256,
                    actual=digest,
                    sources=[host for host, _ in failed],
                )
            log.warning("%s failed its checksum; downloading it once more", fp.remote_filename)
