#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv, then lint, types, tests.
# Usage: scripts/test.sh [pytest args...]
# The fast subset (no model loaded in llama.cpp, no editor; 785 of 893 tests, about 10
# minutes of wall time on 2 shared cores): scripts/test.sh -m "not llama and not editor"
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# llama-cpp-python compiles from source on the first install (about 10 minutes on
# 2 cores); pip's wheel cache makes later installs take seconds.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# The engine tests (pytest -m engine) run the real llama-server, built once per machine
# from the llama.cpp in the llama-cpp-python sdist into ~/.cache/vibrant-bench (about 20
# minutes on 2 cores; the folder survives between runs): build it now when missing, so
# pytest's per-test timeout never meets the build.
echo "== llama-server"
.venv/bin/python -m tests.support.llama_server

echo "== ruff"
.venv/bin/ruff check vibrant_rpc tests bench
.venv/bin/ruff format --check vibrant_rpc tests bench
echo "== mypy"
.venv/bin/mypy vibrant_rpc tests bench
echo "== pytest"
exec .venv/bin/python -m pytest -ra "$@"
