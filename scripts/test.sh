#!/usr/bin/env bash
# Set up everything and run the whole test suite (the heavier end-to-end tests too).
# Usage: bash scripts/test.sh [pytest args]   e.g. bash scripts/test.sh -m "not slow" for the fast part only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
