#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: setup, lint, types, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k listener).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# The Kea 2.6.3 / 3.0.4 tier (Debian trixie / sid chroots, built once into
# /var/cache/trapd-kea-chroots: about 2 minutes and 600 MB the first time) is
# part of the whole suite; TRAPD_KEA_CHROOTS=0 skips it for a quick local run.
export TRAPD_KEA_CHROOTS=${TRAPD_KEA_CHROOTS:-1}
.venv/bin/ruff check .
.venv/bin/mypy
# Two test processes (pytest-xdist): most tests wait on a real Kea, PostgreSQL or trapd
# process, so two share 2 cores well. Tests are handed out one by one (--dist load): by module,
# the largest modules ran alone at the end. TRAPD_TEST_PROCESSES=0 runs them all in this process.
# The slowest tests are named at the end: the suite must stay well under 15 minutes on 2 cores.
exec .venv/bin/pytest -q -n "${TRAPD_TEST_PROCESSES:-2}" --dist load --durations=15 "$@"
