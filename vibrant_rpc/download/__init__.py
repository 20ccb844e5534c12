"""Downloads from the Hugging Face Hub into the cache, and what follows them.

``hub`` speaks the Hub's HTTP API; ``sources`` tries a mirror first and the Hub last;
``transfer`` moves one file's bytes over ranged connections while hashing them (``blocks``
holds the ranges and the ordered hasher, ``priority`` lowers the threads' priority);
``reuse`` adopts files other tools downloaded; ``install`` checks the disk and renames
verified files into place; ``downloader`` owns one model's download from resolve to
install; ``jobs`` shares a process's running downloads among the requests that wait on
them; ``progress`` is a download's progress and its throttle; ``updates`` compares the
Hub's refs with the cached files.

The names below are looked up on first use (PEP 562, as huggingface_hub's ``__init__``
does): ``httpx`` costs a sixth of a second, and the CLI imports only what a command needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_face

if TYPE_CHECKING:
    from .downloader import Downloader, DownloadResult
    from .hub import HubClient
    from .jobs import DownloadJobs, Ticket
    from .progress import Progress, ProgressCallback, Reporter
    from .sources import Sources, open_hub
    from .updates import UpdateCheck, UpdateInfo, Updates, UpdateSchedule

_WHERE = {
    "DownloadJobs": "jobs",
    "DownloadResult": "downloader",
    "Downloader": "downloader",
    "HubClient": "hub",
    "Progress": "progress",
    "ProgressCallback": "progress",
    "Reporter": "progress",
    "Sources": "sources",
    "Ticket": "jobs",
    "UpdateCheck": "updates",
    "UpdateInfo": "updates",
    "UpdateSchedule": "updates",
    "Updates": "updates",
    "open_hub": "sources",
}
__all__ = [
    "DownloadJobs",
    "DownloadResult",
    "Downloader",
    "HubClient",
    "Progress",
    "ProgressCallback",
    "Reporter",
    "Sources",
    "Ticket",
    "UpdateCheck",
    "UpdateInfo",
    "UpdateSchedule",
    "Updates",
    "open_hub",
]


__getattr__ = lazy_face(__name__, _WHERE)


def __dir__() -> list[str]:
    return __all__
