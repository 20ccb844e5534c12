"""``~/.vibrant/models/``: the installed files and their ``manifest.json`` (``store``,
``manifest``), partial downloads' records (``partials``), the cross-process locks and
in-use marks (``locks``), and model files other tools already downloaded
(``elsewhere``)."""

from .elsewhere import Found, adopt, default_roots, find_candidates, scan
from .locks import InUseMark, download_lock
from .manifest import ManifestEntry, ManifestFile, ModelVersion, utcnow
from .partials import FileProgress, PartialState, read_state, write_state
from .store import Cache, CacheStats, PartialDownload, RemovalResult

__all__ = [
    "Cache",
    "CacheStats",
    "FileProgress",
    "Found",
    "InUseMark",
    "ManifestEntry",
    "ManifestFile",
    "ModelVersion",
    "PartialDownload",
    "PartialState",
    "RemovalResult",
    "adopt",
    "default_roots",
    "download_lock",
    "find_candidates",
    "read_state",
    "scan",
    "utcnow",
    "write_state",
]
