"""``fsutil.dir_size`` while the tree changes under it: ``cacheStats`` adds up
``.downloading/`` as downloads finish and move their partial folders away (a clean-clone
CI run saw FileNotFoundError come out of the request)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from vibrant_rpc.fsutil import dir_size


def test_dir_size_counts_written_bytes_not_links(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 5000)
    (tmp_path / "g").write_bytes(b"y" * 3000)
    os.symlink(tmp_path / "g", tmp_path / "link")
    os.symlink(tmp_path / "a", tmp_path / "dirlink")
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(10 * 1024 * 1024)  # no block written
    assert dir_size(tmp_path) == 8000


def test_dir_size_while_folders_vanish(tmp_path: Path) -> None:
    """Folders removed and made again while it walks: never an error."""
    root = tmp_path / ".downloading"
    names = [f"m{i}" for i in range(40)]

    def make(name: str) -> None:
        d = root / name / "sub" / "deeper"
        d.mkdir(parents=True, exist_ok=True)
        (d / "part").write_bytes(b"z" * 100)

    for name in names:
        make(name)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for name in names:
                shutil.rmtree(root / name, ignore_errors=True)
                make(name)

    worker = threading.Thread(target=churn)
    worker.start()
    errors: list[BaseException] = []
    try:
        for _ in range(300):
            try:
                assert 0 <= dir_size(root) <= 100 * len(names)
            except OSError as err:
                errors.append(err)
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[:3]
