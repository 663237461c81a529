#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: set up, then show trapd
# turning real SNMP traps into Kea lease deletions (see scripts/demo.py).
# Nothing is left running when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
