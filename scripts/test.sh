#!/usr/bin/env bash
# Sets up .venv with the dev requirements and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-dev.txt
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
