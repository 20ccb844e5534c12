"""A model folder vibrant may read but not change: a shared folder mounted read-only, or
one this user can't write. Listing, fitting, verifying and loading work there; what
must write (a download, a removal, a prune) says the folder is read-only, naming it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import VibrantError

# What a write into such a folder fails with: a read-only mount, no permission, an
# immutable (chattr +i) folder.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_read_only(folder: Path) -> bool:
    """This process can't write ``folder`` (or, not there yet, its nearest parent that is)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return not os.access(folder, os.W_OK)


def read_only_error(folder: Path, doing: str, err: OSError | None = None) -> VibrantError:
    why = f" ({err.strerror})" if err is not None and err.strerror else ""
    return VibrantError(
        f"The model folder {folder} is read-only{why}: vibrant can't {doing} there.",
        hint="Listing, fit, select, verify and completions still work with the models in it. "
        "To download or remove models, set VIBRANT_HOME to a folder you can write.",
        path=str(folder),
        readOnly=True,
    )
