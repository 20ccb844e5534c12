"""Cross-process locks that die with their process (flock), never stale files.

- the download lock: one process transfers a model, others wait for it;
- the in-use mark: a shared lock a server holds on the model it has loaded, so a
  prune in any process can tell it must not delete that model.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from filelock import FileLock

from .readonly import READ_ONLY_ERRNOS

log = logging.getLogger(__name__)


def download_lock(locks_dir: Path, model_id: str) -> FileLock:
    locks_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks_dir / f"{model_id}.download.lock"))


def is_download_active(locks_dir: Path, model_id: str) -> bool:
    # Only looked at, never created: a read-only folder can be asked too.
    return _held(locks_dir / f"{model_id}.download.lock")


class InUseMark:
    """Held (shared) while a model is loaded; ``is_in_use`` sees it from any process."""

    def __init__(self, locks_dir: Path, model_id: str) -> None:
        self.model_id = model_id
        self._fd = -1
        try:
            locks_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(locks_dir / f"{model_id}.inuse", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno not in READ_ONLY_ERRNOS:
                raise
            # A read-only folder: no process here can prune it, so there is nothing to mark.
            log.info("%s is not marked in use: %s is read-only", model_id, locks_dir)
            return
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


def is_in_use(locks_dir: Path, model_id: str) -> bool:
    return _held(locks_dir / f"{model_id}.inuse")


def _held(path: Path) -> bool:
    """Some process holds a lock on ``path`` (opened read-only: nothing is created)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
