"""Work-done progress (``$/progress`` begin/report/end) for downloads and loads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lsprotocol import types

from .. import protocol as p
from ..units import format_bytes

if TYPE_CHECKING:
    from .language_server import VibrantServer


class WorkDone:
    """``$/progress`` on one token; the client's cancel of it calls ``on_cancel``.

    Call on the event loop only (``VibrantServer.soon`` from worker threads).
    """

    def __init__(
        self, ls: VibrantServer, token: p.ProgressToken, on_cancel: Callable[[], None]
    ) -> None:
        self.ls, self.token, self.on_cancel = ls, token, on_cancel
        self.begun = self.ended = False

    def begin(self, title: str, message: str | None = None, percentage: int | None = None) -> None:
        if self.begun:
            return
        self.begun = True
        wdp = self.ls.work_done_progress
        wdp.begin(
            self.token,
            types.WorkDoneProgressBegin(
                title=title, cancellable=True, message=message, percentage=percentage
            ),
        )
        fut = wdp.tokens.get(self.token)
        if fut is not None:  # cancelled on window/workDoneProgress/cancel
            fut.add_done_callback(lambda f: self.on_cancel() if f.cancelled() else None)

    def report(self, message: str | None, percentage: int | None = None) -> None:
        if self.begun and not self.ended:
            self.ls.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=message, percentage=percentage)
            )

    def end(self, message: str | None) -> None:
        if self.begun and not self.ended:
            self.ended = True
            self.ls.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
            self.ls.work_done_progress.tokens.pop(self.token, None)

    def download(self, progress: p.DownloadProgress) -> None:
        total = progress.total_bytes
        pct = min(100, progress.downloaded_bytes * 100 // total) if total else None
        text = f"{progress.state}: {format_bytes(progress.downloaded_bytes)}"
        if total:
            text += f" of {format_bytes(total)}"
        if progress.bytes_per_second > 0 and progress.state == "downloading":
            text += f", {format_bytes(progress.bytes_per_second)}/s"
        self.report(text, pct)

    def model_state(self, change: p.ModelStateChanged) -> None:
        if change.state == "loading":
            self.begin(f"Loading {change.model_id}", change.reason)
            self.report(f"loading {change.model_id}")
        elif change.state == "failed":
            self.report(change.reason)
        elif change.state == "ready":
            self.end(f"{change.model_id} ready")
