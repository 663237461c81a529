#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: setup, lint, types, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k listener).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
