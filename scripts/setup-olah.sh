#!/usr/bin/env bash
# A venv of its own for olah, the Hugging Face mirror the tests run against (tests/support/olah_mirror.py).
# It is not a project dependency: it pins its own fastapi/pydantic/huggingface_hub, which
# must not meet the project's. Idempotent and safe to run from parallel test workers.
# Usage: scripts/setup-olah.sh [DIR]   (default ~/.cache/vibrant-tests/olah-venv)
# Prints the venv's path on success; exit 1 (pip's words on stderr) if olah can't be installed.
set -euo pipefail

OLAH_VERSION=0.5.4
DIR=${1:-${VIBRANT_OLAH_VENV:-$HOME/.cache/vibrant-tests/olah-venv}}
PY=${PYTHON:-python3}
mkdir -p "$(dirname "$DIR")"

# Parallel test workers build it once: the others wait on the lock (where flock exists).
exec 9>"$DIR.lock"
if command -v flock >/dev/null; then flock 9; fi
if [ ! -f "$DIR/.ok-$OLAH_VERSION" ]; then
    # A half-built venv from a killed run is thrown away, never patched up. The venv is
    # built in place: its scripts' shebangs name their folder, so it can't be moved after.
    rm -rf "$DIR"
    "$PY" -m venv "$DIR" >&2
    if ! "$DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        "olah==$OLAH_VERSION" >&2; then
        rm -rf "$DIR"
        exit 1
    fi
    touch "$DIR/.ok-$OLAH_VERSION"
fi
echo "$DIR"
