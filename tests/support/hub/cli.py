"""The stand-in as a process: ``python tests/support/hub_stub.py --repo OWNER/NAME=PATH ...``
serves until SIGTERM or SIGINT, after printing (and writing to --ready-file) its addresses
and the commits and files it serves."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.hub.stub import HubStub

__all__ = ["main"]


def _parse_repo_spec(spec: str) -> tuple[str, str, Path]:
    """``OWNER/NAME=PATH`` or ``OWNER/NAME:FILENAME=PATH``."""
    left, sep, path = spec.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"bad --repo {spec!r}: want OWNER/NAME[:FILENAME]=PATH")
    repo_id, _, filename = left.partition(":")
    p = Path(path)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"--repo {spec!r}: no such file {path}")
    return repo_id, filename or p.name, p


def _write_ready(path: Path, info: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Loopback Hugging Face Hub stand-in")
    ap.add_argument(
        "--repo",
        action="append",
        default=[],
        type=_parse_repo_spec,
        help="OWNER/NAME[:FILENAME]=PATH (repeatable; same repo = more files)",
    )
    ap.add_argument("--gated-token", default=None, help="make every repo gated with this token")
    ap.add_argument("--throttle-bps", type=int, default=None)
    ap.add_argument("--redirect-expires-s", type=int, default=3600)
    ap.add_argument("--tree-page-size", type=int, default=50)
    ap.add_argument("--endpoint-port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--ready-file", type=Path, default=None)
    args = ap.parse_args(argv)

    stub = HubStub(
        endpoint_port=args.endpoint_port,
        cdn_port=args.cdn_port,
        tree_page_size=args.tree_page_size,
    )
    stub.faults.throttle_bps = args.throttle_bps
    stub.faults.redirect_expires_s = args.redirect_expires_s
    by_repo: dict[str, dict[str, bytes | Path]] = {}
    for repo_id, filename, path in args.repo:
        by_repo.setdefault(repo_id, {})[filename] = path
    commits: dict[str, str] = {}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for repo_id, repo_files in by_repo.items():
        commits[repo_id] = stub.add_repo(
            repo_id, repo_files, gated=args.gated_token is not None, token=args.gated_token
        )
        files[repo_id] = {}
        for name in repo_files:
            sha, size = stub.file_info(repo_id, name)
            files[repo_id][name] = {"sha256": sha, "size": size}

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stub.start()
    info = {
        "endpoint": stub.endpoint,
        "cdn": stub.cdn,
        "pid": os.getpid(),
        "repos": commits,
        "files": files,
    }
    if args.ready_file is not None:
        _write_ready(args.ready_file, info)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        stub.stop()
    return 0
